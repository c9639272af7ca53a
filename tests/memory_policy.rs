//! The memory budget and policy, driven on the CPU by budgets below the estimate.

mod common;

use std::sync::{Arc, Mutex};

use common::{count, detector, init};
use gst::prelude::*;

/// What a run saw: stats, QoS messages, the first error, the RGB frames out.
struct Run {
    stats: gst::Structure,
    qos_messages: usize,
    error: Option<String>,
    frames: Vec<Vec<u8>>,
}

/// `frames` frames of two_people.jpg (2 faces) through gpenfilter with `props`.
fn run(props: &str, frames: u32) -> Run {
    init();
    let description = format!(
        "filesrc location={img} ! jpegdec ! imagefreeze num-buffers={frames} ! videoconvert ! video/x-raw,format=RGB \
         ! gpenfilter name=g size=256 model={model} detector-model={det} device=cpu {props} ! fakesink name=out sync=false",
        img = common::shared().join("media/images/two_people.jpg").display(),
        model = common::gpen_fixture("gpen-256-tiny.pth").display(),
        det = detector().display(),
    );
    let pipeline = gst::parse::launch(&description).unwrap().downcast::<gst::Pipeline>().unwrap();
    let g = pipeline.by_name("g").unwrap();
    let sink = pipeline.by_name("out").unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let out2 = out.clone();
    sink.static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(b) = info.buffer() {
            // The visible pixels only: row padding is uninitialised memory.
            let vinfo = gst_video::VideoInfo::from_caps(&pad.current_caps().unwrap()).unwrap();
            let (row, stride) = (vinfo.width() as usize * 3, vinfo.stride()[0] as usize);
            let map = b.map_readable().unwrap();
            let pixels = (0..vinfo.height() as usize).flat_map(|y| map[y * stride..y * stride + row].to_vec()).collect();
            out2.lock().unwrap().push(pixels);
        }
        gst::PadProbeReturn::Ok
    });
    let _ = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus().unwrap();
    let (mut qos, mut error) = (0, None);
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Qos(_) => qos += 1,
            gst::MessageView::Error(e) => {
                error = Some(format!("{} ({})", e.error(), e.debug().unwrap_or_default()));
                break;
            }
            _ => {}
        }
    }
    let stats = g.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    let frames = out.lock().unwrap().clone();
    Run { stats, qos_messages: qos, error, frames }
}

/// frames in = frames out + frames dropped, in the statistics and at the sink.
fn assert_accounted(r: &Run, n: u64) {
    let s = &r.stats;
    assert_eq!(count(s, "frames-in"), n, "{s}");
    assert_eq!(count(s, "frames-out"), r.frames.len() as u64, "{s}");
    assert_eq!(count(s, "frames-in"), count(s, "frames-out") + count(s, "frames-dropped") + count(s, "frames-late-dropped"), "{s}");
}

#[test]
fn nothing_fits_degrade_walks_the_ladder_then_drops() {
    let r = run("vram-budget=1", 4);
    println!("{}", r.stats);
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_accounted(&r, 4);
    assert_eq!(count(&r.stats, "frames-dropped"), 4);
    assert_eq!(r.qos_messages, 4, "one QoS message per dropped frame");
    assert_eq!(r.stats.get::<String>("plan").unwrap(), "size=256 fp16=true face-batch=1");
}

#[test]
fn nothing_fits_drop_drops_without_degrading() {
    let r = run("vram-budget=1 memory-policy=drop", 3);
    assert_accounted(&r, 3);
    assert_eq!(count(&r.stats, "frames-dropped"), 3);
    assert_eq!(r.qos_messages, 3);
    assert_eq!(r.stats.get::<String>("plan").unwrap(), "size=256 fp16=false face-batch=4");
}

#[test]
fn nothing_fits_passthrough_pushes_the_input_unchanged() {
    let input = run("aligned=false detection-threshold=1.0", 1).frames; // nothing restored: the input
    let r = run("vram-budget=1 memory-policy=passthrough", 3);
    assert_accounted(&r, 3);
    assert_eq!(count(&r.stats, "frames-passed-through"), 3);
    assert_eq!(count(&r.stats, "frames-dropped"), 0);
    for f in &r.frames {
        assert!(f == &input[0], "a passed-through frame differs from its input");
    }
}

#[test]
fn nothing_fits_error_stops_with_a_message() {
    let r = run("vram-budget=1 memory-policy=error", 3);
    let e = r.error.expect("an error on the bus");
    assert!(e.contains("memory-policy=error") && e.contains("budget of 1 MiB"), "{e}");
}

#[test]
fn a_budget_between_the_precisions_degrades_to_half_precision() {
    use gstgpen::gpen::GpenConfig;
    use gstgpen::memory::{Estimator, Plan};
    let cfg = GpenConfig { size: 256, channel_multiplier: 1, narrow: 0.125, ..Default::default() };
    let e = Estimator::default();
    // two_people.jpg: 2 faces above the default threshold.
    let full = e.peak_bytes(&cfg, &Plan { size: 256, half: false, face_batch: 4, tile: None, parse: false }, 2, (1126, 661));
    let half = e.peak_bytes(&cfg, &Plan { size: 256, half: true, face_batch: 4, tile: None, parse: false }, 2, (1126, 661));
    assert!(half < full);
    let budget = ((full + half) / 2) >> 20;
    let r = run(&format!("vram-budget={budget}"), 3);
    println!("budget {budget} MiB: {}", r.stats);
    assert_accounted(&r, 3);
    assert_eq!(count(&r.stats, "frames-dropped"), 0);
    assert!(count(&r.stats, "faces-restored") >= 6);
    assert_eq!(r.stats.get::<String>("plan").unwrap(), "size=256 fp16=true face-batch=4");
}

#[test]
fn two_elements_share_one_model() {
    init();
    let dir = common::scratch("shared-model");
    let model = dir.join("shared.pth");
    std::fs::copy(common::gpen_fixture("gpen-256-tiny.pth"), &model).unwrap();
    let make = || {
        let p = gst::parse::launch(&format!(
            "videotestsrc num-buffers=2 ! video/x-raw,format=RGB,width=64,height=64 ! gpenfilter aligned=true size=256 \
             model={} device=cpu ! fakesink",
            model.display()
        ))
        .unwrap();
        p.set_state(gst::State::Paused).unwrap();
        let _ = p.state(gst::ClockTime::from_seconds(30));
        p
    };
    let (a, b) = (make(), make());
    assert_eq!(gstgpen::registry::live_generators(&model), 1);
    assert_eq!(gstgpen::registry::loads_of(&model), 1, "the checkpoint was loaded twice");
    a.set_state(gst::State::Null).unwrap();
    assert_eq!(gstgpen::registry::live_generators(&model), 1, "freed while b uses it");
    b.set_state(gst::State::Null).unwrap();
    assert_eq!(gstgpen::registry::live_generators(&model), 0, "not freed when the last user went");
}

#[test]
fn late_frames_are_dropped_by_qos_and_counted() {
    init();
    let element = common::tiny_element(true);
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 64, 64).fps(gst::Fraction::new(25, 1)).build().unwrap();
    h.set_src_caps(info.to_caps().unwrap());
    h.set_upstream_latency(gst::ClockTime::from_mseconds(10));
    let frame = |pts_ms: u64| {
        let mut b = gst::Buffer::with_size(info.size()).unwrap();
        b.get_mut().unwrap().set_pts(gst::ClockTime::from_mseconds(pts_ms));
        b.get_mut().unwrap().set_duration(gst::ClockTime::from_mseconds(40));
        b
    };
    h.push_and_pull(frame(0)).unwrap();
    // Downstream says: 1 s late at 10 s.
    assert!(h.push_upstream_event(gst::event::Qos::new(gst::QOSType::Underflow, 0.5, 1_000_000_000i64, gst::ClockTime::from_seconds(10))));
    assert_eq!(h.push(frame(5000)), Ok(gst::FlowSuccess::Ok));
    assert!(h.try_pull().is_none(), "a late frame was not dropped");
    let stats = element.property::<gst::Structure>("stats");
    assert_eq!(count(&stats, "frames-late-dropped"), 1, "{stats}");
    assert_eq!(count(&stats, "frames-in"), 2);
    assert_eq!(count(&stats, "frames-out"), 1);
    // Latency: upstream's 10 ms plus the measured processing time.
    let latency = h.query_latency().expect("latency answered");
    assert!(latency > gst::ClockTime::from_mseconds(10), "{latency}");
}

#[test]
fn statistics_are_posted_as_element_messages() {
    init();
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=3 ! video/x-raw,format=RGB,width=64,height=64 ! gpenfilter aligned=true size=256 \
         model={} device=cpu post-messages=true ! fakesink",
        common::gpen_fixture("gpen-256-tiny.pth").display()
    ))
    .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let mut posted = Vec::new();
    for msg in p.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Element(e) if e.structure().is_some_and(|s| s.name() == "gpenfilter-stats") => {
                posted.push(e.structure().unwrap().to_owned())
            }
            gst::MessageView::Error(e) => panic!("{}", e.error()),
            _ => {}
        }
    }
    p.set_state(gst::State::Null).unwrap();
    // At most one a second (the first frame's), then the final one at EOS.
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert_eq!(count(&posted[0], "frames-in"), 1);
    assert!(!posted[0].get::<bool>("eos").unwrap());
    assert!(posted[0].get::<f64>("mean-ms").unwrap() > 0.0);
    assert!(posted[1].get::<bool>("eos").unwrap());
    assert_eq!((count(&posted[1], "frames-in"), count(&posted[1], "frames-out")), (3, 3));
}
