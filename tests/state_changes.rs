//! State changes, seeks, renegotiation and EOS: no frame lost or duplicated, no stale state.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::init;
use gst::prelude::*;

fn models() -> String {
    format!("model={} detector-model={} device=cpu", common::gpen_fixture("gpen-256-tiny.pth").display(), common::detector().display())
}

/// The PTS of every buffer leaving the element `g`.
fn watch_output(pipeline: &gst::Pipeline) -> Arc<Mutex<Vec<Option<gst::ClockTime>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    pipeline.by_name("g").unwrap().static_pad("src").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(b) = info.buffer() {
            s.lock().unwrap().push(b.pts());
        }
        gst::PadProbeReturn::Ok
    });
    seen
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(300), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs until EOS; panics on an error message.
fn until_eos(pipeline: &gst::Pipeline) {
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(600)) {
        match msg.view() {
            gst::MessageView::Eos(_) => return,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    panic!("no EOS");
}

fn stats(pipeline: &gst::Pipeline) -> gst::Structure {
    pipeline.by_name("g").unwrap().property::<gst::Structure>("stats")
}

fn strictly_increasing(pts: &[Option<gst::ClockTime>]) -> bool {
    pts.windows(2).all(|w| w[0] < w[1])
}

fn still_clip(frames: u32, props: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(&format!(
        "filesrc location={} ! pngdec ! imagefreeze num-buffers={frames} ! video/x-raw,framerate=30/1 ! videoconvert \
         ! gpenfilter name=g size=256 {} {props} ! fakesink name=sink sync=true qos=false",
        common::shared().join("media/images/astronaut.png").display(),
        models()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap()
}

#[test]
fn pausing_and_resuming_loses_nothing() {
    let pipeline = still_clip(20, "");
    let out = watch_output(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_for("5 frames", || out.lock().unwrap().len() >= 5);
    pipeline.set_state(gst::State::Paused).unwrap();
    let (r, _, _) = pipeline.state(gst::ClockTime::from_seconds(60));
    r.unwrap();
    let paused_at = out.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(300));
    // At most the frame being processed and the one the paused sink holds move on.
    assert!(out.lock().unwrap().len() <= paused_at + 2);
    pipeline.set_state(gst::State::Playing).unwrap();
    until_eos(&pipeline);
    let s = stats(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();
    let pts = out.lock().unwrap().clone();
    assert_eq!(pts.len(), 20, "{s}");
    assert!(strictly_increasing(&pts), "{pts:?}");
    assert_eq!((s.get::<u64>("frames-in").unwrap(), s.get::<u64>("frames-out").unwrap()), (20, 20), "{s}");
    assert_eq!(s.get::<u64>("faces-restored").unwrap(), 20, "{s}");
}

#[test]
fn restarting_with_another_model_uses_it_and_forgets_the_old_stream() {
    let pipeline = still_clip(3, "");
    let out = watch_output(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    until_eos(&pipeline);
    assert!(stats(&pipeline).get::<String>("plan").unwrap().contains("size=256"));
    pipeline.set_state(gst::State::Ready).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    let g = pipeline.by_name("g").unwrap();
    g.set_property("model", common::gpen_fixture("gpen-512-tiny.pth").to_str().unwrap());
    g.set_property_from_str("size", "512");
    pipeline.set_state(gst::State::Playing).unwrap();
    until_eos(&pipeline);
    let s = stats(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(s.get::<String>("plan").unwrap().contains("size=512"), "{s}");
    // Statistics and tracks start afresh: 3 frames, one track, one detection per frame.
    assert_eq!((s.get::<u64>("frames-in").unwrap(), s.get::<u64>("frames-out").unwrap()), (3, 3), "{s}");
    assert_eq!(s.get::<u64>("tracks-started").unwrap(), 1, "{s}");
    assert_eq!(s.get::<u64>("faces-restored").unwrap(), 3, "{s}");
    assert_eq!(out.lock().unwrap().len(), 6);
}

#[test]
fn a_flushing_seek_mid_stream_continues_from_the_new_position() {
    init();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! gpenfilter name=g size=256 {} ! fakesink sync=false",
        common::shared().join("media/videos/short_hamilton_clip.mp4").display(),
        models()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let out = watch_output(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_for("20 frames", || out.lock().unwrap().len() >= 20);
    let target = gst::ClockTime::from_mseconds(7000);
    pipeline.seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE, target).unwrap();
    until_eos(&pipeline);
    let s = stats(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();
    let pts = out.lock().unwrap().clone();
    // Frames before the seek, then frames from 7 s on, each once.
    let first_after = pts.iter().position(|p| p.is_some_and(|p| p >= target)).expect("frames after the seek");
    let (before, after) = pts.split_at(first_after);
    assert!(strictly_increasing(before) && strictly_increasing(after), "{pts:?}");
    assert!(after.iter().all(|p| p.is_some_and(|p| p >= target)), "{after:?}");
    // 275 frames at 29.97 fps: 65 frames from 7 s to the end.
    assert!((60..=70).contains(&after.len()), "{} frames after the seek", after.len());
    // A frame inside the element when the seek flushed is discarded, and counted as such.
    let (i, o, f) = (s.get::<u64>("frames-in").unwrap(), s.get::<u64>("frames-out").unwrap(), s.get::<u64>("frames-flushed").unwrap());
    assert_eq!(i, o + f, "{s}");
    assert!(f <= 2, "{s}");
    assert_eq!(o as usize, pts.len());
}

/// Packed RGB of astronaut.png scaled to `w` x `h`.
fn astronaut(w: i64, h: i64) -> Vec<u8> {
    let (rgb, sw, sh) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let t = common::rgb_tensor(&rgb, sw, sh).upsample_bilinear2d([h, w], false, None, None);
    common::rgb_bytes(&t)
}

/// An appsrc → gpenfilter → appsink pipeline; returns it, the source and the received samples.
fn app_pipeline() -> (gst::Pipeline, gst_app::AppSrc, Arc<Mutex<Vec<gst::Sample>>>) {
    init();
    let (pipeline, src, sink) = common::app_pipeline(&format!(
        "appsrc name=src format=time ! gpenfilter name=g size=256 {} ! appsink name=sink sync=false",
        models()
    ));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let s = samples.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                s.lock().unwrap().push(sink.pull_sample().map_err(|_| gst::FlowError::Eos)?);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    (pipeline, src, samples)
}

fn push(src: &gst_app::AppSrc, bytes: &[u8], i: u64) {
    let mut b = gst::Buffer::from_slice(bytes.to_vec());
    b.get_mut().unwrap().set_pts(gst::ClockTime::from_mseconds(i * 40));
    src.push_buffer(b).unwrap();
}

#[test]
fn a_new_resolution_mid_stream_is_renegotiated() {
    let (pipeline, src, samples) = app_pipeline();
    pipeline.set_state(gst::State::Playing).unwrap();
    let caps = |w: i32, h: i32| {
        gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w as u32, h as u32)
            .fps(gst::Fraction::new(25, 1))
            .build()
            .unwrap()
            .to_caps()
            .unwrap()
    };
    src.set_caps(Some(&caps(320, 320)));
    let small = astronaut(320, 320);
    for i in 0..4 {
        push(&src, &small, i);
    }
    src.set_caps(Some(&caps(448, 336)));
    let large = astronaut(448, 336);
    for i in 4..8 {
        push(&src, &large, i);
    }
    src.end_of_stream().unwrap();
    until_eos(&pipeline);
    let s = stats(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();
    let samples = samples.lock().unwrap();
    let sizes: Vec<(u32, u32)> = samples
        .iter()
        .map(|x| {
            let info = gst_video::VideoInfo::from_caps(x.caps().unwrap()).unwrap();
            (info.width(), info.height())
        })
        .collect();
    assert_eq!(sizes, [[(320, 320); 4].as_slice(), [(448, 336); 4].as_slice()].concat());
    for (x, want) in samples.iter().zip([&small, &small, &small, &small, &large, &large, &large, &large]) {
        let map = x.buffer().unwrap().map_readable().unwrap();
        assert_eq!(map.len(), want.len());
        assert_ne!(map.as_slice(), want.as_slice(), "a face was restored in every frame");
    }
    // The tracks of the old size ended with it.
    assert_eq!(s.get::<u64>("tracks-started").unwrap(), 2, "{s}");
    assert_eq!(s.get::<u64>("faces-restored").unwrap(), 8, "{s}");
}

#[test]
fn eos_right_after_the_frames_lets_every_frame_out() {
    let (pipeline, src, samples) = app_pipeline();
    pipeline.set_state(gst::State::Playing).unwrap();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 256, 256).fps(gst::Fraction::new(25, 1)).build().unwrap();
    src.set_caps(Some(&info.to_caps().unwrap()));
    let frame = astronaut(256, 256);
    for i in 0..12 {
        push(&src, &frame, i);
    }
    src.end_of_stream().unwrap();
    until_eos(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();
    let pts: Vec<_> = samples.lock().unwrap().iter().map(|s| s.buffer().unwrap().pts()).collect();
    assert_eq!(pts, (0..12).map(|i| Some(gst::ClockTime::from_mseconds(i * 40))).collect::<Vec<_>>());
}
