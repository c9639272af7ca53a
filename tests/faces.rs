//! Whole-frame face restoration: detect, align, restore in a batch, paste back.

mod common;

use common::{detector, init};
use gst::prelude::*;
use gstgpen::restorer::{DeviceSpec, FaceSettings, LiveSettings, PackedLayout, Restorer, RestorerSettings};
use tch::Kind;

fn restorer(alpha: f64) -> Restorer {
    Restorer::new(&RestorerSettings {
        model: Some(common::gpen_fixture("gpen-256-tiny.pth")),
        size: 256,
        device: DeviceSpec::Cpu,
        faces: FaceSettings { detector_model: Some(detector()), live: LiveSettings { alpha, ..Default::default() }, ..Default::default() },
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn solvay_faces_are_restored_and_nothing_else_changes() {
    let (input, w, h) = common::decode_image(&common::shared().join("media/images/solvay_conference_1927.png"));
    let mut r = restorer(1.0);
    let layout = PackedLayout::rgb(w, h);
    let det = r.detect(&input, layout).unwrap();
    let mut out = input.clone();
    let report = r.restore_faces(&det, &mut out, layout).unwrap();
    println!("solvay: {} faces detected, {} restored", det.faces.len(), report.restored);
    assert!(report.restored >= 27, "only {} of 29 faces restored", report.restored);
    // Every pixel outside the pasted masks is bit-identical.
    let (x0, y0, rw, rh) = report.region.unwrap();
    let mask = report.mask.unwrap().squeeze().to_kind(Kind::Float);
    let mask: Vec<f32> = Vec::try_from(mask.flatten(0, -1)).unwrap();
    let mut changed_inside = 0usize;
    for y in 0..h {
        for x in 0..w {
            let inside = (x as i64) >= x0 && (x as i64) < x0 + rw && (y as i64) >= y0 && (y as i64) < y0 + rh;
            let m = if inside { mask[((y as i64 - y0) * rw + (x as i64 - x0)) as usize] } else { 0.0 };
            let i = (y * w + x) * 3;
            if m == 0.0 {
                assert_eq!(&out[i..i + 3], &input[i..i + 3], "pixel ({x}, {y}) outside every mask changed");
            } else if out[i..i + 3] != input[i..i + 3] {
                changed_inside += 1;
            }
        }
    }
    assert!(changed_inside > 29 * 200, "only {changed_inside} pixels changed under the masks");
}

#[test]
fn alpha_zero_gives_back_the_original_faces() {
    let (input, w, h) = common::decode_image(&common::shared().join("media/images/two_people.jpg"));
    let mut r = restorer(0.0);
    let layout = PackedLayout::rgb(w, h);
    let det = r.detect(&input, layout).unwrap();
    assert!(!det.faces.is_empty());
    let mut out = input.clone();
    r.restore_faces(&det, &mut out, layout).unwrap();
    // Warped into the crop and back again: only interpolation error remains.
    let mean = out.iter().zip(&input).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / out.len() as f64;
    println!("alpha=0: mean abs change {mean:.3} levels");
    assert!(mean < 0.5, "{mean}");
    let mut restored = input.clone();
    restorer(1.0).restore_faces(&det, &mut restored, layout).unwrap();
    let changed = restored.iter().zip(&input).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / out.len() as f64;
    assert!(changed > 4.0 * mean.max(0.1), "alpha=1 changed {changed}, alpha=0 {mean}");
}

#[test]
fn a_face_cut_by_the_frame_edge_is_restored_without_a_black_band() {
    use gstgpen::align::{align, crop_faces, Border};
    let (input, w, h) = common::decode_image(&common::shared().join("media/images/obama_partial_face.jpg"));
    let mut r = restorer(1.0);
    let layout = PackedLayout::rgb(w, h);
    let det = r.detect(&input, layout).unwrap();
    assert_eq!(det.faces.len(), 1);
    assert!(det.faces[0].bbox[0] < 0.0, "the face should extend past the left edge");
    let mut out = input.clone();
    assert_eq!(r.restore_faces(&det, &mut out, layout).unwrap().restored, 1);
    // The crop replicates the edge where GPEN's is black.
    let frame = common::rgb_tensor(&input, w, h);
    let a = align(&det.faces[0].landmarks, 256).unwrap();
    let black =
        |b| crop_faces(&frame, &[a], 256, b).unwrap().sum_dim_intlist(1, false, Kind::Float).eq(0.0).sum(Kind::Int64).int64_value(&[]);
    let (zeros, replicate) = (black(Border::Zeros), black(Border::Replicate));
    println!("black crop pixels: {zeros} with GPEN's border, {replicate} replicated");
    assert!(zeros > 1000 && replicate * 100 < zeros);
}

/// A buffer seen on a pad: its PTS and a hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    pts: Option<gst::ClockTime>,
    hash: u64,
}

/// Runs `description` (with a gpenfilter named `g`) to EOS; returns the stats and the buffers
/// seen on the filter's sink and source pads.
fn run_counting(description: &str) -> (gst::Structure, Vec<Seen>, Vec<Seen>) {
    init();
    let pipeline = gst::parse::launch(description).unwrap().downcast::<gst::Pipeline>().unwrap();
    let g = pipeline.by_name("g").unwrap();
    let seen = |pad: &str| {
        let v = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let v2 = v.clone();
        g.static_pad(pad).unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer() {
                let hash = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    b.map_readable().unwrap().as_slice().hash(&mut h);
                    h.finish()
                };
                v2.lock().unwrap().push(Seen { pts: b.pts(), hash });
            }
            gst::PadProbeReturn::Ok
        });
        v
    };
    let (ins, outs) = (seen("sink"), seen("src"));
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(600)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    let stats = g.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    let ins = ins.lock().unwrap().clone();
    let outs = outs.lock().unwrap().clone();
    (stats, ins, outs)
}

#[test]
fn element_restores_solvay_and_reports_it() {
    let (stats, ins, outs) = run_counting(&format!(
        "filesrc location={} ! pngdec ! videoconvert ! gpenfilter name=g size=256 model={} detector-model={} device=cpu \
         ! videoconvert ! fakesink",
        common::shared().join("media/images/solvay_conference_1927.png").display(),
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        detector().display()
    ));
    println!("{stats}");
    assert!(stats.get::<u64>("faces-restored").unwrap() >= 27, "{stats}");
    assert_eq!(ins.len(), 1);
    assert_eq!(outs.len(), 1);
}

#[test]
fn hamilton_clip_keeps_every_frame_and_restores_faces() {
    let (stats, ins, outs) = run_counting(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! gpenfilter name=g size=256 model={} detector-model={} \
         device=cpu ! videoconvert ! fakesink sync=false",
        common::shared().join("media/videos/short_hamilton_clip.mp4").display(),
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        detector().display()
    ));
    println!("{stats}");
    assert_eq!(ins.len(), 275);
    let pts = |v: &[Seen]| v.iter().map(|s| s.pts).collect::<Vec<_>>();
    assert_eq!(pts(&ins), pts(&outs), "timestamps out differ from timestamps in");
    assert_eq!(stats.get::<u64>("frames-in").unwrap(), 275);
    let restored = stats.get::<u64>("faces-restored").unwrap();
    let passed = stats.get::<u64>("frames-without-faces").unwrap();
    assert!(restored >= 200, "{stats}");
    assert!(passed < 275, "{stats}");
}

#[test]
fn frames_without_faces_pass_through_untouched_and_uncopied() {
    init();
    let element = common::tiny_element(false);
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgbx, 320, 240).build().unwrap();
    h.set_src_caps(info.to_caps().unwrap());
    let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
    buffer.get_mut().unwrap().map_writable().unwrap().iter_mut().enumerate().for_each(|(i, v)| *v = (i % 7 * 30) as u8);
    buffer.get_mut().unwrap().set_pts(gst::ClockTime::from_seconds(1));
    let kept = buffer.clone(); // a second reference: writing would force a copy
    let out = h.push_and_pull(buffer).unwrap();
    assert_eq!(out.as_ptr(), kept.as_ptr(), "the buffer was copied");
    assert_eq!(&out.map_readable().unwrap()[..], &kept.map_readable().unwrap()[..]);
    let stats = element.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames-without-faces").unwrap(), 1);
}

#[test]
fn a_face_that_fills_the_frame_is_found_by_the_reduced_pass() {
    // grace_hopper scaled x3 (1536 px, detected at its native size by default): the face is about 520 px
    // there, beyond the small anchors, which see only its parts.
    let (small, w, h) = common::decode_image(&common::shared().join("media/images/grace_hopper_512x512.jpg"));
    let big = common::rgb_tensor(&small, w, h).upsample_bilinear2d([3 * h as i64, 3 * w as i64], false, None, None);
    let bytes = common::rgb_bytes(&big);
    let layout = PackedLayout::rgb(3 * w, 3 * h);
    let r = restorer(1.0);
    let faces = r.detect(&bytes, layout).unwrap().faces;
    // The box found at 512 px (fd1mb fixture), scaled x3: exactly one face on it (no fragments
    // of it), within 5 % of the face size. (The flag's stars give a false positive elsewhere.)
    let want = [181.49 * 3.0, 95.21 * 3.0, 354.94 * 3.0, 312.51 * 3.0];
    let on_face: Vec<_> = faces.iter().filter(|f| gstgpen::detect::iou(&f.bbox, &want) > 0.0).collect();
    assert_eq!(on_face.len(), 1, "{faces:?}");
    for (g, w) in on_face[0].bbox.iter().zip(want) {
        assert!((g - w).abs() < 0.05 * 520.0, "{:?} vs {want:?}", on_face[0].bbox);
    }
}

#[test]
fn odd_frame_sizes_pass_without_harm() {
    for (w, h) in [(1, 1), (3, 2), (4096, 2160)] {
        let (stats, ins, outs) = run_counting(&format!(
            "videotestsrc num-buffers=2 pattern=ball ! video/x-raw,format=RGBx,width={w},height={h} ! gpenfilter name=g \
             size=256 model={} detector-model={} device=cpu ! fakesink",
            common::gpen_fixture("gpen-256-tiny.pth").display(),
            detector().display()
        ));
        assert_eq!((ins.len(), outs.len()), (2, 2), "{w}x{h}");
        assert_eq!(stats.get::<u64>("frames-in").unwrap(), 2, "{w}x{h}: {stats}");
        // A ball on black holds no face: both frames come out bit for bit as they went in (the
        // x bytes included), with their timestamps; nothing is written out of place.
        assert_eq!(stats.get::<u64>("frames-without-faces").unwrap(), 2, "{w}x{h}: {stats}");
        assert_eq!(ins, outs, "{w}x{h}: a frame changed");
    }
}

#[test]
fn more_faces_than_max_faces_restores_the_best_ones() {
    let (stats, _, outs) = run_counting(&format!(
        "filesrc location={} ! pngdec ! videoconvert ! gpenfilter name=g size=256 model={} detector-model={} device=cpu \
         max-faces=5 ! fakesink",
        common::shared().join("media/images/solvay_conference_1927.png").display(),
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        detector().display()
    ));
    assert_eq!(outs.len(), 1);
    assert_eq!(stats.get::<u64>("faces-restored").unwrap(), 5, "{stats}");
}

#[test]
fn frames_restored_one_by_one_carry_their_tracks() {
    // The stage-by-stage API (`begin` then `restore_faces`, as benchmarks use it) hands each
    // track's state to the next frame: the blending and the flicker meter see frame pairs.
    let (input, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let mut r = restorer(1.0);
    let layout = PackedLayout::rgb(w, h);
    for _ in 0..3 {
        let d = r.begin(&input, layout, 1.0 / 25.0).unwrap();
        assert_eq!(d.faces.len(), 1);
        let mut out = input.clone();
        assert_eq!(r.restore_faces(&d, &mut out, layout).unwrap().restored, 1);
    }
    let f = r.flicker().unwrap();
    assert_eq!(f.pairs, 2, "{f:?}");
    assert_eq!(r.faces_kept(), 1);
}
