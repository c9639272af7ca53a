//! `--join OUTPUT SEGMENT... --audio-from INPUT`: the segments' H.264 one after the other, not
//! re-encoded, each frame given the time of the input frame it was restored from, muxed with the
//! input's audio streams.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use gst::prelude::*;

use crate::plan::{self, Segment};
use crate::streams::{discard, link_audio, make, output_elements};
use crate::{files, identity};

pub fn run(output: &Path, segments: &[PathBuf], input: &Path) -> Result<i32, (i32, String)> {
    let usage = |m: String| (2, m);
    if segments.is_empty() {
        return Err(usage("--join needs the segment files, in order".into()));
    }
    let (mux_name, _, audio_enc) = output_elements(output).map_err(usage)?;
    let inputs: Vec<&Path> = segments.iter().map(PathBuf::as_path).chain([input]).collect();
    files::check_output(output, &inputs)?;
    let started = Instant::now();
    let scan = plan::scan(input)?;
    let input_id = identity::of_input(input, &scan)?;
    let mut first_settings: Option<String> = None;
    let plan = plan::segments(&scan, segments.len() as u32);
    if plan.len() != segments.len() {
        return Err(usage(format!(
            "{}: {} segments given, but it has only {} keyframes to cut at",
            input.display(),
            segments.len(),
            plan.len()
        )));
    }
    // Every segment must be the one the plan for this many segments has at its place: a missing,
    // unfinished, repeated or misplaced segment would leave frames out or twice.
    for (i, (path, seg)) in segments.iter().zip(&plan).enumerate() {
        let s = plan::scan(path)?;
        let label = seg.label(i, segments.len(), scan.pts.len());
        let comment = s.comment.clone().unwrap_or_default();
        let said = identity::parse(&comment);
        if said.label != label {
            return Err(usage(format!(
                "{}: not segment {i} of {} of {} (it says {:?}, the plan {label:?}): is it out of order, or from another \
                 input or count? Give the segments in order, 0 first",
                path.display(),
                segments.len(),
                input.display(),
                s.comment.as_deref().unwrap_or("nothing")
            )));
        }
        if said.input != input_id {
            return Err(usage(format!(
                "{}: restored from another input than {} (it says {:?}, that file is {input_id:?}): give the segments of \
                 this input, or the input they come from as --audio-from",
                path.display(),
                input.display(),
                said.input
            )));
        }
        match &first_settings {
            None => first_settings = Some(said.settings.to_owned()),
            Some(first) if first != said.settings => {
                return Err(usage(format!(
                    "{}: restored with other settings than segment 0 ({:?} against {first:?}): redo it with the same \
                     options as the others",
                    path.display(),
                    said.settings
                )));
            }
            Some(_) => {}
        }
        if s.pts.len() != seg.frames {
            return Err(usage(format!(
                "{}: {} frames, but segment {i} of {} of {} has {} (frames {}..{}): is it unfinished, or out of order? \
                 Give the segments in order, 0 first",
                path.display(),
                s.pts.len(),
                segments.len(),
                input.display(),
                seg.frames,
                seg.first_frame,
                seg.first_frame + seg.frames
            )));
        }
        if s.decode_order != s.pts {
            return Err(usage(format!(
                "{}: its frames are stored out of presentation order (B-frames); segments from gst-gpen-restore --segment have none",
                path.display()
            )));
        }
    }

    let pipeline = gst::Pipeline::new();
    let appsrc = gst_app::AppSrc::builder().format(gst::Format::Time).block(true).build();
    let parse = make("h264parse").map_err(usage)?;
    let mux = make(&mux_name).map_err(usage)?;
    let sink = make("filesink").map_err(usage)?;
    // Written beside the output and renamed once read back whole; removed on any failure.
    let partial = files::Partial::new(output);
    sink.set_property("location", partial.path.to_str().unwrap_or_default());
    let src = make("filesrc").map_err(usage)?;
    src.set_property("location", input.to_str().unwrap_or_default());
    let demux = make("parsebin").map_err(usage)?;
    pipeline.add_many([appsrc.upcast_ref(), &parse, &mux, &sink, &src, &demux]).unwrap();
    gst::Element::link_many([appsrc.upcast_ref(), &parse, &mux, &sink]).map_err(|e| (1, e.to_string()))?;
    src.link(&demux).unwrap();
    // The muxer takes no new stream once data flows: the video waits until every audio stream
    // of the input is linked.
    let (linked, audio_linked) = std::sync::mpsc::channel();
    {
        let (pipeline, mux, audio_enc) = (pipeline.downgrade(), mux.clone(), audio_enc.clone());
        let never = Arc::new(AtomicBool::new(false));
        let linked = std::sync::Mutex::new(linked);
        demux.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pipeline.upgrade() else { return };
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let result = if caps.structure(0).is_some_and(|s| s.name().starts_with("audio/")) {
                let r = link_audio(&pipeline, pad, &caps, &mux, &never, audio_enc.as_deref());
                let _ = linked.lock().unwrap().send(());
                r
            } else {
                // The input's video is what the segments replace.
                discard(&pipeline, pad)
            };
            if let Err(e) = result {
                let _ = pipeline.post_message(gst::message::Error::builder(gst::CoreError::Negotiation, &e).src(&pipeline).build());
            }
        });
    }

    // The segments are read and pushed on their own thread; this one watches the bus, so that an
    // error stops the pipeline (and with it a push blocked on a full queue).
    let pusher = {
        let (appsrc, segments, plan, input_pts, last_duration, audio_streams) =
            (appsrc.clone(), segments.to_vec(), plan.clone(), scan.pts.clone(), scan.last_duration, scan.audio_streams);
        std::thread::spawn(move || {
            for _ in 0..audio_streams {
                if audio_linked.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
                    let _ = appsrc.end_of_stream();
                    return Err("the input's audio streams were not found within 60 s".to_owned());
                }
            }
            push_segments(&appsrc, &segments, &plan, &input_pts, last_duration)
        })
    };
    let ran = plan::run_to_eos(&pipeline);
    let _ = pipeline.set_state(gst::State::Null);
    let pushed = pusher.join().map_err(|_| (1, "the segment reader panicked".to_owned()))?;
    let pushed = pushed.map_err(|e| (1, e))?;
    ran.map_err(|e| (1, e))?;
    // The output is read back: the count of frames is the join's promise.
    let out = plan::scan(&partial.path).map_err(|(_, e)| (1, e))?;
    if out.pts.len() != scan.pts.len() {
        return Err((1, format!("{}: {} frames written where the input has {}", output.display(), out.pts.len(), scan.pts.len())));
    }
    partial.commit()?;
    eprintln!(
        "gst-gpen-restore: joined {} segments, {pushed} frames (as many as {} has), video copied, {:.1} s wall -> {}",
        segments.len(),
        input.display(),
        started.elapsed().as_secs_f64(),
        output.display()
    );
    Ok(0)
}

/// Pushes every segment's frames into `appsrc`, frame `k` of the input at the input's time of
/// frame `k`; the number of frames pushed.
fn push_segments(
    appsrc: &gst_app::AppSrc,
    segments: &[PathBuf],
    plan: &[Segment],
    pts: &[u64],
    last_duration: u64,
) -> Result<usize, String> {
    let mut pushed = 0;
    let mut caps: Option<gst::Caps> = None;
    for (path, seg) in segments.iter().zip(plan) {
        let reader = reader(path)?;
        let sink = reader.by_name("sink").unwrap().downcast::<gst_app::AppSink>().unwrap();
        let _ = reader.set_state(gst::State::Playing);
        let mut k = seg.first_frame;
        while let Ok(sample) = sink.pull_sample() {
            let Some(buffer) = sample.buffer() else { continue };
            let sample_caps = sample.caps().map(|c| c.to_owned());
            match (&caps, &sample_caps) {
                (None, Some(c)) => {
                    appsrc.set_caps(Some(c));
                    caps = Some(c.clone());
                }
                (Some(first), Some(c)) if !same_picture(first, c) => {
                    let _ = reader.set_state(gst::State::Null);
                    let _ = appsrc.end_of_stream();
                    return Err(format!("{}: {c} does not continue the first segment's {first}", path.display()));
                }
                _ => {}
            }
            if k >= seg.first_frame + seg.frames {
                break;
            }
            let mut out = buffer.copy();
            {
                let out = out.make_mut();
                out.set_pts(gst::ClockTime::from_nseconds(pts[k]));
                out.set_dts(gst::ClockTime::from_nseconds(pts[k]));
                let duration = pts.get(k + 1).map_or(last_duration, |next| next - pts[k]);
                out.set_duration((duration > 0).then(|| gst::ClockTime::from_nseconds(duration)));
            }
            if appsrc.push_buffer(out).is_err() {
                let _ = reader.set_state(gst::State::Null);
                return Err("the output pipeline stopped".into());
            }
            k += 1;
            pushed += 1;
        }
        let error = reader.bus().unwrap().pop_filtered(&[gst::MessageType::Error]);
        let _ = reader.set_state(gst::State::Null);
        if let Some(msg) = error {
            if let gst::MessageView::Error(e) = msg.view() {
                let _ = appsrc.end_of_stream();
                return Err(format!("{}: {}", path.display(), e.error()));
            }
        }
    }
    let _ = appsrc.end_of_stream();
    Ok(pushed)
}

/// Size and frame rate agree: the streams can follow each other.
fn same_picture(a: &gst::Caps, b: &gst::Caps) -> bool {
    let (Some(a), Some(b)) = (a.structure(0), b.structure(0)) else { return false };
    ["width", "height", "framerate"]
        .into_iter()
        .all(|f| a.value(f).ok().map(|v| v.serialize().ok()) == b.value(f).ok().map(|v| v.serialize().ok()))
}

/// A segment's H.264 as a byte stream with its parameter sets before each keyframe, so that the
/// parser of the joined stream meets every segment's sets where its frames begin.
fn reader(path: &Path) -> Result<gst::Pipeline, String> {
    let p = gst::parse::launch(
        "filesrc name=src ! parsebin ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au \
         ! appsink name=sink sync=false max-buffers=16",
    )
    .map_err(|e| format!("{}: {e}", path.display()))?
    .downcast::<gst::Pipeline>()
    .unwrap();
    p.by_name("src").unwrap().set_property("location", path.to_str().unwrap_or_default());
    Ok(p)
}
