//! The generator in real float16 (`Kind::Half`, as on CUDA) on the CPU, with styles at the
//! edge of float16's range. CPU "fp16" is bfloat16, whose range is fp32's, so no other CPU test
//! sees float16 overflow. float16 convolutions are slow on the CPU (no fast kernels), hence the
//! tiniest fixture and one face.

mod common;

use gstgpen::checkpoint::{self, StateDict};
use gstgpen::gpen::FullGenerator;
use tch::{Device, Kind, Tensor};

const FIXTURE: &str = "gpen-256-tiny";

/// The largest style entry the test aims for: representable in float16 (max 65504), but its
/// products with activations above 1.1, and the sums over `in x 3 x 3` of such products, are
/// not. Without the pre-normalisation every output value is NaN here (at 30000 the fixture
/// still came through).
const STYLE_EDGE: f64 = 60000.0;

/// Modulation layers of the demodulated convolutions (`conv1`, `convs.N`), whose output does not
/// depend on the scale of their style. (The RGB layers are not demodulated.)
fn demodulated(name: &str) -> bool {
    name.contains(".conv.modulation.") && !name.contains("to_rgb")
}

/// The largest |style| over the demodulated layers, for the latent `w` (`B x style_dim`):
/// `style = w W^T / sqrt(style_dim) + b` (EqualLinear, lr_mul 1).
fn largest_style(sd: &StateDict, w: &Tensor) -> f64 {
    let mut m = 0f64;
    for (name, weight) in sd.iter().filter(|(n, _)| demodulated(n) && n.ends_with(".weight")) {
        let bias = sd.get(&name.replace(".weight", ".bias")).unwrap().to_kind(Kind::Float);
        let weight = weight.to_kind(Kind::Float);
        let style = w.linear(&(&weight / (weight.size()[1] as f64).sqrt()), Some(&bias));
        m = m.max(style.abs().max().double_value(&[]));
    }
    m
}

/// The state dict with every demodulated style multiplied by `k`.
fn scaled(sd: &StateDict, k: f64) -> StateDict {
    let tensors = sd
        .iter()
        .map(|(n, t)| {
            let t = if demodulated(n) { t.to_kind(Kind::Float) * k } else { t.shallow_clone() };
            (n.to_owned(), t)
        })
        .collect();
    StateDict::new(format!("{FIXTURE} with styles x{k:.0}").into(), tensors)
}

#[test]
fn float16_with_styles_at_the_edge_of_its_range_stays_finite_and_close_to_fp32() {
    let e: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(common::gpen_fixture(&format!("{FIXTURE}.expected.safetensors"))).unwrap().into_iter().collect();
    let sd = checkpoint::load(&common::gpen_fixture(&format!("{FIXTURE}.pth")), None).unwrap();
    let input = e["input"].narrow(0, 0, 1);
    let official = e["output"].narrow(0, 0, 1);

    // Scale the styles so that the largest reaches STYLE_EDGE.
    let fp32 = FullGenerator::from_state_dict(&sd, Device::Cpu, Kind::Float).unwrap();
    let w = fp32.forward_intermediates(&input).unwrap().w;
    let before = largest_style(&sd, &w);
    let k = STYLE_EDGE / before;
    let sd = scaled(&sd, k);
    let after = largest_style(&sd, &w);
    println!("largest style {before:.3} scaled by {k:.0} to {after:.0} (float16 max 65504)");
    assert!(after > 16384.0 && after < 65504.0, "{after}");

    // Demodulation makes the scale invisible in exact arithmetic: fp32 barely moves.
    let reference = FullGenerator::from_state_dict(&sd, Device::Cpu, Kind::Float).unwrap().forward(&input).unwrap();
    let (max, mean) = common::diff(&reference, &official);
    println!("fp32 with scaled styles: max abs {max:.2e}, mean abs {mean:.2e} from the official output");
    assert!(max <= 1e-3, "fp32 moved by {max} when the styles were scaled");

    let half = FullGenerator::from_state_dict(&sd, Device::Cpu, Kind::Half).unwrap();
    assert_eq!(half.kind(), Kind::Half);
    let t = std::time::Instant::now();
    let out = half.forward(&input).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(out.kind(), Kind::Float);
    let finite = out.isfinite().all().int64_value(&[]) != 0;
    let bad = out.numel() as i64 - out.isfinite().sum(Kind::Int64).int64_value(&[]);
    let (max, mean) = if finite { common::diff(&out, &reference) } else { (f64::NAN, f64::NAN) };
    println!("float16 on CPU ({secs:.1} s): {bad} non-finite values; max abs {max:.4}, mean abs {mean:.4} from fp32");
    assert!(finite, "float16 output has {bad} non-finite values of {}", out.numel());
    // The tolerance of the CUDA fp16 parity test (tests/cuda.rs).
    assert!(max <= 0.1 && mean <= 0.02, "float16 max abs {max}, mean abs {mean} from fp32");
}
