//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod motion;

use std::path::PathBuf;

/// Initialises GStreamer and registers the plugin statically, once per test process.
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstgpen::plugin_register_static().expect("register the gpen plugin");
    });
}

/// `../shared` beside the repository root (override with `GST_GPEN_SHARED`).
pub fn shared() -> PathBuf {
    let p = std::env::var_os("GST_GPEN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(p.join("fixtures/gpen/MANIFEST.json").exists(), "../shared is missing at {}", p.display());
    p
}

/// The small RetinaFace detector (MobileNet 0.25, fd1mb) in `../shared/weights`.
pub fn detector() -> PathBuf {
    shared().join("weights/retinaface-mnet025-fd1mb.pth")
}

pub fn gpen_fixture(name: &str) -> PathBuf {
    shared().join("fixtures/gpen").join(name)
}

/// The models listed in `fixtures/gpen/MANIFEST.json`.
pub fn manifest() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(gpen_fixture("MANIFEST.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["models"].as_array().unwrap().clone()
}

/// A scratch directory unique to this test process.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gst-gpen-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Max and mean absolute difference.
pub fn diff(a: &tch::Tensor, b: &tch::Tensor) -> (f64, f64) {
    assert_eq!(a.size(), b.size());
    let d = (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs();
    (d.max().double_value(&[]), d.mean(tch::Kind::Double).double_value(&[]))
}

/// An image decoded to packed RGB: (bytes, width, height). The `image` crate's JPEG decoder
/// agrees with OpenCV's (which made the fixtures) where GStreamer's jpegdec does not: its
/// chroma upsampling differs, which moves marginal detection scores by a few hundredths.
pub fn decode_image(path: &std::path::Path) -> (Vec<u8>, usize, usize) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w as usize, h as usize)
}

/// `1 x 3 x H x W` float tensor with values 0..255 from packed RGB.
pub fn rgb_tensor(rgb: &[u8], w: usize, h: usize) -> tch::Tensor {
    tch::Tensor::from_slice(rgb).reshape([h as i64, w as i64, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(tch::Kind::Float)
}

/// The core's settings for the tiny GPEN-256 fixture on the CPU, faces found by [`detector`]
/// with the `live` settings.
pub fn tiny_settings(live: gstgpen::restorer::LiveSettings) -> gstgpen::restorer::RestorerSettings {
    use gstgpen::restorer::{DeviceSpec, FaceSettings, RestorerSettings};
    RestorerSettings {
        model: Some(gpen_fixture("gpen-256-tiny.pth")),
        size: 256,
        device: DeviceSpec::Cpu,
        faces: FaceSettings { detector_model: Some(detector()), live, ..Default::default() },
        ..Default::default()
    }
}

/// A `gpenfilter` on the CPU with the tiny 256 fixture: restoring whole aligned frames, or
/// finding faces with [`detector`].
pub fn tiny_element(aligned: bool) -> gst::Element {
    let (model, detector) = (gpen_fixture("gpen-256-tiny.pth"), detector());
    let b = gst::ElementFactory::make("gpenfilter").property("model", model.to_str().unwrap()).property_from_str("size", "256");
    let b = b.property("device", "cpu");
    let b = if aligned { b.property("aligned", true) } else { b.property("detector-model", detector.to_str().unwrap()) };
    b.build().unwrap()
}

/// A counter from the element's `stats` structure.
pub fn count(s: &gst::Structure, f: &str) -> u64 {
    s.get::<u64>(f).unwrap_or_else(|_| panic!("no {f} in {s}"))
}

/// Mean and max absolute difference in levels between two byte images of the same length.
pub fn level_diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let sum: u64 = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as u64).sum();
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    (sum as f64 / a.len() as f64, max)
}

/// Packed RGB bytes (`H x W x 3`) from a `1 x 3 x H x W` float tensor of levels, rounded and clamped.
pub fn rgb_bytes(t: &tch::Tensor) -> Vec<u8> {
    let t = t.round().clamp(0.0, 255.0).to_kind(tch::Kind::Uint8).squeeze_dim(0).permute([1, 2, 0]).contiguous();
    Vec::try_from(t.flatten(0, -1)).unwrap()
}

/// Packed RGB as OpenCV reads the file (the fixtures were made with `cv2.imread`): JPEG through
/// libjpeg-turbo, whose chroma upsampling differs from `jpegdec ! videoconvert`; other formats
/// decode the same either way.
pub fn decode_like_opencv(path: &std::path::Path) -> (Vec<u8>, usize, usize) {
    if path.extension().is_some_and(|e| e == "jpg") {
        let img = turbojpeg::decompress(&std::fs::read(path).unwrap(), turbojpeg::PixelFormat::RGB).unwrap();
        let rgb = img.pixels.chunks(img.pitch).flat_map(|row| row[..img.width * 3].to_vec()).collect();
        return (rgb, img.width, img.height);
    }
    decode_image(path)
}

/// Per channel of packed RGB: mean absolute difference and 99.9th percentile, in levels.
pub fn channel_differences(got: &[u8], want: &[u8]) -> Vec<(f64, u8)> {
    (0..3)
        .map(|c| {
            let mut d: Vec<u8> = got.iter().zip(want).skip(c).step_by(3).map(|(a, b)| a.abs_diff(*b)).collect();
            let mean = d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64;
            d.sort_unstable();
            (mean, d[(d.len() as f64 * 0.999) as usize])
        })
        .collect()
}

/// Runs packed RGB `frames` (30 fps timestamps) through `appsrc ! gpenfilter ! appsink`, built
/// by type so that no installed plugins are needed, with the element's `props`; returns the
/// frames out, the element's statistics and the seconds taken. An error on the bus panics.
pub fn run_element(props: &[(&str, &str)], frames: &[Vec<u8>], w: usize, h: usize) -> (Vec<Vec<u8>>, gst::Structure, f64) {
    init();
    let info =
        gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w as u32, h as u32).fps(gst::Fraction::new(30, 1)).build().unwrap();
    let buffers = frames.iter().map(|f| (f.clone(), gst_video::VideoBufferFlags::empty())).collect::<Vec<_>>();
    let (out, stats, secs, errors) = run_buffers(&info.to_caps().unwrap(), props, &buffers);
    if let Some(e) = errors.iter().find(|e| e.starts_with("error")) {
        panic!("{e}");
    }
    (out, stats, secs)
}

/// As [`run_element`], for frames of any `caps`, each with its video buffer flags (fields,
/// field order); returns the errors on the bus instead of panicking.
pub fn run_buffers(
    caps: &gst::Caps,
    props: &[(&str, &str)],
    frames: &[(Vec<u8>, gst_video::VideoBufferFlags)],
) -> (Vec<Vec<u8>>, gst::Structure, f64, Vec<String>) {
    use gst::prelude::*;
    init();
    let src = gst_app::AppSrc::builder().caps(caps).format(gst::Format::Time).build();
    let sink = gst_app::AppSink::builder().build();
    sink.set_property("sync", false);
    let filter = gst::ElementFactory::make("gpenfilter").build().unwrap();
    for (k, v) in props {
        filter.set_property_from_str(k, v);
    }
    let pipeline = gst::Pipeline::new();
    pipeline.add_many([src.upcast_ref(), &filter, sink.upcast_ref()]).unwrap();
    gst::Element::link_many([src.upcast_ref(), &filter, sink.upcast_ref()]).unwrap();
    let t = std::time::Instant::now();
    pipeline.set_state(gst::State::Playing).expect("the pipeline starts");
    let out = std::thread::scope(|s| {
        let pull = s.spawn(|| {
            let mut out = Vec::new();
            while let Ok(sample) = sink.pull_sample() {
                out.push(sample.buffer().unwrap().map_readable().unwrap().as_slice().to_vec());
            }
            out
        });
        for (i, (f, flags)) in frames.iter().enumerate() {
            let mut b = gst::Buffer::from_slice(f.clone());
            let m = b.get_mut().unwrap();
            m.set_pts(gst::ClockTime::from_nseconds(i as u64 * 1_000_000_000 / 30));
            m.set_flags(gst::BufferFlags::from_bits_retain(flags.bits()));
            if src.push_buffer(b).is_err() {
                break;
            }
        }
        let _ = src.end_of_stream();
        pull.join().unwrap()
    });
    let secs = t.elapsed().as_secs_f64();
    let mut errors = Vec::new();
    while let Some(msg) = pipeline.bus().unwrap().pop_filtered(&[gst::MessageType::Error, gst::MessageType::Warning]) {
        match msg.view() {
            gst::MessageView::Error(e) => errors.push(format!("error: {} ({:?})", e.error(), e.debug())),
            gst::MessageView::Warning(w) => errors.push(format!("warning: {} ({:?})", w.error(), w.debug())),
            _ => {}
        }
    }
    let stats = filter.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    (out, stats, secs, errors)
}

/// Plays `p` until end of stream (panics on an error), then stops it.
pub fn run_to_eos(p: &gst::Pipeline) {
    use gst::prelude::*;
    p.set_state(gst::State::Playing).unwrap();
    for msg in p.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    p.set_state(gst::State::Null).unwrap();
}

/// Buffers that reach the `fakesink name=sink` of the pipeline `description`, run to its end.
pub fn count_buffers(description: &str) -> u64 {
    use gst::prelude::*;
    gst::init().unwrap();
    let p = gst::parse::launch(description).unwrap().downcast::<gst::Pipeline>().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = n.clone();
    p.by_name("sink").unwrap().static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        gst::PadProbeReturn::Ok
    });
    run_to_eos(&p);
    n.load(std::sync::atomic::Ordering::SeqCst)
}

/// The pipeline `description` with its `appsrc name=src` and `appsink name=sink`.
pub fn app_pipeline(description: &str) -> (gst::Pipeline, gst_app::AppSrc, gst_app::AppSink) {
    use gst::prelude::*;
    let pipeline = gst::parse::launch(description).unwrap().downcast::<gst::Pipeline>().unwrap();
    let src = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    let sink = pipeline.by_name("sink").unwrap().downcast::<gst_app::AppSink>().unwrap();
    (pipeline, src, sink)
}
