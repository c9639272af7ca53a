//! `--segment I/N`: restores the frames of one segment into a video-only file.
//!
//! Two pipelines. The first decodes from the keyframe before the segment's start minus the
//! preroll and runs every frame through gpenfilter into an appsink, so that tracks and smoothing
//! at the cut are as in a one-process run. Only the frames inside the segment go on, through an
//! appsrc, to the encoder of the second, with times from the segment's start: the frames before
//! it never reach the encoder, and the second pipeline's preroll never waits for them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;

use crate::plan::{self, Segment};
use crate::streams::{chroma_420, configured_filter, is_video, make, output_elements, video_encoder};
use crate::{files, identity};

pub struct Job {
    pub input: PathBuf,
    pub output: PathBuf,
    pub index: u32,
    pub count: u32,
    /// Seconds decoded and analysed before the segment's start.
    pub preroll: f64,
    pub properties: Vec<(String, String)>,
}

impl Job {
    fn name(&self) -> String {
        format!("segment {}/{}", self.index, self.count)
    }
}

/// The segment `job` asks for, or 2 and why there is no such segment.
pub fn find(scan: &plan::Scan, job: &Job) -> Result<Segment, (i32, String)> {
    let segments = plan::segments(scan, job.count);
    if segments.len() < job.count as usize {
        return Err((
            2,
            format!(
                "{}: {} keyframes allow at most {} segments, not {} (a segment starts on a keyframe): ask for --segment I/{} \
                 or fewer; --plan and restore-on-ray.py lower the count by themselves",
                job.input.display(),
                scan.keyframes.len(),
                segments.len(),
                job.count,
                segments.len()
            ),
        ));
    }
    Ok(segments[job.index as usize].clone())
}

pub fn run(job: &Job) -> Result<i32, (i32, String)> {
    let usage = |m: String| (2, m);
    let (mux_name, video_enc, _) = output_elements(&job.output).map_err(usage)?;
    if !matches!(video_enc.as_str(), "x264enc" | "openh264enc") {
        // The join copies H.264 from the segments into one stream.
        return Err(usage(format!("segments are H.264, and neither x264enc nor openh264enc is installed (found {video_enc})")));
    }
    files::check_output(&job.output, &[&job.input])?;
    let scan = plan::scan(&job.input)?;
    let seg = find(&scan, job)?;
    let range = format!("frames {}..{} of {}", seg.first_frame, seg.first_frame + seg.frames, scan.frames());
    let label = seg.label(job.index as usize, job.count as usize, scan.frames());
    let input_id = identity::of_input(&job.input, &scan)?;
    let settings = identity::of_settings(&job.properties, job.preroll);
    if job.output.exists() {
        // Resuming: a finished segment of this input, made with these settings, is not redone.
        // Its file only ever appears whole (renamed from the partial one), but it is checked
        // anyway: an older or foreign file is redone, and the reason said.
        match plan::scan(&job.output) {
            Ok(s) => {
                let comment = s.comment.clone().unwrap_or_default();
                let said = identity::parse(&comment);
                let why = if s.frames() != seg.frames {
                    Some(format!("has {} frames, not {}", s.frames(), seg.frames))
                } else if said.label != label {
                    Some(format!("is {:?}, not {label:?}", said.label))
                } else if said.input != input_id {
                    Some(format!("was restored from another input ({:?}; this one is {input_id:?})", said.input))
                } else if said.settings != settings {
                    Some(format!("was restored with other settings ({:?}; now {settings:?})", said.settings))
                } else {
                    None
                };
                match why {
                    None => {
                        eprintln!("gst-gpen-restore: {}: {} is already complete ({range}): not redone", job.name(), job.output.display());
                        return Ok(0);
                    }
                    Some(why) => eprintln!("gst-gpen-restore: {}: {} {why}: redone", job.name(), job.output.display()),
                }
            }
            Err((_, e)) => eprintln!("gst-gpen-restore: {}: {e}: redone", job.name()),
        }
    }
    let filter = configured_filter(&job.properties).map_err(usage)?;
    let partial = files::Partial::new(&job.output);

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let started = Instant::now();
    let comment = identity::comment(&label, &input_id, &settings);
    let target = Target { mux: &mux_name, encoder: &video_enc, partial: &partial.path, label: &comment };
    let (written, prerolled, stats) = restore(job, &seg, filter, &target, &interrupted)?;
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("gst-gpen-restore: {}: interrupted; nothing kept, run it again to redo the segment", job.name());
        return Ok(130);
    }
    // What the file holds, not what was pushed, decides that the segment is done.
    let in_file = plan::scan(&partial.path).map(|s| s.frames()).unwrap_or(0);
    if written != seg.frames || in_file != seg.frames {
        return Err((
            1,
            format!("{}: {written} frames decoded and {in_file} written where the input has {} ({range})", job.name(), seg.frames),
        ));
    }
    partial.commit()?;
    let wall = started.elapsed().as_secs_f64();
    eprintln!(
        "gst-gpen-restore: {}: {written} frames ({range}) and {prerolled} preroll frames analysed, {} faces restored, \
         {wall:.1} s wall ({:.2} fps written) -> {}",
        job.name(),
        stats.get::<u64>("faces-restored").unwrap_or(0),
        written as f64 / wall.max(1e-3),
        job.output.display()
    );
    Ok(0)
}

/// Waits for the pipeline's preroll; the error's text when it fails.
fn wait_async_done(pipeline: &gst::Pipeline) -> Result<(), String> {
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::AsyncDone(_) => return Ok(()),
            gst::MessageView::Error(e) => return Err(error_text(e)),
            gst::MessageView::Eos(_) => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

fn error_text(e: &gst::message::Error) -> String {
    format!("{}{}", e.error(), e.debug().map(|d| format!(" ({d})")).unwrap_or_default())
}

fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let msg = pipeline.bus().unwrap().pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(error_text(e)),
        _ => None,
    }
}

/// Where a segment is written: muxer and encoder names, the partial file, its comment tag (label,
/// input identity and settings).
struct Target<'a> {
    mux: &'a str,
    encoder: &'a str,
    partial: &'a Path,
    label: &'a str,
}

/// Runs both pipelines: (frames written, preroll frames analysed, the filter's statistics).
fn restore(
    job: &Job,
    seg: &Segment,
    filter: gst::Element,
    target: &Target,
    interrupted: &AtomicBool,
) -> Result<(usize, usize, gst::Structure), (i32, String)> {
    let fail = |e: String| (1, e);
    // Analysis: decode, restore, hand over.
    let analysis = gst::Pipeline::new();
    let src = make("filesrc").map_err(fail)?;
    src.set_property("location", job.input.to_str().unwrap_or_default());
    let parse = make("parsebin").map_err(fail)?;
    let queue = make("queue").map_err(fail)?;
    let decode = make("decodebin").map_err(fail)?;
    let convert = make("videoconvert").map_err(fail)?;
    let appsink = gst_app::AppSink::builder().sync(false).max_buffers(4).build();
    analysis.add_many([&src, &parse, &queue, &decode, &convert, &filter, appsink.upcast_ref()]).unwrap();
    src.link(&parse).unwrap();
    queue.link(&decode).unwrap();
    gst::Element::link_many([&convert, &filter, appsink.upcast_ref()]).map_err(|e| fail(e.to_string()))?;
    {
        let queue_sink = queue.static_pad("sink").unwrap();
        parse.connect_pad_added(move |_, pad| {
            let is_video = is_video(&pad.current_caps().unwrap_or_else(|| pad.query_caps(None)));
            if is_video && !queue_sink.is_linked() {
                let _ = pad.link(&queue_sink);
            } else {
                // Sound and further video streams: segments are video only. Dropped at the pad: a
                // sink there would hold the demuxer's one streaming thread while the pipeline prerolls.
                pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST, |_, _| gst::PadProbeReturn::Drop);
            }
        });
        let convert_sink = convert.static_pad("sink").unwrap();
        decode.connect_pad_added(move |_, pad| {
            if pad.query_caps(None).structure(0).is_some_and(|s| s.name().starts_with("video/")) && !convert_sink.is_linked() {
                let _ = pad.link(&convert_sink);
            }
        });
    }
    // Encoding: what the one-process command does after the filter, into a video-only file.
    let encoding = gst::Pipeline::new();
    let appsrc = gst_app::AppSrc::builder().format(gst::Format::Time).block(true).build();
    // Without B-frames (video_encoder): decode times never go back where the join puts segments together.
    let encoder = video_encoder(target.encoder).map_err(fail)?;
    let mux = make(target.mux).map_err(fail)?;
    if let Some(setter) = mux.dynamic_cast_ref::<gst::TagSetter>() {
        let mut tags = gst::TagList::new();
        tags.get_mut().unwrap().add::<gst::tags::Comment>(&target.label, gst::TagMergeMode::Replace);
        setter.merge_tags(&tags, gst::TagMergeMode::Replace);
    }
    let filesink = make("filesink").map_err(fail)?;
    filesink.set_property("location", target.partial.to_str().unwrap_or_default());
    // 4:2:0 8-bit, as the one-process command writes by default.
    let chroma = make("capsfilter").map_err(fail)?;
    chroma.set_property("caps", chroma_420());
    let tail = [appsrc.upcast_ref(), &make("videoconvert").map_err(fail)?, &chroma, &encoder, &mux, &filesink];
    encoding.add_many(tail).unwrap();
    gst::Element::link_many(tail).map_err(|e| fail(e.to_string()))?;

    let stop = |r| {
        let _ = analysis.set_state(gst::State::Null);
        let _ = encoding.set_state(gst::State::Null);
        r
    };
    let _ = analysis.set_state(gst::State::Paused);
    if let Err(e) = wait_async_done(&analysis) {
        return stop(Err(fail(e)));
    }
    let from = seg.start.saturating_sub((job.preroll * 1e9) as u64);
    if seg.first_frame > 0 {
        // An accurate seek: the demuxer starts at the keyframe before `from` and the decoder
        // hands on the frames from `from`, which are analysed, not written, up to the segment's
        // start. (A KEY_UNIT seek would let qtdemux align to another stream's keyframe, far
        // earlier on files with edit lists.) The flush also clears the frame prerolled above from
        // the filter's tracks.
        let flags = gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE;
        if let Err(e) = analysis.seek_simple(flags, gst::ClockTime::from_nseconds(from)) {
            return stop(Err(fail(format!("{}: cannot seek to {from} ns ({e})", job.input.display()))));
        }
        if let Err(e) = wait_async_done(&analysis) {
            return stop(Err(fail(e)));
        }
    }
    let _ = encoding.set_state(gst::State::Playing);
    let _ = analysis.set_state(gst::State::Playing);

    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(seg.frames as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(&format!("{} {{bar:40}} {{pos}}/{{len}} frames  {{msg}}", job.name()))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let (mut written, mut prerolled, mut last_pts) = (0usize, 0usize, None);
    let (started, mut last_line) = (Instant::now(), Instant::now());
    while !interrupted.load(Ordering::SeqCst) {
        if let Some(e) = bus_error(&analysis).or_else(|| bus_error(&encoding)) {
            return stop(Err(fail(e)));
        }
        let Some(sample) = appsink.try_pull_sample(gst::ClockTime::from_mseconds(200)) else {
            if appsink.is_eos() {
                break;
            }
            continue;
        };
        let Some(buffer) = sample.buffer() else { continue };
        let Some(pts) = buffer.pts().map(|p| p.nseconds()) else { continue };
        if pts < seg.start {
            prerolled += 1;
            continue;
        }
        if seg.end.is_some_and(|end| pts >= end) {
            break;
        }
        if last_pts.is_some_and(|l| pts <= l) {
            // The frame the pipeline prerolled with comes again when it starts playing.
            continue;
        }
        if written == 0 {
            appsrc.set_caps(sample.caps().map(|c| c.to_owned()).as_ref());
        }
        let mut out = buffer.copy();
        {
            let out = out.make_mut();
            out.set_pts(gst::ClockTime::from_nseconds(pts - seg.start));
            out.set_dts(gst::ClockTime::NONE);
        }
        if appsrc.push_buffer(out).is_err() {
            break;
        }
        last_pts = Some(pts);
        written += 1;
        let fps = written as f64 / started.elapsed().as_secs_f64().max(1e-3);
        match &bar {
            Some(b) => {
                b.set_position(written as u64);
                b.set_message(format!("{fps:.1} fps"));
            }
            None if last_line.elapsed() >= Duration::from_secs(5) => {
                eprintln!("gst-gpen-restore: {}: {written}/{} frames, {fps:.1} fps", job.name(), seg.frames);
                last_line = Instant::now();
            }
            None => {}
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let stats = filter.property::<gst::Structure>("stats");
    let _ = analysis.set_state(gst::State::Null);
    let _ = appsrc.end_of_stream();
    let ended = plan::run_to_eos(&encoding);
    let _ = encoding.set_state(gst::State::Null);
    ended.map_err(fail)?;
    Ok((written, prerolled, stats))
}
