//! ParseNet against GPEN's own (`../shared/fixtures/parsenet`, made by `face_parse/parse_model.py`
//! on the CPU in fp32): logits, image head and the 0/255 mask; half precision; and the files it
//! must refuse, each named with its problem.

mod common;

use std::path::PathBuf;

use gstgpen::checkpoint::CheckpointError;
use gstgpen::parse::{ParseConfig, ParseNet};
use gstgpen::{Error, Network};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    common::shared().join("fixtures/parsenet").join(name)
}

/// `fixtures/gpen/gpen-512-tiny.output0.png` as `FaceParse.img2tensor` makes it: RGB,
/// `v / 255 * 2 - 1` (in doubles, as numpy does it, then fp32).
fn input() -> Tensor {
    let (rgb, w, h) = common::decode_image(&common::gpen_fixture("gpen-512-tiny.output0.png"));
    let x = common::rgb_tensor(&rgb, w, h).to_kind(Kind::Double);
    (x / 255.0 * 2.0 - 1.0).to_kind(Kind::Float)
}

fn expected(name: &str) -> Tensor {
    let tensors = Tensor::read_safetensors(fixture("parsenet-tiny.expected.safetensors")).unwrap();
    tensors.into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
}

/// Every 4th row and column.
fn s4(t: &Tensor) -> Tensor {
    t.slice(2, 0, None::<i64>, 4).slice(3, 0, None::<i64>, 4)
}

/// GPEN's mask values: background (0), hat (14) and cloth (18) -> 0, every other class -> 255.
fn mask_of(logits: &Tensor) -> Tensor {
    let class = logits.argmax(1, false);
    let dropped = class.eq(0).logical_or(&class.eq(14)).logical_or(&class.eq(18));
    dropped.logical_not().to_kind(Kind::Uint8) * 255
}

/// The fixture's 0/255 mask, `1 x 512 x 512`.
fn fixture_mask() -> Tensor {
    let img = image::open(fixture("parsenet-tiny.mask0.png")).unwrap().to_luma8();
    let (w, h) = img.dimensions();
    Tensor::from_slice(&img.into_raw()).reshape([1, h as i64, w as i64])
}

/// Pixels where the best two logits are within `eps` (the argmax there is a coin toss).
fn ties(logits: &Tensor, eps: f64) -> Tensor {
    gaps(logits).le(eps)
}

/// The gap between the best two logits of each pixel.
fn gaps(logits: &Tensor) -> Tensor {
    let (top, _) = logits.topk(2, 1, true, true);
    top.select(1, 0) - top.select(1, 1)
}

fn count(t: &Tensor) -> i64 {
    t.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[])
}

#[test]
fn parity_with_gpen_in_fp32() {
    let net = ParseNet::load(&fixture("parsenet-tiny.pth"), Device::Cpu, Kind::Float).unwrap();
    let cfg = net.config();
    assert_eq!((cfg.base_ch, cfg.ch_range, cfg.res_depth, cfg.parsing_ch), (8, [8, 32], 3, 19));
    let (logits, img) = net.forward_both(&input()).unwrap();
    assert_eq!(logits.size(), [1, 19, 512, 512]);
    let (max, mean) = common::diff(&s4(&logits), &expected("out_mask_s4"));
    let (img_max, img_mean) = common::diff(&s4(&img), &expected("out_img_s4"));
    println!("fp32 logits: max {max:.3e}, mean {mean:.3e}; image head: max {img_max:.3e}, mean {img_mean:.3e}");
    assert!(max < 1e-4, "logits differ by up to {max}");
    assert!(img_max < 1e-4, "image head differs by up to {img_max}");
    // `forward` is the mask head of `forward_both`.
    assert!(net.forward(&input()).unwrap().equal(&logits));

    let (mask, want) = (mask_of(&logits), fixture_mask());
    let tied = ties(&logits, 1e-4);
    let differ = mask.ne_tensor(&want);
    let (n_tied, n_differ) = (count(&tied), count(&differ));
    let untied_differ = count(&differ.logical_and(&tied.logical_not()));
    println!(
        "fp32 mask: {n_differ} of {} pixels differ, {n_tied} tied within 1e-4, {untied_differ} differ untied; {:.1} % face",
        want.numel(),
        100.0 * count(&want.eq(255)) as f64 / want.numel() as f64
    );
    let widest = gaps(&logits).masked_select(&differ).max().double_value(&[]);
    println!("fp32 mask: the differing pixels' best two classes are at most {widest:.1e} apart");
    assert_eq!(untied_differ, 0, "{untied_differ} pixels differ where the classes do not tie");
}

/// bf16 on the CPU over the whole face, fp16 on a 128 x 128 crop (libtorch's CPU fp16
/// convolutions take 16 s for the whole face on two cores): weights folded in fp32 and rounded
/// once, logits and mask against fp32.
///
/// The fixture's random logits all lie within 0.04 of one another (the median gap between the
/// best two classes is 1.9e-3, the 10th percentile 2.9e-4), so bf16's rounding (about 6e-4 on
/// average here) flips about a tenth of its mask: no mask bound of 99 % can hold for bf16 on
/// it. What must hold: the masks agree wherever fp32's best two classes are further apart than
/// twice the largest logit error, and the errors stay at the format's rounding.
#[test]
fn half_precision_on_the_cpu() {
    let path = fixture("parsenet-tiny.pth");
    let fp32 = ParseNet::load(&path, Device::Cpu, Kind::Float).unwrap();
    let whole = input();
    let crop = whole.narrow(2, 192, 128).narrow(3, 192, 128);
    for (kind, x, bounds) in [(Kind::BFloat16, &whole, (1e-2, 2e-3, 0.85)), (Kind::Half, &crop, (1e-3, 2e-4, 0.97))] {
        let reference = fp32.forward(x).unwrap();
        let net = ParseNet::load(&path, Device::Cpu, kind).unwrap();
        assert_eq!(net.kind(), kind);
        let start = std::time::Instant::now();
        let logits = net.forward(x).unwrap();
        let took = start.elapsed();
        assert_eq!(logits.kind(), Kind::Float);
        let (max, mean) = common::diff(&logits, &reference);
        let differ = mask_of(&logits).ne_tensor(&mask_of(&reference));
        let agree = 1.0 - count(&differ) as f64 / differ.numel() as f64;
        let clear = gaps(&reference).gt(2.0 * max);
        let clear_differ = count(&differ.logical_and(&clear));
        println!(
            "{kind:?} on {:?}: logits vs fp32 max {max:.3e}, mean {mean:.3e}; mask agreement {:.3} % ({clear_differ} differ of {} clear pixels); {took:.2?}",
            &x.size()[2..],
            100.0 * agree,
            count(&clear)
        );
        if kind == Kind::BFloat16 {
            let fixture_agree = 1.0 - count(&mask_of(&logits).ne_tensor(&fixture_mask())) as f64 / differ.numel() as f64;
            println!("{kind:?}: mask agreement with parsenet-tiny.mask0.png {:.3} %", 100.0 * fixture_agree);
        }
        assert_eq!(clear_differ, 0, "{kind:?}");
        assert!(max < bounds.0 && mean < bounds.1, "{kind:?}: logit error max {max}, mean {mean}");
        assert!(agree >= bounds.2, "{kind:?}: mask agreement {agree}");
    }
}

#[test]
fn config_is_read_from_the_fixture_shapes() {
    let sd = gstgpen::checkpoint::load(&fixture("parsenet-tiny.pth"), None).unwrap();
    assert_eq!(sd.len(), 154);
    let cfg = ParseConfig::from_state_dict(&sd).unwrap();
    let want = ParseConfig { base_ch: 8, ch_range: [8, 32], res_depth: 3, ..ParseConfig::default() };
    assert_eq!(cfg, want);
    assert_eq!(cfg.parameters(), 206_542);
    println!("tiny: {:.2} GFLOP a 512 face", cfg.flops(512, 512, false) / 1e9);
}

/// What `ParseNet::load` says about `path`, which must be a model mismatch of ParseNet naming it.
fn mismatch(path: &std::path::Path) -> (String, String) {
    let e = ParseNet::load(path, Device::Cpu, Kind::Float).unwrap_err();
    let msg = e.to_string();
    let Error::ModelMismatch { network: Network::ParseNet, path: p, expected, details } = e else { panic!("{e:?}") };
    assert_eq!(p, path);
    assert!(msg.starts_with(&format!("{}: does not match the ParseNet face parser", path.display())), "{msg}");
    (expected, details)
}

#[test]
fn a_gpen_checkpoint_is_not_a_parser() {
    let path = common::gpen_fixture("gpen-512-tiny.pth");
    let (_, details) = mismatch(&path);
    assert_eq!(details, "no `encoder.0.conv2d.weight` (not a ParseNet checkpoint)");
    assert!(gstgpen::registry::parser(&path, Device::Cpu, Kind::Float).is_err());
}

#[test]
fn another_class_count_is_refused() {
    let sd = gstgpen::checkpoint::load(&fixture("parsenet-tiny.pth"), None).unwrap();
    let tensors: Vec<(String, Tensor)> = sd
        .iter()
        .map(|(n, t)| (n.to_owned(), if n.starts_with("out_mask_conv.") { t.narrow(0, 0, 11).contiguous() } else { t.shallow_clone() }))
        .collect();
    let path = common::scratch("parsenet").join("parsenet-11-classes.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    // It is a ParseNet in every other way…
    let sd = gstgpen::checkpoint::load(&path, None).unwrap();
    assert_eq!(ParseConfig::from_state_dict(&sd).unwrap().parsing_ch, 11);
    // …but not one GPEN's mask can use.
    let (expected, details) = mismatch(&path);
    assert_eq!(expected, "19 CelebAMask-HQ classes, as GPEN's paste mask needs");
    assert_eq!(details, "`out_mask_conv.conv2d.weight` gives 11 classes");
    assert!(gstgpen::registry::parser(&path, Device::Cpu, Kind::Float).is_err());
}

#[test]
fn a_missing_tensor_is_named() {
    let sd = gstgpen::checkpoint::load(&fixture("parsenet-tiny.pth"), None).unwrap();
    let tensors: Vec<(String, Tensor)> =
        sd.iter().filter(|(n, _)| *n != "body.1.conv2.norm.norm.running_var").map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
    let path = common::scratch("parsenet").join("parsenet-missing.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let (expected, details) = mismatch(&path);
    assert!(expected.starts_with("ParseNet (base_ch 8, ch_range [8, 32], res_depth 3, parsing_ch 19"), "{expected}");
    assert_eq!(details, "1 missing: body.1.conv2.norm.norm.running_var");
}

#[test]
fn a_truncated_file_is_refused() {
    let bytes = std::fs::read(fixture("parsenet-tiny.pth")).unwrap();
    let path = common::scratch("parsenet").join("parsenet-truncated.pth");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = ParseNet::load(&path, Device::Cpu, Kind::Float).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Checkpoint(CheckpointError::Corrupt { .. })), "{e:?}");
    assert!(msg.starts_with(&format!("{}: the checkpoint is corrupt or truncated", path.display())), "{msg}");
    assert!(gstgpen::registry::parser(&path, Device::Cpu, Kind::Float).is_err());
}

#[test]
fn the_registry_shares_one_parser_per_file_device_and_precision() {
    let path = fixture("parsenet-tiny.pth");
    let a = gstgpen::registry::parser(&path, Device::Cpu, Kind::Float).unwrap();
    let b = gstgpen::registry::parser(&path, Device::Cpu, Kind::Float).unwrap();
    let c = gstgpen::registry::parser(&path, Device::Cpu, Kind::BFloat16).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    assert_eq!(a.path(), path);
}
