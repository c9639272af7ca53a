//! Whole frames against what GPEN's own pipeline (`face_enhancement.py`, `FaceEnhancement.process`)
//! writes for them (`../shared/fixtures/whole-frame`): the same detections, the tiny GPEN-512 and
//! ParseNet fixtures, pasted through the face-parsing mask and through the soft rectangle. Our
//! crops replicate the frame edge, so the `-replicate` outputs are the reference. Where two faces
//! overlap GPEN picks the winner pixel by pixel from nearly equal floats, so the largest
//! differences are not bounded; the mean and the 99.9th percentile are.

mod common;

use gstgpen::detect::Face;
use gstgpen::restorer::{
    ColorMode, DeviceSpec, FaceSettings, LiveSettings, MaskMode, MaskSettings, PackedLayout, Restorer, RestorerSettings,
};

fn restorer(mode: MaskMode) -> Restorer {
    Restorer::new(&RestorerSettings {
        model: Some(common::gpen_fixture("gpen-512-tiny.pth")),
        size: 512,
        device: DeviceSpec::Cpu,
        faces: FaceSettings {
            detector_model: Some(common::detector()),
            mask: MaskSettings {
                mode,
                parse_model: Some(common::shared().join("fixtures/parsenet/parsenet-tiny.pth")),
                ..Default::default()
            },
            // GPEN's own colours: its pipeline colourises black-and-white faces (solvay is
            // exactly grey), which `color=auto` would not.
            live: LiveSettings { color: ColorMode::Restored, ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

/// A test image, decoded as the fixtures' OpenCV decoded it.
fn decode(name: &str) -> (Vec<u8>, usize, usize) {
    common::decode_like_opencv(&common::shared().join("media/images").join(name))
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(common::shared().join("fixtures/whole-frame/MANIFEST.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["cases"].as_array().unwrap().clone()
}

fn faces_of(case: &serde_json::Value) -> Vec<Face> {
    let f = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
    case["detections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["score"].as_f64().unwrap() >= 0.9)
        .map(|d| {
            let b: Vec<f32> = d["box"].as_array().unwrap().iter().map(f).collect();
            let lm: Vec<[f32; 2]> = d["landmarks"].as_array().unwrap().iter().map(|p| [f(&p[0]), f(&p[1])]).collect();
            Face { bbox: [b[0], b[1], b[2], b[3]], score: f(&d["score"]), landmarks: lm.try_into().unwrap() }
        })
        .collect()
}

fn check(mode: MaskMode, output: &str) {
    let mut r = restorer(mode);
    assert_eq!(r.parse_model().is_some(), mode == MaskMode::Parse, "{mode:?}");
    let mut report = Vec::new();
    for case in cases() {
        let name = case["image"].as_str().unwrap();
        let (input, w, h) = decode(name);
        let layout = PackedLayout::rgb(w, h);
        let faces = faces_of(&case);
        assert_eq!(faces.len() as u64, case["faces_at_or_above_0.9"].as_u64().unwrap());
        let d = r.with_faces(&input, layout, faces).unwrap();
        let mut out = input.clone();
        let pasted = r.restore_faces(&d, &mut out, layout).unwrap();
        let png = case["outputs"][output]["png"].as_str().unwrap();
        let (want, ww, wh) = common::decode_image(&common::shared().join("fixtures/whole-frame").join(png));
        assert_eq!((ww, wh), (w, h));
        let diff = common::channel_differences(&out, &want);
        let changed = out.chunks(3).zip(input.chunks(3)).filter(|(a, b)| a != b).count();
        println!(
            "{name} {output}: {} face(s) pasted, {changed} pixels changed (GPEN {}), mean/p99.9 per channel {diff:.3?}",
            pasted.restored, case["outputs"][output]["changed_pixels"]
        );
        report.push((name.to_owned(), diff));
    }
    for (name, diff) in report {
        for (c, (mean, p999)) in diff.iter().enumerate() {
            assert!(*mean <= 0.3 && *p999 <= 3, "{name} {output} channel {c}: mean {mean:.3}, p99.9 {p999}");
        }
    }
}

#[test]
fn the_parsing_mask_composes_as_gpen_does() {
    check(MaskMode::Parse, "parse-replicate");
}

#[test]
fn the_rectangle_composes_as_gpen_does() {
    check(MaskMode::Rectangle, "rect-replicate");
}

#[test]
fn parsing_masks_keep_the_background_and_differ_from_the_rectangle() {
    // The two masks give different frames, and the parsing mask changes fewer pixels (it keeps
    // the background, hat and cloth of the face square).
    let case = &cases()[0];
    let (input, w, h) = decode(case["image"].as_str().unwrap());
    let layout = PackedLayout::rgb(w, h);
    let run = |mode| {
        let mut r = restorer(mode);
        let d = r.with_faces(&input, layout, faces_of(case)).unwrap();
        let mut out = input.clone();
        r.restore_faces(&d, &mut out, layout).unwrap();
        out
    };
    let (parse, rect) = (run(MaskMode::Parse), run(MaskMode::Rectangle));
    let changed = |o: &[u8]| o.chunks(3).zip(input.chunks(3)).filter(|(a, b)| a != b).count();
    assert_ne!(parse, rect);
    assert!(changed(&parse) < changed(&rect), "parse {} rect {}", changed(&parse), changed(&rect));
}

#[test]
fn default_detection_finds_every_face_gpen_restores_on_solvay() {
    // The default settings (detection at native size up to 1920, threshold 0.9) against the
    // faces GPEN's pipeline restores in the fixture.
    let case = cases().into_iter().find(|c| c["image"] == "solvay_conference_1927.png").unwrap();
    let (input, w, h) = decode("solvay_conference_1927.png");
    let layout = PackedLayout::rgb(w, h);
    let r = restorer(MaskMode::Rectangle);
    let found = r.detect(&input, layout).unwrap().faces;
    let want = faces_of(&case);
    let matched = want.iter().filter(|g| found.iter().any(|f| gstgpen::detect::iou(&f.bbox, &g.bbox) > 0.5)).count();
    println!("solvay: default settings find {} faces, {matched} of GPEN's {}", found.len(), want.len());
    assert_eq!(matched, want.len());
}
