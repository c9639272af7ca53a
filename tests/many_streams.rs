//! Four pipelines in one process, run at once from four threads, share one model: every frame
//! as a single stream gives it, the model loaded once, and an out-of-memory storm on one stream
//! leaves the others alone. One test in its own process: it sets GST_GPEN_FAIL_EVERY.

mod common;

use common::init;

const FRAMES: usize = 6;

fn clip() -> (Vec<Vec<u8>>, usize, usize) {
    let (rgb, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let photo = common::rgb_tensor(&rgb, w, h);
    let frames = common::motion::path(FRAMES).iter().map(|p| common::motion::render(&photo, p)).collect();
    (frames, w, h)
}

/// Runs the clip through a gpenfilter named `name`; returns the output frames and statistics.
fn stream(name: &str, frames: &[Vec<u8>], w: usize, h: usize) -> (Vec<Vec<u8>>, gst::Structure) {
    let (model, detector) = (common::gpen_fixture("gpen-256-tiny.pth"), common::detector());
    let props = [
        ("name", name),
        ("size", "256"),
        ("model", model.to_str().unwrap()),
        ("detector-model", detector.to_str().unwrap()),
        ("device", "cpu"),
        ("memory-policy", "degrade"),
    ];
    let (out, stats, _) = common::run_element(&props, frames, w, h);
    (out, stats)
}

fn concurrently(names: [&'static str; 4], frames: &[Vec<u8>], w: usize, h: usize) -> Vec<(Vec<Vec<u8>>, gst::Structure)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = names.iter().map(|n| s.spawn(move || stream(n, frames, w, h))).collect();
        handles.into_iter().map(|h| h.join().expect("a stream panicked")).collect()
    })
}

#[test]
fn four_streams_share_one_model_and_an_oom_storm_stays_on_its_stream() {
    init();
    // Only the element named `storm` fails: every second generator forward runs out of memory.
    std::env::set_var(gstgpen::memory::FAIL_EVERY_ENV, "storm:2");
    let model = common::gpen_fixture("gpen-256-tiny.pth");
    let (frames, w, h) = clip();
    let (single, s) = stream("single", &frames, w, h);
    assert_eq!(single.len(), FRAMES, "{s}");
    assert_eq!(s.get::<u64>("faces-restored").unwrap(), FRAMES as u64, "{s}");

    let loads = gstgpen::registry::loads_of(&model);
    let runs = concurrently(["a0", "a1", "a2", "a3"], &frames, w, h);
    assert_eq!(gstgpen::registry::loads_of(&model), loads + 1, "four streams, one load");
    for (i, (out, s)) in runs.iter().enumerate() {
        assert_eq!(out.len(), FRAMES, "stream {i}: {s}");
        assert!(out == &single, "stream {i} differs from the single-stream run");
    }

    let runs = concurrently(["b0", "b1", "storm", "b2"], &frames, w, h);
    for (i, (out, s)) in runs.iter().enumerate() {
        println!("{s}");
        let n = |f: &str| s.get::<u64>(f).unwrap();
        if i == 2 {
            // Every frame is accounted for: restored on a degraded plan, or dropped (counted)
            // when its retry failed too.
            assert_eq!(n("frames-in"), n("frames-out") + n("frames-dropped"), "{s}");
            assert_eq!(out.len() as u64, n("frames-out"));
            assert!(n("retries") >= 1 && n("frames-out") >= 1, "{s}");
            assert_ne!(s.get::<String>("plan").unwrap(), runs[0].1.get::<String>("plan").unwrap(), "the storm degraded its plan");
        } else {
            assert_eq!(out.len(), FRAMES, "stream {i}: {s}");
            assert_eq!(n("retries"), 0, "{s}");
            assert!(out == &single, "stream {i} differs from the single-stream run");
        }
    }
}
