//! Faces as GStreamer metadata: the region-of-interest metas gpenfilter attaches (out), the
//! faces it takes from them (`faces-from`, in), and `restore=false`.

mod common;

use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_video::VideoRegionOfInterestMeta;

/// One face as a `gpenfilter-faces` message or a meta describes it.
#[derive(Debug, Clone, PartialEq)]
struct Described {
    id: u64,
    score: f64,
    bbox: Vec<f64>,
    landmarks: Vec<f64>,
}

fn doubles(s: &gst::StructureRef, field: &str) -> Vec<f64> {
    s.get::<gst::Array>(field).unwrap().iter().map(|v| v.get::<f64>().unwrap()).collect()
}

fn from_message(s: &gst::StructureRef) -> Vec<Described> {
    s.get::<gst::Array>("faces")
        .unwrap()
        .iter()
        .map(|v| {
            let f = v.get::<gst::Structure>().unwrap();
            Described {
                id: f.get("id").unwrap(),
                score: f.get("score").unwrap(),
                bbox: doubles(&f, "box"),
                landmarks: doubles(&f, "landmarks"),
            }
        })
        .collect()
}

/// A meta's rectangle: x, y, width, height.
type Rect = (u32, u32, u32, u32);

/// A buffer's `face` metas written by a gpenfilter: what they describe, their rectangles and
/// `restored` flags.
fn ours(b: &gst::BufferRef) -> Vec<(Described, Rect, bool)> {
    b.iter_meta::<VideoRegionOfInterestMeta>()
        .filter_map(|m| {
            let p = m.param("gpenfilter")?;
            assert_eq!(m.roi_type(), "face");
            let id: u64 = p.get("track-id").unwrap();
            assert_eq!(m.id() as u64, id);
            let d = Described { id, score: p.get("score").unwrap(), bbox: doubles(p, "box"), landmarks: doubles(p, "landmarks") };
            Some((d, m.rect(), p.get::<bool>("restored").unwrap()))
        })
        .collect()
}

/// Region metas that no gpenfilter wrote: type and rectangle.
fn theirs(b: &gst::BufferRef) -> Vec<(String, Rect)> {
    b.iter_meta::<VideoRegionOfInterestMeta>()
        .filter(|m| m.param("gpenfilter").is_none())
        .map(|m| (m.roi_type().to_string(), m.rect()))
        .collect()
}

/// What came out of a pipeline: the buffers at its sink, the faces messages of each element
/// (by name), and each element's statistics.
struct Run {
    out: Vec<gst::Buffer>,
    faces: std::collections::HashMap<String, Vec<Vec<Described>>>,
    stats: std::collections::HashMap<String, gst::Structure>,
}

/// The tiny model, the small detector, on the CPU.
fn props() -> String {
    format!(
        "size=256 device=cpu model={} detector-model={}",
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        common::detector().display()
    )
}

/// Pushes `frames` through `appsrc ! {middle} ! appsink` (RGB `w` x `h`, 30 fps); `middle` names
/// its gpenfilters, whose statistics are collected. An error on the bus panics.
fn run(middle: &str, frames: Vec<gst::Buffer>, (w, h): (usize, usize), names: &[&str]) -> Run {
    common::init();
    let (pipeline, src, sink) = common::app_pipeline(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width={w},height={h},framerate=30/1 ! {middle} ! appsink name=sink sync=false"
    ));
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                o.lock().unwrap().push(sample.buffer_owned().unwrap());
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    for (i, mut b) in frames.into_iter().enumerate() {
        b.make_mut().set_pts(gst::ClockTime::from_nseconds(i as u64 * 1_000_000_000 / 30));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let mut faces: std::collections::HashMap<String, Vec<Vec<Described>>> = Default::default();
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(600)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "gpenfilter-faces") {
                    faces.entry(msg.src().unwrap().name().to_string()).or_default().push(from_message(s));
                }
            }
            _ => {}
        }
    }
    let stats = names.iter().map(|n| (n.to_string(), pipeline.by_name(n).unwrap().property::<gst::Structure>("stats"))).collect();
    pipeline.set_state(gst::State::Null).unwrap();
    let out = out.lock().unwrap().clone();
    Run { out, faces, stats }
}

/// The two-people photograph as RGB (1124 x 661), and `n` frames of it.
fn two_people(n: usize) -> (Vec<u8>, (usize, usize), Vec<gst::Buffer>) {
    common::init();
    let (full, w, h) = common::decode_image(&common::shared().join("media/images/two_people.jpg"));
    // Rows of RGB frames are padded to 4 bytes: a width that is a multiple of 4 needs none.
    let w4 = w / 4 * 4;
    let rgb: Vec<u8> = full.chunks(3 * w).flat_map(|row| row[..3 * w4].to_vec()).collect();
    let w = w4;
    let frames = (0..n).map(|_| gst::Buffer::from_slice(rgb.clone())).collect();
    (rgb, (w, h), frames)
}

fn count(r: &Run, name: &str, field: &str) -> u64 {
    common::count(&r.stats[name], field)
}

#[test]
fn each_face_gets_a_meta_equal_to_its_message() {
    let (rgb, size, frames) = two_people(3);
    let r = run(&format!("gpenfilter name=g post-faces=true {}", props()), frames, size, &["g"]);
    let messages = &r.faces["g"];
    assert_eq!((r.out.len(), messages.len()), (3, 3));
    for (b, message) in r.out.iter().zip(messages) {
        let metas = ours(b);
        assert_eq!(message.len(), 2, "two people");
        assert_eq!(metas.iter().map(|m| m.0.clone()).collect::<Vec<_>>(), *message, "metas and message differ");
        for (d, rect, restored) in &metas {
            assert!(*restored);
            // The rectangle is the box rounded outwards, within the frame.
            let (x1, y1) = (d.bbox[2].ceil().min(size.0 as f64) as u32, d.bbox[3].ceil().min(size.1 as f64) as u32);
            let (x0, y0) = (d.bbox[0].floor().max(0.0) as u32, d.bbox[1].floor().max(0.0) as u32);
            assert_eq!(*rect, (x0, y0, x1 - x0, y1 - y0));
        }
        assert!(theirs(b).is_empty());
    }
    assert_ne!(r.out[0].map_readable().unwrap().as_slice(), &rgb[..], "the faces were restored");
    assert_eq!(count(&r, "g", "faces-restored"), 6);

    // face-metas=false: the same frames, without metas.
    let (_, size, frames) = two_people(1);
    let r = run(&format!("gpenfilter name=g face-metas=false {}", props()), frames, size, &["g"]);
    assert_eq!(count(&r, "g", "faces-restored"), 2);
    assert_eq!(r.out[0].iter_meta::<VideoRegionOfInterestMeta>().count(), 0);
}

#[test]
fn a_second_restorer_takes_the_first_ones_faces_without_detecting() {
    let (_, size, frames) = two_people(3);
    let r = run(
        &format!("gpenfilter name=a post-faces=true {p} ! gpenfilter name=b faces-from=upstream post-faces=true {p}", p = props()),
        frames,
        size,
        &["a", "b"],
    );
    assert_eq!(count(&r, "a", "faces-restored"), 6, "{:?}", r.stats["a"]);
    assert_eq!(count(&r, "b", "detector-runs"), 0);
    assert_eq!((count(&r, "b", "faces-from-metas"), count(&r, "b", "faces-restored")), (6, 6), "{:?}", r.stats["b"]);
    // The same faces, at the same landmarks, on the same tracks.
    assert_eq!(r.faces["a"], r.faces["b"]);
    for (b, faces) in r.out.iter().zip(&r.faces["b"]) {
        // One meta per face: the first element's were replaced, not doubled.
        assert_eq!(ours(b).into_iter().map(|m| m.0).collect::<Vec<_>>(), *faces);
    }
}

/// Boxes around the two faces of the photograph, cut as another detector might (tighter than
/// RetinaFace's, no landmarks), and one box on the wall where there is no face.
fn foreign_boxes(b: &mut gst::BufferRef, faces: &[Described]) {
    for f in faces {
        let (x0, y0, x1, y1) = (f.bbox[0], f.bbox[1], f.bbox[2], f.bbox[3]);
        let (mx, my) = ((x1 - x0) * 0.1, (y1 - y0) * 0.1);
        let rect = ((x0 + mx) as u32, (y0 + my) as u32, (x1 - x0 - 2.0 * mx) as u32, (y1 - y0 - 2.0 * my) as u32);
        VideoRegionOfInterestMeta::add(b, "face", rect);
    }
    VideoRegionOfInterestMeta::add(b, "face", (5, 5, 60, 60));
}

#[test]
fn boxes_without_landmarks_get_them_from_the_detector_inside() {
    // Where the detector puts the faces on the whole frame.
    let (_, size, frames) = two_people(1);
    let reference = run(&format!("gpenfilter name=g post-faces=true restore=false {}", props()), frames, size, &["g"]);
    let want = reference.faces["g"][0].clone();
    assert_eq!(want.len(), 2);

    let (_, size, mut frames) = two_people(2);
    for f in &mut frames {
        foreign_boxes(f.make_mut(), &want);
    }
    let r = run(&format!("gpenfilter name=g faces-from=upstream post-faces=true {}", props()), frames, size, &["g"]);
    assert_eq!(count(&r, "g", "detector-runs"), 0);
    assert_eq!((count(&r, "g", "faces-from-metas"), count(&r, "g", "metas-skipped")), (6, 2), "the box on the wall is skipped");
    assert_eq!(count(&r, "g", "faces-restored"), 4);
    for (frame, out) in r.faces["g"].iter().zip(&r.out) {
        assert_eq!(frame.len(), 2);
        for (got, want) in frame.iter().zip(&want) {
            // Found in a crop at another scale: within 4 % of the face's width of the whole-frame
            // detection.
            let tolerance = 0.04 * (want.bbox[2] - want.bbox[0]);
            let worst = got.landmarks.iter().zip(&want.landmarks).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            println!("face found in its box: landmarks within {worst:.2} px of the whole-frame detection (tolerance {tolerance:.2})");
            assert!(worst <= tolerance, "landmarks {:?} against {:?} ({worst:.2} px)", got.landmarks, want.landmarks);
        }
        // The foreign boxes stay beside ours.
        assert_eq!((theirs(out).len(), ours(out).len()), (3, 2));
    }

    // faces-from=both: the detector's faces and the boxes merged, one face each.
    let (_, size, mut frames) = two_people(1);
    foreign_boxes(frames[0].make_mut(), &want[..1]);
    let r = run(&format!("gpenfilter name=g faces-from=both post-faces=true {}", props()), frames, size, &["g"]);
    assert_eq!((count(&r, "g", "detector-runs"), count(&r, "g", "metas-skipped")), (1, 1));
    assert_eq!(r.faces["g"][0].len(), 2, "{:?}", r.faces["g"]);
}

#[test]
fn restore_false_passes_frames_through_bit_identical_and_uncopied() {
    common::init();
    let element = common::tiny_element(false);
    element.set_property("restore", false);
    element.set_property("post-faces", true);
    let (rgb, (w, h), _) = two_people(0);
    let mut hn = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w as u32, h as u32).build().unwrap();
    hn.set_src_caps(info.to_caps().unwrap());
    // Allocated memory, which a new buffer header can share (wrapped Rust memory cannot be).
    let mut buffer = gst::Buffer::with_size(rgb.len()).unwrap();
    buffer.make_mut().copy_from_slice(0, &rgb).unwrap();
    buffer.make_mut().set_pts(gst::ClockTime::ZERO);
    let kept = buffer.clone(); // a second reference: writing the pixels would need a copy
    let out = hn.push_and_pull(buffer).unwrap();
    let (a, b) = (out.map_readable().unwrap(), kept.map_readable().unwrap());
    assert_eq!(a.as_ptr(), b.as_ptr(), "the pixels were copied");
    assert_eq!(a.as_slice(), &rgb[..]);
    let metas = ours(&out);
    assert_eq!(metas.len(), 2);
    assert!(metas.iter().all(|m| !m.2), "restored=false on each meta");
    assert_eq!(kept.iter_meta::<VideoRegionOfInterestMeta>().count(), 0, "the input buffer was written");
    let stats = element.property::<gst::Structure>("stats");
    assert_eq!((common::count(&stats, "faces-detected"), common::count(&stats, "faces-restored")), (2, 0), "{stats}");
}

#[test]
fn upscaled_output_scales_the_boxes() {
    let (_, size, mut frames) = two_people(1);
    VideoRegionOfInterestMeta::add(frames[0].make_mut(), "licence-plate", (100, 50, 20, 10));
    let r = run(&format!("gpenfilter name=g upscale=2 post-faces=true {}", props()), frames, size, &["g"]);
    let message = &r.faces["g"][0];
    assert_eq!(message.len(), 2);
    let metas = ours(&r.out[0]);
    assert_eq!(metas.len(), 2);
    let up = |v: &f64| ((*v as f32 + 0.5) * 2.0 - 0.5) as f64;
    for ((d, rect, restored), m) in metas.iter().zip(message) {
        assert!(restored);
        assert_eq!(d.bbox, m.bbox.iter().map(up).collect::<Vec<_>>());
        assert_eq!(d.landmarks, m.landmarks.iter().map(up).collect::<Vec<_>>());
        assert!(rect.0 as f64 >= 2.0 * m.bbox[0] - 1.0 && (rect.0 + rect.2) as f64 >= 2.0 * m.bbox[2].min(size.0 as f64), "{rect:?} {m:?}");
    }
    assert_eq!(theirs(&r.out[0]), [("licence-plate".to_string(), (200, 100, 40, 20))]);
}

#[test]
fn faces_found_on_a_small_frame_are_restored_on_a_larger_one() {
    // videoscale scales the boxes but (GStreamer 1.22) drops their parameters: the second
    // element finds the landmarks inside the scaled boxes.
    let (_, size, frames) = two_people(2);
    let half = (size.0 / 2, size.1 / 2 + 1);
    let r = run(
        &format!(
            "videoscale ! video/x-raw,width={},height={} ! gpenfilter name=a restore=false {p} ! videoscale \
             ! video/x-raw,width={},height={} ! gpenfilter name=b faces-from=upstream post-faces=true {p}",
            half.0,
            half.1,
            size.0,
            size.1,
            p = props()
        ),
        frames,
        size,
        &["a", "b"],
    );
    assert_eq!(count(&r, "a", "faces-detected"), 4);
    assert_eq!(count(&r, "b", "detector-runs"), 0);
    assert_eq!((count(&r, "b", "faces-from-metas"), count(&r, "b", "metas-skipped"), count(&r, "b", "faces-restored")), (4, 0, 4));
    assert_eq!(ours(&r.out[1]).len(), 2);
    // The landmarks found in each box lie in its face.
    for f in r.faces["b"].iter().flatten() {
        let inside = f.landmarks.chunks(2).all(|p| p[0] > f.bbox[0] && p[0] < f.bbox[2] && p[1] > f.bbox[1] && p[1] < f.bbox[3]);
        assert!(inside, "{f:?}");
    }
}
