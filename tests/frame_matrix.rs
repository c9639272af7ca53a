//! Frame sizes and formats: every accepted format at tiny, odd and 8K sizes, and rows padded
//! beyond their pixels, come out right with no access outside the frame.
//! (`scripts/valgrind-matrix.sh` runs this matrix under valgrind.)

mod common;

use common::init;
use gst::prelude::*;
use gstgpen::restorer::{FaceSettings, PackedLayout, Restorer, RestorerSettings};

const FORMATS: [&str; 10] = ["RGB", "BGR", "RGBx", "BGRx", "xRGB", "xBGR", "RGBA", "BGRA", "ARGB", "ABGR"];

fn element() -> String {
    format!(
        "gpenfilter name=g size=256 model={} detector-model={} device=cpu",
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        common::detector().display()
    )
}

/// Pushes one frame of `caps` with the given bytes through `gpenfilter`; returns the output.
fn through(caps: &gst::Caps, bytes: Vec<u8>) -> (Vec<u8>, gst::Structure) {
    init();
    let (pipeline, src, sink) =
        common::app_pipeline(&format!("appsrc name=src format=time ! {} ! appsink name=sink sync=false", element()));
    src.set_caps(Some(caps));
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut b = gst::Buffer::from_slice(bytes);
    b.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
    src.push_buffer(b).unwrap();
    src.end_of_stream().unwrap();
    let sample = sink.pull_sample().unwrap_or_else(|_| {
        let msg = pipeline.bus().unwrap().pop_filtered(&[gst::MessageType::Error]);
        panic!("no output for {caps}: {msg:?}")
    });
    let out = sample.buffer().unwrap().map_readable().unwrap().as_slice().to_vec();
    let stats = pipeline.by_name("g").unwrap().property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    (out, stats)
}

/// Deterministic noise, so that every byte (padding included) is distinct from its neighbours.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

#[test]
fn every_format_at_tiny_and_odd_sizes_passes_through_unharmed() {
    init();
    for format in FORMATS {
        for (w, h) in [(1, 1), (2, 2), (3, 5), (17, 9), (333, 251)] {
            let info = gst_video::VideoInfo::builder(format.parse().unwrap(), w, h).build().unwrap();
            let input = noise(info.size(), (w * 1000 + h) as u64);
            let (out, stats) = through(&info.to_caps().unwrap(), input.clone());
            assert_eq!(stats.get::<u64>("frames-out").unwrap(), 1, "{format} {w}x{h}: {stats}");
            // Noise holds no face: the frame, padding bytes included, comes back as it went in.
            assert!(out == input, "{format} {w}x{h}: the frame changed");
        }
    }
}

#[test]
fn an_8k_frame_passes() {
    init();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgbx, 7680, 4320).build().unwrap();
    let input = noise(info.size(), 8);
    let (out, stats) = through(&info.to_caps().unwrap(), input.clone());
    assert_eq!(stats.get::<u64>("frames-out").unwrap(), 1, "{stats}");
    assert!(out == input);
}

#[test]
fn padded_rows_restore_like_packed_ones() {
    init();
    // 333 RGB pixels are 999 bytes; GStreamer pads each row to 1000. The same picture restored
    // through the element (padded) and by the restorer on tightly packed rows must agree, and
    // the padding bytes must come back untouched.
    let (rgb, sw, sh) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let (w, h) = (333usize, 333usize);
    let t = common::rgb_tensor(&rgb, sw, sh).upsample_bilinear2d([h as i64, w as i64], false, None, None);
    let packed = common::rgb_bytes(&t);
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w as u32, h as u32).build().unwrap();
    let stride = info.stride()[0] as usize;
    assert_eq!(stride, 1000);
    let pad = noise(h, 5);
    let mut padded = vec![0u8; info.size()];
    for y in 0..h {
        padded[y * stride..y * stride + w * 3].copy_from_slice(&packed[y * w * 3..(y + 1) * w * 3]);
        padded[y * stride + w * 3] = pad[y];
    }
    let (out, stats) = through(&info.to_caps().unwrap(), padded);
    assert_eq!(stats.get::<u64>("faces-restored").unwrap(), 1, "{stats}");

    let mut restorer = Restorer::new(&RestorerSettings {
        model: Some(common::gpen_fixture("gpen-256-tiny.pth")),
        size: 256,
        device: gstgpen::restorer::DeviceSpec::Cpu,
        faces: FaceSettings { detector_model: Some(common::detector()), ..Default::default() },
        ..Default::default()
    })
    .unwrap();
    let layout = PackedLayout::rgb(w, h);
    let det = restorer.detect(&packed, layout).unwrap();
    let mut expected = packed.clone();
    assert_eq!(restorer.restore_faces(&det, &mut expected, layout).unwrap().restored, 1);
    assert_ne!(expected, packed);
    for y in 0..h {
        assert_eq!(&out[y * stride..y * stride + w * 3], &expected[y * w * 3..(y + 1) * w * 3], "row {y}");
        assert_eq!(out[y * stride + w * 3], pad[y], "padding of row {y}");
    }
}
