//! `batch-latency`: generator batches that hold the faces of several frames. Frames come out
//! in order with their own timestamps and metas, restored as with per-frame batches; EOS and
//! new caps let held frames out, a flush drops them (counted), and the latency query says how
//! long frames wait.

mod common;

use std::sync::{Arc, Mutex};

use common::motion;
use gst::prelude::*;

fn models() -> String {
    format!(
        "size=256 model={} detector-model={} device=cpu",
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        common::detector().display()
    )
}

/// What left the element: per buffer its PTS, offset, bytes, caps size and face metas.
#[derive(Debug, Clone)]
struct Out {
    pts: Option<gst::ClockTime>,
    offset: u64,
    bytes: Vec<u8>,
    size: (u32, u32),
    metas: usize,
}

/// Runs `segments` (each: width, height, packed RGB frames) through `appsrc ! gpenfilter ! appsink`
/// at 25 fps, the caps changing between segments; returns what came out and the statistics.
fn run(segments: &[(u32, u32, Vec<Vec<u8>>)], props: &str) -> (Vec<Out>, gst::Structure) {
    common::init();
    // `props` may name the element otherwise (for the testing switches).
    let name = if props.contains("name=") { "" } else { "name=g" };
    let (pipeline, src, sink) = common::app_pipeline(&format!(
        "appsrc name=src format=time ! gpenfilter {name} {} {props} ! appsink name=sink sync=false",
        models()
    ));
    let outs = Arc::new(Mutex::new(Vec::new()));
    let o = outs.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
                let b = sample.buffer().unwrap();
                o.lock().unwrap().push(Out {
                    pts: b.pts(),
                    offset: b.offset(),
                    bytes: b.map_readable().unwrap().as_slice().to_vec(),
                    size: (info.width(), info.height()),
                    metas: b.iter_meta::<gst_video::VideoRegionOfInterestMeta>().count(),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut i = 0u64;
    for (w, h, frames) in segments {
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, *w, *h).fps(gst::Fraction::new(25, 1)).build().unwrap();
        src.set_caps(Some(&info.to_caps().unwrap()));
        for f in frames {
            let mut b = gst::Buffer::from_slice(f.clone());
            let bm = b.get_mut().unwrap();
            bm.set_pts(gst::ClockTime::from_mseconds(i * 40));
            bm.set_duration(gst::ClockTime::from_mseconds(40));
            bm.set_offset(i);
            src.push_buffer(b).unwrap();
            i += 1;
        }
    }
    src.end_of_stream().unwrap();
    common::run_to_eos(&pipeline);
    let g = pipeline.iterate_elements().into_iter().flatten().find(|e| e.factory().is_some_and(|f| f.name() == "gpenfilter")).unwrap();
    let stats = g.property::<gst::Structure>("stats");
    let outs = outs.lock().unwrap().clone();
    (outs, stats)
}

/// The astronaut moving along the test path: one face per frame.
fn astronaut_clip(n: usize) -> (u32, u32, Vec<Vec<u8>>) {
    let (rgb, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let photo = common::rgb_tensor(&rgb, w, h);
    (w as u32, h as u32, motion::path(n).iter().map(|p| motion::render(&photo, p)).collect())
}

fn in_order(outs: &[Out], n: u64) {
    let got: Vec<(Option<gst::ClockTime>, u64)> = outs.iter().map(|o| (o.pts, o.offset)).collect();
    let want: Vec<(Option<gst::ClockTime>, u64)> = (0..n).map(|i| (Some(gst::ClockTime::from_mseconds(i * 40)), i)).collect();
    assert_eq!(got, want);
}

#[test]
fn held_frames_share_batches_and_come_out_as_per_frame_batches_make_them() {
    let clip = astronaut_clip(8);
    let (alone, s0) = run(std::slice::from_ref(&clip), "face-batch=4");
    // On the worker thread (overlap, the default) and on the streaming thread.
    let (shared, s3) = run(std::slice::from_ref(&clip), "face-batch=4 batch-latency=3");
    let (here, s3h) = run(std::slice::from_ref(&clip), "face-batch=4 batch-latency=3 overlap=false");
    let c = common::count;
    // One face a frame: eight batches of one, or two of four.
    assert_eq!((c(&s0, "generator-batches"), c(&s0, "generator-faces")), (8, 8), "{s0}");
    for s in [&s3, &s3h] {
        assert_eq!((c(s, "generator-batches"), c(s, "generator-faces")), (2, 8), "{s}");
    }
    for (s, outs) in [(&s0, &alone), (&s3, &shared), (&s3h, &here)] {
        assert_eq!((c(s, "frames-in"), c(s, "frames-out"), c(s, "faces-restored")), (8, 8, 8), "{s}");
        // In order, each with its own timestamp, offset and face meta; EOS let the last three out.
        in_order(outs, 8);
        assert!(outs.iter().all(|o| o.metas == 1), "{:?}", outs.iter().map(|o| o.metas).collect::<Vec<_>>());
    }
    // The same restoration, up to the rounding of batched convolutions.
    for (i, a) in alone.iter().enumerate() {
        assert_ne!(a.bytes, clip.2[i], "frame {i} restored");
        for b in [&shared[i], &here[i]] {
            let (mean, max) = common::level_diff(&a.bytes, &b.bytes);
            assert!(mean < 0.01 && max <= 2, "frame {i}: mean {mean}, max {max}");
        }
    }
}

#[test]
fn the_generator_runs_on_a_worker_while_later_frames_are_analysed() {
    let clip = astronaut_clip(8);
    // Batches of one face: with batch-latency=2 each frame's batch starts on the worker as soon
    // as the frame is analysed, and the next frames are analysed while it runs.
    let (alone, s0) = run(std::slice::from_ref(&clip), "face-batch=1");
    let (here, sh) = run(std::slice::from_ref(&clip), "face-batch=1 batch-latency=2 overlap=false");
    let (over, so) = run(std::slice::from_ref(&clip), "face-batch=1 batch-latency=2");
    let c = common::count;
    assert!(c(&so, "frames-overlapped") > 0, "{so}");
    for s in [&s0, &sh] {
        assert_eq!(c(s, "frames-overlapped"), 0, "{s}");
    }
    for (s, outs) in [(&s0, &alone), (&sh, &here), (&so, &over)] {
        assert_eq!((c(s, "frames-in"), c(s, "frames-out"), c(s, "faces-restored")), (8, 8, 8), "{s}");
        assert_eq!((c(s, "generator-batches"), c(s, "generator-faces")), (8, 8), "{s}");
        in_order(outs, 8);
        assert!(outs.iter().all(|o| o.metas == 1));
    }
    for (i, a) in alone.iter().enumerate() {
        for b in [&here[i], &over[i]] {
            let (mean, max) = common::level_diff(&a.bytes, &b.bytes);
            assert!(mean < 0.01 && max <= 2, "frame {i}: mean {mean}, max {max}");
        }
    }
}

/// Forwards of the element named `name` take `ms` milliseconds more (the testing switch; other
/// elements' forwards keep their time).
#[cfg(feature = "fault-injection")]
fn slow_forwards(name: &str, ms: u64) {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        std::env::set_var(gstgpen::memory::SLOW_FORWARD_ENV, "slowflush:2000,slowstop:2000");
        std::env::set_var(gstgpen::memory::FAIL_EVERY_ENV, "oomahead:2");
    });
    assert_eq!(gstgpen::memory::slow_forward_from_env(name), ms);
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_batch_that_runs_out_of_memory_on_the_worker_leaves_its_frames_to_the_memory_policy() {
    slow_forwards("oomahead", 0);
    assert_eq!(gstgpen::memory::fail_every_from_env("oomahead"), 2);
    let clip = astronaut_clip(8);
    let (outs, s) = run(std::slice::from_ref(&clip), "name=oomahead face-batch=4 batch-latency=3");
    in_order(&outs, 8);
    let c = common::count;
    // Forward 1, the first batch ahead (frames 0-3), went through; forward 2, the second,
    // failed as out of memory, so frames 4-7 were restored one by one under the memory policy:
    // 4 by forward 3; 5, 6 and 7 each failed once (4, 6, 8) and were redone (5, 7, 9).
    assert_eq!((c(&s, "frames-in"), c(&s, "frames-out"), c(&s, "faces-restored")), (8, 8, 8), "{s}");
    assert_eq!((c(&s, "retries"), c(&s, "generator-batches"), c(&s, "generator-faces")), (3, 5, 8), "{s}");
    assert!(outs.iter().zip(&clip.2).all(|(o, f)| o.bytes != *f), "every frame restored");
}

/// The timestamps of the buffers that came out.
#[cfg(feature = "fault-injection")]
type Seen = Arc<Mutex<Vec<Option<gst::ClockTime>>>>;

/// `gpenfilter name={name} face-batch=1 batch-latency=2 ! appsink` fed from a pad of the test:
/// the pipeline, the pad, what came out (timestamps) and the RGB frames of the astronaut.
#[cfg(feature = "fault-injection")]
fn fed_by_hand(name: &str) -> (gst::Pipeline, gst::Pad, Seen, Vec<gst::Buffer>) {
    common::init();
    let (w, h, frames) = astronaut_clip(6);
    let pipeline =
        gst::parse::launch(&format!("gpenfilter name={name} {} face-batch=1 batch-latency=2 ! appsink name=sink sync=false", models()))
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
    let outs = Arc::new(Mutex::new(Vec::new()));
    let o = outs.clone();
    let sink = pipeline.by_name("sink").unwrap().downcast::<gst_app::AppSink>().unwrap();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                o.lock().unwrap().push(sample.buffer().unwrap().pts());
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let pad = gst::Pad::builder(gst::PadDirection::Src).name("feed").build();
    pad.link(&pipeline.by_name(name).unwrap().static_pad("sink").unwrap()).unwrap();
    pad.set_active(true).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w, h).fps(gst::Fraction::new(25, 1)).build().unwrap();
    assert!(pad.push_event(gst::event::StreamStart::new(name)));
    assert!(pad.push_event(gst::event::Caps::new(&info.to_caps().unwrap())));
    assert!(pad.push_event(gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new())));
    let buffers = frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let mut b = gst::Buffer::from_slice(f);
            b.get_mut().unwrap().set_pts(gst::ClockTime::from_mseconds(i as u64 * 40));
            b
        })
        .collect();
    (pipeline, pad, outs, buffers)
}

/// Pushes `buffers` from a thread of their own (a streaming thread); waits until the element
/// took the third in (whose arrival lets the first out: that one waits for its batch ahead).
#[cfg(feature = "fault-injection")]
fn push_until_waiting(
    pipeline: &gst::Pipeline,
    name: &str,
    pad: &gst::Pad,
    buffers: Vec<gst::Buffer>,
) -> std::thread::JoinHandle<Vec<Result<gst::FlowSuccess, gst::FlowError>>> {
    let p = pad.clone();
    let pusher = std::thread::spawn(move || buffers.into_iter().map(|b| p.push(b)).collect());
    let g = pipeline.by_name(name).unwrap();
    let t = std::time::Instant::now();
    while common::count(&g.property::<gst::Structure>("stats"), "frames-in") < 3 {
        assert!(t.elapsed().as_secs() < 60, "frames not taken in");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The first frame's batch of 2 s went to the worker on its arrival; now the streaming thread
    // waits for it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    pusher
}

/// Runs `f` on a thread of its own, failing when it takes more than `limit` (a deadlock).
#[cfg(feature = "fault-injection")]
fn within<T: Send + 'static>(limit: std::time::Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("not done within {limit:?}: deadlock"))
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_flush_while_a_batch_is_in_flight_stops_the_wait_and_counts_the_held_frames() {
    let name = "slowflush";
    slow_forwards(name, 2000);
    within(std::time::Duration::from_secs(120), move || {
        let (pipeline, pad, outs, mut buffers) = fed_by_hand(name);
        let later = buffers.split_off(3);
        let pusher = push_until_waiting(&pipeline, name, &pad, buffers);
        // A flushing seek upstream: the streaming thread stops waiting for the worker, and the
        // flush ends without waiting for the batch in flight.
        let t = std::time::Instant::now();
        assert!(pad.push_event(gst::event::FlushStart::new()));
        let flows = pusher.join().unwrap();
        assert_eq!(flows, [Ok(gst::FlowSuccess::Ok), Ok(gst::FlowSuccess::Ok), Err(gst::FlowError::Flushing)]);
        assert!(pad.push_event(gst::event::FlushStop::new(true)));
        let flush = t.elapsed();
        assert!(flush < std::time::Duration::from_millis(1000), "the flush took {flush:?}");
        // The stream goes on; the stale batch is dropped when it comes back, EOS drains the rest.
        assert!(pad.push_event(gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new())));
        for b in later {
            assert_eq!(pad.push(b), Ok(gst::FlowSuccess::Ok));
        }
        assert!(pad.push_event(gst::event::Eos::new()));
        for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(60)) {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
                _ => {}
            }
        }
        let s = pipeline.by_name(name).unwrap().property::<gst::Structure>("stats");
        pipeline.set_state(gst::State::Null).unwrap();
        let c = common::count;
        assert_eq!((c(&s, "frames-in"), c(&s, "frames-out"), c(&s, "frames-flushed")), (6, 3, 3), "{s}");
        let want: Vec<_> = (3..6).map(|i| Some(gst::ClockTime::from_mseconds(i * 40))).collect();
        assert_eq!(*outs.lock().unwrap(), want);
        // The three frames after the flush in batches of their own; the flushed batch ran too.
        assert_eq!(c(&s, "generator-batches"), 4, "{s}");
    });
}

#[cfg(feature = "fault-injection")]
#[test]
fn stopping_while_a_batch_is_in_flight_waits_for_it_and_counts_the_held_frames() {
    let name = "slowstop";
    slow_forwards(name, 2000);
    within(std::time::Duration::from_secs(120), move || {
        let (pipeline, pad, outs, mut buffers) = fed_by_hand(name);
        buffers.truncate(3);
        let pusher = push_until_waiting(&pipeline, name, &pad, buffers);
        let t = std::time::Instant::now();
        pipeline.set_state(gst::State::Null).unwrap();
        // The worker's forward is waited for (libtorch cannot stop it), not more.
        let stop = t.elapsed();
        assert!(stop < std::time::Duration::from_millis(4000), "stopping took {stop:?}");
        assert_eq!(pusher.join().unwrap().last(), Some(&Err(gst::FlowError::Flushing)));
        let s = pipeline.by_name(name).unwrap().property::<gst::Structure>("stats");
        let c = common::count;
        assert_eq!((c(&s, "frames-in"), c(&s, "frames-out"), c(&s, "frames-flushed")), (3, 0, 3), "{s}");
        assert!(outs.lock().unwrap().is_empty());
    });
}

#[test]
fn frames_without_faces_and_short_streams_drain_at_eos() {
    // More latency than frames: nothing leaves before EOS, then everything does, in order.
    let (w, h, mut frames) = astronaut_clip(5);
    // A frame without a face in the middle waits with the others but needs no batch.
    frames[2] = vec![0; frames[2].len()];
    let (outs, s) = run(&[(w, h, frames)], "face-batch=4 batch-latency=20");
    in_order(&outs, 5);
    let c = common::count;
    assert_eq!((c(&s, "frames-in"), c(&s, "frames-out"), c(&s, "frames-without-faces")), (5, 5, 1), "{s}");
    // Frames 0, 1, 3, 4 in one batch.
    assert_eq!((c(&s, "generator-batches"), c(&s, "generator-faces")), (1, 4), "{s}");
}

#[test]
fn new_caps_let_held_frames_out_first() {
    let (w, h, frames) = astronaut_clip(6);
    let small: Vec<Vec<u8>> = frames[3..]
        .iter()
        .map(|f| {
            let t = common::rgb_tensor(f, w as usize, h as usize).upsample_bilinear2d([h as i64 / 2, w as i64 / 2], false, None, None);
            common::rgb_bytes(&t)
        })
        .collect();
    let segments = [(w, h, frames[..3].to_vec()), (w / 2, h / 2, small)];
    let (outs, s) = run(&segments, "face-batch=4 batch-latency=4");
    in_order(&outs, 6);
    let sizes: Vec<(u32, u32)> = outs.iter().map(|o| o.size).collect();
    assert_eq!(sizes, [[(w, h); 3], [(w / 2, h / 2); 3]].concat());
    assert!(outs.iter().zip(&segments[0].2).all(|(o, f)| o.bytes.len() == f.len()));
    // The first size's frames in one batch, drained before the new caps; then the second's.
    let c = common::count;
    assert_eq!((c(&s, "frames-in"), c(&s, "frames-out"), c(&s, "faces-restored")), (6, 6, 6), "{s}");
    assert_eq!(c(&s, "generator-batches"), 2, "{s}");
}

#[test]
fn a_flushing_seek_drops_held_frames_and_counts_them() {
    common::init();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! gpenfilter name=g {} batch-latency=5 ! fakesink sync=false",
        common::shared().join("media/videos/short_hamilton_clip.mp4").display(),
        models()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    pipeline.by_name("g").unwrap().static_pad("src").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(b) = info.buffer() {
            s.lock().unwrap().push(b.pts());
        }
        gst::PadProbeReturn::Ok
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    let t = std::time::Instant::now();
    while seen.lock().unwrap().len() < 10 {
        assert!(t.elapsed().as_secs() < 300, "no frames");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let target = gst::ClockTime::from_mseconds(7000);
    pipeline.seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE, target).unwrap();
    common::run_to_eos(&pipeline);
    let st = pipeline.by_name("g").unwrap().property::<gst::Structure>("stats");
    let pts = seen.lock().unwrap().clone();
    let first_after = pts.iter().position(|p| p.is_some_and(|p| p >= target)).expect("frames after the seek");
    let (before, after) = pts.split_at(first_after);
    assert!(before.windows(2).all(|w| w[0] < w[1]) && after.windows(2).all(|w| w[0] < w[1]), "{pts:?}");
    // Every frame from 7 s on came out (EOS drained the last five).
    assert!((60..=70).contains(&after.len()), "{} frames after the seek", after.len());
    let c = common::count;
    let (i, o, f) = (c(&st, "frames-in"), c(&st, "frames-out"), c(&st, "frames-flushed"));
    assert_eq!(i, o + f, "{st}");
    // Five frames were held when the seek came (and at most one more was in flight).
    assert!((5..=6).contains(&f), "{st}");
    assert_eq!(o as usize, pts.len());
}

/// The latency a query downstream of a gpenfilter with `props` reports once a frame went
/// through, less the element's measured processing time: upstream's (videotestsrc: a frame)
/// and what frames wait in the element.
fn latency_besides_processing(props: &str) -> i64 {
    common::init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=2 pattern=black ! video/x-raw,format=RGB,width=64,height=48,framerate=25/1 \
         ! gpenfilter name=g {} {props} ! fakesink name=sink",
        models()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Paused).unwrap();
    assert_eq!(pipeline.state(gst::ClockTime::from_seconds(120)).0, Ok(gst::StateChangeSuccess::Success));
    let mut q = gst::query::Latency::new();
    assert!(pipeline.by_name("sink").unwrap().static_pad("sink").unwrap().peer_query(&mut q));
    let (_, min, _) = q.result();
    let mean_ms = pipeline.by_name("g").unwrap().property::<gst::Structure>("stats").get::<f64>("mean-ms").unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    min.useconds() as i64 - (mean_ms * 1e3).round() as i64
}

#[test]
fn the_latency_query_adds_the_held_frames() {
    let upstream = latency_besides_processing("");
    assert!((upstream - 40_000).abs() <= 1, "{upstream} us");
    // Four more frames of 40 ms.
    let held = latency_besides_processing("batch-latency=4");
    assert!((held - upstream - 160_000).abs() <= 1, "{held} us");
}

// The core's look-ahead, driven directly: no GStreamer, frames carrying the caller's own values.

mod core {
    use super::{astronaut_clip, common};
    use gstgpen::restorer::{Engine, FaceSettings, Held, Lookahead, Release, RestorerSettings, Stream};
    use gstgpen::PackedLayout;
    use std::time::{Duration, Instant};

    fn settings(face_batch: usize) -> RestorerSettings {
        RestorerSettings {
            model: Some(common::gpen_fixture("gpen-256-tiny.pth")),
            size: 256,
            device: gstgpen::restorer::DeviceSpec::Cpu,
            faces: FaceSettings { detector_model: Some(common::detector()), face_batch, ..Default::default() },
            ..Default::default()
        }
    }

    /// Frames restored one by one, without look-ahead: the reference.
    fn alone(clip: &[Vec<u8>], layout: &PackedLayout) -> Vec<Vec<u8>> {
        let mut engine = Engine::new(&settings(4)).unwrap();
        let mut stream = Stream::new(&engine, &settings(4)).unwrap();
        clip.iter()
            .map(|f| {
                let mut out = f.clone();
                stream.process(&mut engine, &mut out, layout, 0.04).unwrap();
                out
            })
            .collect()
    }

    /// The clip through a look-ahead of `latency` frames: each frame's payload is its number and
    /// its bytes; frames are finished as the look-ahead gives them back, then drained.
    fn through(clip: &[Vec<u8>], layout: &PackedLayout, latency: usize, overlap: bool) -> (Vec<(usize, Vec<u8>)>, Engine) {
        let s = settings(4);
        let mut engine = Engine::new(&s).unwrap();
        let mut stream = Stream::new(&engine, &s).unwrap();
        let (mut ahead, error) = Lookahead::new(latency, overlap);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(ahead.overlaps(), overlap);
        let never = || false;
        let mut warn = |e| panic!("{e}");
        let mut out = Vec::new();
        let mut finish = |held: Held<(usize, Vec<u8>)>, engine: &mut Engine, stream: &mut Stream| {
            let (i, mut bytes) = held.payload;
            let d = held.frame.unwrap().unwrap();
            assert!(d.restored_ahead(), "frame {i}'s face was restored in a batch ahead");
            stream.finish(engine, d, Some((&mut bytes, layout))).unwrap();
            out.push((i, bytes));
        };
        for (i, f) in clip.iter().enumerate() {
            let begun = stream.begin(&engine, f, layout, 0.04);
            ahead.push(&engine, &stream, Held::new((i, f.clone()), begun, Duration::ZERO), &mut warn);
            while let Release::Ready(held) = ahead.release(&engine, &stream, false, &never, &mut warn) {
                finish(held, &mut engine, &mut stream);
            }
            assert!(ahead.len() <= latency);
        }
        while let Release::Ready(held) = ahead.release(&engine, &stream, true, &never, &mut warn) {
            finish(held, &mut engine, &mut stream);
        }
        assert!(ahead.is_empty());
        (out, engine)
    }

    #[test]
    fn frames_come_back_in_order_with_their_payloads_restored_in_shared_batches() {
        let (w, h, clip) = astronaut_clip(8);
        let layout = PackedLayout::rgb(w as usize, h as usize);
        let reference = alone(&clip, &layout);
        for overlap in [false, true] {
            let (out, engine) = through(&clip, &layout, 3, overlap);
            assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>(), "overlap {overlap}");
            // One face a frame in batches of four: two forwards for eight frames.
            let runs = engine.generator_runs();
            assert_eq!((runs.batches, runs.faces), (2, 8), "overlap {overlap}");
            for ((i, got), want) in out.iter().zip(&reference) {
                assert_ne!(got, &clip[*i], "frame {i} restored");
                let (mean, max) = common::level_diff(got, want);
                assert!(mean < 0.01 && max <= 2, "overlap {overlap}, frame {i}: mean {mean}, max {max}");
            }
        }
    }

    #[test]
    fn a_flush_drops_the_held_frames_and_nothing_comes_back_after_it() {
        let (w, h, clip) = astronaut_clip(4);
        let layout = PackedLayout::rgb(w as usize, h as usize);
        let s = settings(4);
        let engine = Engine::new(&s).unwrap();
        let mut stream = Stream::new(&engine, &s).unwrap();
        let (mut ahead, _) = Lookahead::new(8, true);
        let mut warn = |e| panic!("{e}");
        for (i, f) in clip.iter().enumerate() {
            let begun = stream.begin(&engine, f, layout, 0.04);
            ahead.push(&engine, &stream, Held::new(i, begun, Duration::ZERO), &mut warn);
        }
        assert!(matches!(ahead.release(&engine, &stream, false, &|| false, &mut warn), Release::NotYet), "under the latency");
        assert_eq!(ahead.flush(), 4);
        assert!(matches!(ahead.release(&engine, &stream, true, &|| false, &mut warn), Release::NotYet), "nothing left to drain");
        // The batch that was in flight, if any, is discarded as it lands: new frames go on.
        let begun = stream.begin(&engine, &clip[0], layout, 0.04);
        ahead.push(&engine, &stream, Held::new(9, begun, Duration::ZERO), &mut warn);
        match ahead.release(&engine, &stream, true, &|| false, &mut warn) {
            Release::Ready(held) => assert_eq!(held.payload, 9),
            _ => panic!("the frame after the flush comes back"),
        }
    }

    /// A wait for the worker that its caller cancels (a flush) gives up at once and keeps the
    /// frame; the next release waits again and gets it.
    #[cfg(feature = "fault-injection")]
    #[test]
    fn a_cancelled_wait_keeps_the_frame_held() {
        let (w, h, clip) = astronaut_clip(2);
        let layout = PackedLayout::rgb(w as usize, h as usize);
        let s = settings(1);
        let engine = Engine::new(&s).unwrap();
        engine.slow_forwards(1500);
        let mut stream = Stream::new(&engine, &s).unwrap();
        let (mut ahead, _) = Lookahead::new(1, true);
        let mut warn = |e| panic!("{e}");
        for (i, f) in clip.iter().enumerate() {
            let begun = stream.begin(&engine, f, layout, 0.04);
            ahead.push(&engine, &stream, Held::new(i, begun, Duration::ZERO), &mut warn);
        }
        assert!(ahead.forward_running() || ahead.len() == 2);
        let started = Instant::now();
        assert!(matches!(ahead.release(&engine, &stream, false, &|| true, &mut warn), Release::Cancelled));
        assert!(started.elapsed() < Duration::from_millis(500), "gave up at once: {:?}", started.elapsed());
        assert_eq!(ahead.len(), 2, "the frame is still held");
        match ahead.release(&engine, &stream, false, &|| false, &mut warn) {
            Release::Ready(held) => {
                assert_eq!(held.payload, 0);
                assert!(held.frame.unwrap().unwrap().restored_ahead());
                assert!(ahead.waited() > Duration::ZERO);
            }
            _ => panic!("the oldest frame comes back once its batch is"),
        }
    }
}
