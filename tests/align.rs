//! Alignment against GPEN's own code (`../shared/fixtures/align`).

mod common;

use gstgpen::align::{align, crop_faces, soft_mask, template, Border};
use tch::{Device, Kind, Tensor};

fn fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(common::shared().join("fixtures/align/alignment.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn templates_match_for_every_size() {
    let v = fixture();
    for size in [256, 512, 1024, 2048] {
        let want = v["template"][size.to_string()].as_array().unwrap();
        for (k, p) in template(size).iter().enumerate() {
            for c in 0..2 {
                let w = want[k][c].as_f64().unwrap();
                assert!((p[c] - w).abs() < 1e-6, "size {size} point {k}: {} vs {w}", p[c]);
            }
        }
    }
}

#[test]
fn transforms_and_crops_match_gpen() {
    let v = fixture();
    for case in v["cases"].as_array().unwrap() {
        let label = format!("{} face {} size {}", case["image"], case["face"], case["size"]);
        let size = case["size"].as_i64().unwrap();
        let lm: [[f32; 2]; 5] =
            std::array::from_fn(|k| [case["landmarks"][k][0].as_f64().unwrap() as f32, case["landmarks"][k][1].as_f64().unwrap() as f32]);
        let a = align(&lm, size).unwrap();
        for (name, got) in [("tfm", a.tfm.matrix()), ("tfm_inv", a.tfm_inv.matrix())] {
            for r in 0..2 {
                for c in 0..3 {
                    let w = case[name][r][c].as_f64().unwrap();
                    assert!((got[r][c] - w).abs() <= 1e-3, "{label}: {name}[{r}][{c}] {} vs {w}", got[r][c]);
                }
            }
        }
        let (rgb, w, h) = common::decode_image(&common::shared().join("media/images").join(case["image"].as_str().unwrap()));
        let frame = common::rgb_tensor(&rgb, w, h);
        let crop = crop_faces(&frame, &[a], size, Border::Zeros).unwrap();
        let (want, cw, ch) = common::decode_image(&common::shared().join("fixtures/align").join(case["crop_png"].as_str().unwrap()));
        assert_eq!((cw, ch), (size as usize, size as usize));
        let (max, mean) = common::diff(&crop.round(), &common::rgb_tensor(&want, cw, ch));
        println!("{label}: crop mean abs {mean:.3} levels, max {max}");
        assert!(mean <= 1.0, "{label}: crop mean abs {mean}");
    }
}

#[test]
fn soft_mask_matches_gpen() {
    let want: Vec<(String, Tensor)> = Tensor::read_safetensors(common::shared().join("fixtures/align/soft-mask-512.safetensors")).unwrap();
    let want = &want[0].1;
    let got = soft_mask(512, Device::Cpu).unwrap().squeeze();
    let (max, mean) = common::diff(&got, want);
    println!("soft mask: max abs {max:.2e}, mean abs {mean:.2e}");
    assert!(max <= 2e-3, "{max}");
    let small = soft_mask(256, Device::Cpu).unwrap();
    assert_eq!(small.size(), [1, 1, 256, 256]);
    assert_eq!(small.kind(), Kind::Float);
}
