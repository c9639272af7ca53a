//! `gpenfilter upscale=2|4`: caps scaled, the background from the upscaler (RRDBNet or
//! bicubic), faces restored at the upscaled coordinates, tiles within a level of the whole
//! frame, the tile rung of the memory ladder, and clear errors at start.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{count, detector, init, rgb_tensor as tensor};
use gst::prelude::*;
use gstgpen::registry;
use gstgpen::restorer::{FaceSettings, MemorySettings, Restorer, RestorerSettings, UpscaleSettings};
use gstgpen::upscale::Upscaler;
use gstgpen::PackedLayout;
use tch::{Device, Tensor};

fn x2() -> PathBuf {
    common::shared().join("fixtures/rrdbnet/rrdbnet-x2-tiny.pth")
}

struct Run {
    /// Output frames, packed RGB.
    frames: Vec<Vec<u8>>,
    caps: Option<gst::Caps>,
    stats: gst::Structure,
    error: Option<String>,
}

/// Runs `source ! gpenfilter {properties} ! video/x-raw,format=RGB ! fakesink`, keeping the frames.
fn run(source: &str, properties: &str) -> Run {
    init();
    let p = gst::parse::launch(&format!(
        "{source} ! gpenfilter name=g device=cpu size=256 model={} detector-model={} {properties} ! fakesink name=sink",
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        detector().display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let caps = Arc::new(Mutex::new(None));
    let (f, c) = (frames.clone(), caps.clone());
    p.by_name("sink").unwrap().static_pad("sink").unwrap().add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => f.lock().unwrap().push(b.map_readable().unwrap().to_vec()),
                Some(gst::PadProbeData::Event(e)) => {
                    if let gst::EventView::Caps(ev) = e.view() {
                        *c.lock().unwrap() = Some(ev.caps_owned());
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    let _ = p.set_state(gst::State::Playing);
    let mut error = None;
    for msg in p.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(300)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                error = Some(format!("{} ({})", e.error(), e.debug().unwrap_or_default()));
                break;
            }
            _ => {}
        }
    }
    let stats = p.by_name("g").unwrap().property::<gst::Structure>("stats");
    p.set_state(gst::State::Null).unwrap();
    let frames = std::mem::take(&mut *frames.lock().unwrap());
    let caps = caps.lock().unwrap().clone();
    Run { frames, caps, stats, error }
}

fn png(path: &Path) -> String {
    format!("filesrc location={} ! pngdec ! videoconvert ! video/x-raw,format=RGB", path.display())
}

fn size_of(caps: &gst::Caps) -> (i32, i32) {
    let s = caps.structure(0).unwrap();
    (s.get("width").unwrap(), s.get("height").unwrap())
}

#[test]
fn caps_are_scaled_and_every_frame_comes_out() {
    for (factor, props) in
        [(2, "upscale=2".to_owned()), (4, "upscale=4".to_owned()), (2, format!("upscale=2 upscaler-model={}", x2().display()))]
    {
        let r = run("videotestsrc num-buffers=3 ! video/x-raw,format=RGB,width=64,height=48", &props);
        assert!(r.error.is_none(), "{props}: {:?}", r.error);
        assert_eq!(size_of(r.caps.as_ref().unwrap()), (64 * factor, 48 * factor), "{props}");
        assert_eq!(r.frames.len(), 3, "{props}");
        assert_eq!(r.frames[0].len(), (64 * factor * 48 * factor * 3) as usize);
        assert_eq!((count(&r.stats, "frames-in"), count(&r.stats, "frames-out")), (3, 3));
        assert_eq!(count(&r.stats, "frames-without-faces"), 3, "{}", r.stats);
    }
    // upscale=1 keeps the size (and restores in place).
    let r = run("videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=48", "upscale=1");
    assert_eq!(size_of(r.caps.as_ref().unwrap()), (64, 48));
}

#[test]
fn background_from_the_upscaler_and_faces_restored_at_upscaled_coordinates() {
    let photo = common::shared().join("media/images/astronaut.png");
    let (rgb, w, h) = common::decode_image(&photo);
    let input = tensor(&rgb, w, h);
    let up = Upscaler::with_net(registry::upscaler(&x2(), Device::Cpu).unwrap(), 2).unwrap();
    let expected = up.upscale(&input, 0, 0).unwrap().round().clamp(0.0, 255.0);

    // No face restored (threshold 1): exactly the upscaler's output.
    let plain = run(&png(&photo), &format!("upscale=2 upscaler-model={} detection-threshold=1", x2().display()));
    assert!(plain.error.is_none(), "{:?}", plain.error);
    let got = tensor(&plain.frames[0], 2 * w, 2 * h);
    let d = (&got - &expected).abs().max().double_value(&[]);
    assert!(d <= 1.0, "background differs from the upscaler by {d} levels");

    // With the face: it is restored, and only around it does the output differ.
    let r = run(&png(&photo), &format!("upscale=2 upscaler-model={}", x2().display()));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(count(&r.stats, "faces-restored"), 1, "{}", r.stats);
    let with_face = tensor(&r.frames[0], 2 * w, 2 * h);
    let (x0, y0, x1, y1) = changed_box(&with_face, &got);
    // The same photo restored without upscaling: its changed box, twice as large, is where the
    // upscaled output changed (a few pixels of slack for the soft mask's rounding).
    let same = run(&png(&photo), "");
    assert_eq!(count(&same.stats, "faces-restored"), 1);
    let (a0, b0, a1, b1) = changed_box(&tensor(&same.frames[0], w, h), &input);
    println!("changed: upscaled x {x0}..{x1} y {y0}..{y1}; not upscaled x {a0}..{a1} y {b0}..{b1}");
    for (up, plain) in [(x0, a0), (y0, b0), (x1, a1), (y1, b1)] {
        assert!((up - 2 * plain).abs() <= 6, "upscaled box ({x0},{y0})-({x1},{y1}) against 2 x ({a0},{b0})-({a1},{b1})");
    }
}

/// The bounding box `(x0, y0, x1, y1)` of the pixels that differ by more than a level.
fn changed_box(a: &Tensor, b: &Tensor) -> (i64, i64, i64, i64) {
    let changed = (a - b).abs().amax([1], false).squeeze().gt(1.0);
    let ys = changed.any_dim(1, false).nonzero();
    let xs = changed.any_dim(0, false).nonzero();
    assert!(ys.size()[0] > 0, "nothing changed");
    (xs.min().int64_value(&[]), ys.min().int64_value(&[]), xs.max().int64_value(&[]), ys.max().int64_value(&[]))
}

#[test]
fn bicubic_without_a_model_and_tiles_within_a_level() {
    let photo = common::shared().join("media/images/astronaut.png");
    let (rgb, w, h) = common::decode_image(&photo);
    let input = tensor(&rgb, w, h);
    let bicubic = Upscaler::Bicubic(2).upscale(&input, 0, 0).unwrap().round().clamp(0.0, 255.0);
    let r = run(&png(&photo), "upscale=2 detection-threshold=1");
    assert!(r.error.is_none(), "{:?}", r.error);
    let d = (&tensor(&r.frames[0], 2 * w, 2 * h) - &bicubic).abs().max().double_value(&[]);
    assert!(d <= 1.0, "bicubic: {d} levels");

    let whole = run(&png(&photo), &format!("upscale=2 upscaler-model={}", x2().display()));
    let tiled = run(&png(&photo), &format!("upscale=2 upscaler-model={} tile-size=128 tile-overlap=32", x2().display()));
    assert!(tiled.error.is_none(), "{:?}", tiled.error);
    assert!(tiled.stats.get::<String>("plan").unwrap().ends_with("tile-size=128"), "{}", tiled.stats);
    let d = (&tensor(&tiled.frames[0], 2 * w, 2 * h) - &tensor(&whole.frames[0], 2 * w, 2 * h)).abs().max().double_value(&[]);
    println!("element, tile 128 overlap 32 against the whole frame: max {d} levels");
    assert!(d <= 1.0, "tiled: {d} levels");
}

#[test]
fn the_memory_ladder_shrinks_tiles() {
    let photo = common::shared().join("media/images/astronaut.png");
    let (rgb, w, h) = common::decode_image(&photo);
    let settings = |budget_mib: u64| RestorerSettings {
        model: Some(common::gpen_fixture("gpen-256-tiny.pth")),
        size: 256,
        device: gstgpen::restorer::DeviceSpec::Cpu,
        faces: FaceSettings { detector_model: Some(detector()), face_batch: 1, ..Default::default() },
        memory: MemorySettings { budget_mib, ..Default::default() },
        upscale: UpscaleSettings { factor: 2, model: Some(x2()), tile: 0, overlap: 32 },
        fp16: true,
        ..Default::default()
    };
    let probe = Restorer::new(&settings(1 << 20)).unwrap();
    let whole = probe.plan();
    assert_eq!(whole.tile, Some(0));
    let small = gstgpen::memory::Plan { tile: Some(128), ..whole };
    let (need_whole, need_small) = (probe.estimate(&whole, 1, (w as i64, h as i64)), probe.estimate(&small, 1, (w as i64, h as i64)));
    assert!(need_small < need_whole, "{need_small} < {need_whole}");
    drop(probe);
    // A budget between the two: the whole frame does not fit, 128 px tiles do.
    let budget = (need_small + (need_whole - need_small) / 2).div_ceil(1 << 20);
    let mut r = Restorer::new(&settings(budget)).unwrap();
    let layout = PackedLayout::rgb(w, h);
    let det = r.begin(&rgb, layout, 1.0 / 30.0).unwrap();
    let out_layout = PackedLayout::rgb(2 * w, 2 * h);
    let mut out = vec![0u8; 4 * w * h * 3];
    let outcome = r.finish(det, Some((&mut out, &out_layout))).unwrap();
    println!("{outcome:?}, plan {}", r.plan());
    assert!(matches!(outcome, gstgpen::restorer::Outcome::Restored { faces: 1, .. }), "{outcome:?}");
    let tile = r.plan().tile.unwrap();
    assert!(tile > 0 && tile <= 256, "plan {}", r.plan());
}

#[test]
fn bad_upscaling_settings_fail_at_start_with_a_reason() {
    let src = "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=48";
    let x4 = common::shared().join("fixtures/rrdbnet/rrdbnet-x4-tiny.pth");
    let cases = [
        (format!("upscale=2 upscaler-model={}", x4.display()), "x4"),
        (format!("upscale=2 upscaler-model={}", common::gpen_fixture("gpen-256-tiny.pth").display()), "not an RRDBNet"),
        (format!("upscale=2 upscaler-model={} tile-size=48 tile-overlap=32", x2().display()), "twice"),
        ("upscale=2 aligned=true".to_owned(), "aligned faces"),
        ("upscale=2 upscaler-model=/nonexistent/realesrnet_x2.pth".to_owned(), "realesrnet_x2.pth"),
    ];
    for (props, says) in cases {
        let r = run(src, &props);
        let e = r.error.unwrap_or_else(|| panic!("{props}: the pipeline must not start"));
        assert!(e.contains(says), "{props}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

#[test]
fn padded_formats_keep_their_alpha_opaque() {
    let r = run("videotestsrc num-buffers=1 ! video/x-raw,format=RGBA,width=30,height=20", "upscale=2");
    assert!(r.error.is_none(), "{:?}", r.error);
    let f = &r.frames[0];
    assert_eq!(f.len(), 60 * 40 * 4);
    assert!(f.chunks(4).all(|p| p[3] == 255));
}
