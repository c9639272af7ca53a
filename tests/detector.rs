//! RetinaFace against the reference detector's outputs (`../shared/fixtures/retinaface`).

mod common;

use gstgpen::detect::{detect_at_scales, DetectorVariant, Face, RetinaFace};
use tch::{Device, Tensor};

fn weights(name: &str) -> std::path::PathBuf {
    common::shared().join("weights").join(name)
}

#[test]
fn raw_heads_match_on_astronaut() {
    let det = RetinaFace::load(&weights("retinaface-mnet025-fd1mb.pth"), None, Device::Cpu).unwrap();
    assert_eq!(det.variant(), DetectorVariant::Fd1mb);
    let (rgb, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let x = common::rgb_tensor(&rgb, w, h).flip([1]) - Tensor::from_slice(&[104f32, 117., 123.]).reshape([1, 3, 1, 1]);
    let raw = det.forward_raw(&x).unwrap();
    let e: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(common::shared().join("fixtures/retinaface/fd1mb-astronaut-raw.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (name, got, want) in [
        ("loc", raw.loc.shallow_clone(), e["loc"].squeeze_dim(0)),
        ("landms", raw.landms.shallow_clone(), e["landms"].squeeze_dim(0)),
        ("scores", raw.scores.shallow_clone(), e["conf_softmax"].squeeze_dim(0).select(1, 1)),
    ] {
        let (max, _) = common::diff(&got, &want);
        println!("{name}: max abs {max:.2e}");
        assert!(max <= 1e-4, "{name}: {max}");
    }
    let priors: Vec<[f32; 4]> = DetectorVariant::Fd1mb.priors().priors(h as i64, w as i64);
    let flat: Vec<f32> = priors.iter().flatten().copied().collect();
    let (max, _) = common::diff(&Tensor::from_slice(&flat).reshape([-1, 4]), &e["priors"]);
    assert!(max <= 1e-6, "priors: {max}");
}

fn expected_faces(v: &serde_json::Value) -> Vec<Face> {
    let f = |x: &serde_json::Value| x.as_f64().unwrap() as f32;
    v["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|face| {
            let b = face["box"].as_array().unwrap();
            let lm = face["landmarks"].as_array().unwrap();
            Face {
                bbox: [f(&b[0]), f(&b[1]), f(&b[2]), f(&b[3])],
                score: f(&face["score"]),
                landmarks: std::array::from_fn(|k| [f(&lm[k][0]), f(&lm[k][1])]),
            }
        })
        .collect()
}

/// Same faces: each expected face has a found face within 1 px (box and landmarks) and 0.01.
fn assert_same_faces(label: &str, found: &[Face], want: &[Face]) {
    assert_eq!(found.len(), want.len(), "{label}: found {} faces, expected {}", found.len(), want.len());
    for w in want {
        let best = found
            .iter()
            .min_by(|a, b| {
                let d = |f: &Face| (0..4).map(|i| (f.bbox[i] - w.bbox[i]).abs()).fold(0f32, f32::max);
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        let box_err = (0..4).map(|i| (best.bbox[i] - w.bbox[i]).abs()).fold(0f32, f32::max);
        let lm_err = (0..5)
            .flat_map(|k| (0..2).map(move |c| (k, c)))
            .map(|(k, c)| (best.landmarks[k][c] - w.landmarks[k][c]).abs())
            .fold(0f32, f32::max);
        assert!(box_err <= 1.0 && lm_err <= 1.0, "{label}: box off by {box_err}, landmarks by {lm_err}");
        assert!((best.score - w.score).abs() <= 0.01, "{label}: score {} vs {}", best.score, w.score);
    }
}

fn check_fixture(file: &str, weights_file: &str) {
    let det = RetinaFace::load(&weights(weights_file), None, Device::Cpu).unwrap();
    let text = std::fs::read_to_string(common::shared().join("fixtures/retinaface").join(file)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (image, runs) in v["images"].as_object().unwrap() {
        let (rgb, w, h) = common::decode_image(&common::shared().join("media/images").join(image));
        let x = common::rgb_tensor(&rgb, w, h);
        for (mode, run) in runs.as_object().unwrap() {
            let scale = run["scale"].as_f64().unwrap_or(1.0);
            let found = detect_at_scales(&det, &x, &[scale], 0.5).unwrap();
            assert_same_faces(&format!("{file} {image} {mode}"), &found, &expected_faces(run));
        }
    }
}

#[test]
fn fd1mb_detections_match_native_and_long_side_640() {
    check_fixture("fd1mb-detections.json", "retinaface-mnet025-fd1mb.pth");
}

#[test]
fn standard_detections_match() {
    check_fixture("std-detections.json", "retinaface-mnet025-std.pth");
}

#[test]
fn resnet50_detector_loads_and_runs_with_random_weights() {
    // GPEN's own RetinaFace-R50.pth is not available here: same shapes, random values.
    let shapes = RetinaFace::expected_shapes(true);
    assert!(shapes.iter().any(|(n, s)| n == "body.layer4.2.conv3.weight" && s == &vec![2048, 512, 1, 1]));
    assert!(shapes.iter().any(|(n, s)| n == "fpn.output3.0.weight" && s == &vec![256, 2048, 1, 1]));
    tch::manual_seed(1);
    let tensors: Vec<(String, Tensor)> = shapes
        .iter()
        .map(|(n, s)| {
            let t = if n.ends_with("running_var") {
                Tensor::rand(s.as_slice(), (tch::Kind::Float, Device::Cpu)) + 0.5
            } else {
                Tensor::randn(s.as_slice(), (tch::Kind::Float, Device::Cpu)) * 0.05
            };
            (format!("module.{n}"), t)
        })
        .collect();
    let path = common::scratch("r50").join("RetinaFace-R50.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let det = RetinaFace::load(&path, None, Device::Cpu).unwrap();
    assert_eq!(det.variant(), DetectorVariant::Standard);
    // fd1mb's anchors on a ResNet-50 file would find wrong faces: refused, saying what to set.
    let e = RetinaFace::load(&path, Some(DetectorVariant::Fd1mb), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("ResNet-50") && e.contains("detector-variant"), "{e}");
    let (h, w) = (120i64, 200i64);
    let x = Tensor::randn([1, 3, h, w], (tch::Kind::Float, Device::Cpu)) * 50.0;
    let raw = det.forward_raw(&x).unwrap();
    let priors = DetectorVariant::Standard.priors().priors(h, w).len() as i64;
    assert_eq!(raw.loc.size(), [priors, 4]);
    assert_eq!(raw.scores.size(), [priors]);
    assert_eq!(raw.landms.size(), [priors, 10]);
    let s = &raw.scores;
    assert!(s.min().double_value(&[]) >= 0.0 && s.max().double_value(&[]) <= 1.0);
    // A tensor missing is named.
    let broken: Vec<(String, Tensor)> = tensors.into_iter().filter(|(n, _)| !n.ends_with("layer2.1.conv2.weight")).collect();
    let path = common::scratch("r50").join("broken.safetensors");
    Tensor::write_safetensors(&broken, &path).unwrap();
    let e = RetinaFace::load(&path, None, Device::Cpu).unwrap_err();
    assert!(matches!(e, gstgpen::Error::ModelMismatch { network: gstgpen::Network::RetinaFace, .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("does not match the RetinaFace detector (ResNet-50 body)"), "{e}");
    assert!(e.contains("1 missing: body.layer2.1.conv2.weight"), "{e}");
}

#[test]
fn a_forced_variant_that_contradicts_a_known_file_is_refused() {
    for (file, right, wrong) in [
        ("retinaface-mnet025-fd1mb.pth", DetectorVariant::Fd1mb, DetectorVariant::Standard),
        ("retinaface-mnet025-std.pth", DetectorVariant::Standard, DetectorVariant::Fd1mb),
    ] {
        let e = RetinaFace::load(&weights(file), Some(wrong), Device::Cpu).unwrap_err();
        assert!(matches!(e, gstgpen::Error::InvalidSetting { setting: gstgpen::Setting::DetectorVariant, .. }), "{file}: {e:?}");
        let m = e.to_string();
        assert!(m.contains(file) && m.contains("wrong faces") && m.contains("detector-variant"), "what, why and the fix: {m}");
        assert_eq!(RetinaFace::load(&weights(file), Some(right), Device::Cpu).unwrap().variant(), right);
    }
}

#[test]
fn a_bf16_detector_finds_the_faces_fp32_finds() {
    for file in ["retinaface-mnet025-fd1mb.pth", "retinaface-mnet025-std.pth"] {
        let fp32 = RetinaFace::load(&weights(file), None, Device::Cpu).unwrap();
        let bf16 = RetinaFace::load_in(&weights(file), None, Device::Cpu, tch::Kind::BFloat16).unwrap();
        for image in ["astronaut.png", "solvay_conference_1927.png", "two_people.jpg"] {
            let (rgb, w, h) = common::decode_image(&common::shared().join("media/images").join(image));
            let x = common::rgb_tensor(&rgb, w, h);
            let (a, b) = (detect_at_scales(&fp32, &x, &[1.0], 0.9).unwrap(), detect_at_scales(&bf16, &x, &[1.0], 0.9).unwrap());
            assert_eq!(a.len(), b.len(), "{file} {image}");
            for f in &a {
                let best = b.iter().map(|g| gstgpen::detect::iou(&f.bbox, &g.bbox)).fold(0f32, f32::max);
                assert!(best > 0.8, "{file} {image}: a face at {:?} has no bf16 counterpart (IoU {best:.2})", f.bbox);
            }
        }
    }
}
