//! The GPEN generator (yangxy/GPEN `face_model/gpen_model.py`): configuration read from a
//! checkpoint's tensor shapes, the strict key/shape check, and the model itself.

mod config;
mod format;
mod loader;
mod model;
pub mod profile;
mod strips;
mod upfirdn;

use std::path::PathBuf;

use crate::checkpoint::StateDict;

pub use config::{GpenConfig, LR_MLP};
pub use model::{FullGenerator, Intermediates};
pub use strips::{Banding, Strips, STRIP_BYTES};

/// A state dict of the right shapes with random values, for benchmarks and shape tests.
pub fn random_state_dict(cfg: &GpenConfig, seed: i64) -> StateDict {
    crate::sys::manual_seed(seed);
    let mut tensors = Vec::new();
    let k = tch::Tensor::from_slice(&[1f32, 3., 3., 1.]);
    let kernel = k.outer(&k) / 64.0;
    for (name, shape) in cfg.expected_shapes() {
        // Blur buffers hold the fixed kernel: K in the encoder, 4K (upsampling gain) elsewhere.
        let t = if name.starts_with("ecd") && name.ends_with(".kernel") {
            kernel.copy()
        } else if name.ends_with(".kernel") {
            &kernel * 4.0
        } else if name.ends_with("modulation.bias") {
            tch::Tensor::ones(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu))
        } else if name.ends_with("noise.weight") {
            tch::Tensor::full(shape.as_slice(), 0.5, (tch::Kind::Float, tch::Device::Cpu))
        } else if name.ends_with("bias") {
            tch::Tensor::randn(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu)) * 0.1
        } else {
            tch::Tensor::randn(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu))
        };
        tensors.push((name, t));
    }
    StateDict::new(PathBuf::from(format!("<random {}>", cfg.describe())), tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor of the given shape that allocates one element (an expanded scalar).
    fn stand_in(shape: &[i64]) -> tch::Tensor {
        tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)).expand(shape, false)
    }

    #[test]
    fn official_key_counts_match_the_released_models() {
        // gpen-reference.md §2: 144 (18 buffers), 163 (21), 182 (24), 201 (27).
        for (size, keys, buffers) in [(256, 144, 18), (512, 163, 21), (1024, 182, 24), (2048, 201, 27)] {
            let shapes = GpenConfig::official(size).expected_shapes();
            assert_eq!(shapes.len(), keys, "size {size}");
            assert_eq!(shapes.iter().filter(|(n, _)| n.ends_with(".kernel")).count(), buffers);
        }
    }

    #[test]
    fn official_parameter_counts_match_the_released_models() {
        for (size, params) in [(256, 18_879_010i64), (512, 71_005_223), (1024, 71_210_540), (2048, 71_294_769)] {
            let n: i64 = GpenConfig::official(size)
                .expected_shapes()
                .iter()
                .filter(|(n, _)| !n.ends_with(".kernel"))
                .map(|(_, s)| s.iter().product::<i64>())
                .sum();
            assert_eq!(n, params, "size {size}");
        }
    }

    #[test]
    fn channel_table_follows_the_python_model() {
        let c = GpenConfig::official(512);
        let t: Vec<i64> = [4, 8, 16, 32, 64, 128, 256, 512].iter().map(|&r| c.channels(r)).collect();
        assert_eq!(t, [512, 512, 512, 512, 512, 256, 128, 64]);
        let c = GpenConfig::official(256);
        let t: Vec<i64> = [4, 32, 64, 128, 256].iter().map(|&r| c.channels(r)).collect();
        assert_eq!(t, [256, 256, 128, 64, 32]);
        assert_eq!(GpenConfig::official(2048).channels(2048), 16);
    }

    #[test]
    fn config_is_read_back_from_shapes() {
        for cfg in [
            GpenConfig::official(256),
            GpenConfig::official(512),
            GpenConfig::official(1024),
            GpenConfig::official(2048),
            GpenConfig { size: 256, channel_multiplier: 1, narrow: 0.125, ..Default::default() },
            GpenConfig { size: 512, channel_multiplier: 2, narrow: 0.0625, ..Default::default() },
        ] {
            // Only the shapes matter.
            let tensors = cfg.expected_shapes().into_iter().map(|(n, s)| (n, stand_in(&s))).collect();
            let sd = StateDict::new("mem".into(), tensors);
            assert_eq!(GpenConfig::from_state_dict(&sd).unwrap(), cfg);
            cfg.check_state_dict(&sd).unwrap();
        }
    }

    #[test]
    fn strict_check_reports_every_problem_by_name() {
        let cfg = GpenConfig { size: 256, channel_multiplier: 1, narrow: 0.125, ..Default::default() };
        let mut tensors: Vec<(String, tch::Tensor)> = cfg.expected_shapes().into_iter().map(|(n, s)| (n, stand_in(&s))).collect();
        tensors.retain(|(n, _)| n != "generator.style.3.bias");
        let i = tensors.iter().position(|(n, _)| n == "ecd2.0.1.weight").unwrap();
        tensors[i].1 = stand_in(&[9, 9, 3, 3]);
        tensors.push(("extra.weight".into(), stand_in(&[1])));
        let sd = StateDict::new("x.pth".into(), tensors);
        let msg = cfg.check_state_dict(&sd).unwrap_err().to_string();
        assert!(msg.contains("1 missing: generator.style.3.bias"), "{msg}");
        assert!(msg.contains("1 unexpected: extra.weight"), "{msg}");
        assert!(msg.contains("ecd2.0.1.weight (expected [32, 16, 3, 3], found [9, 9, 3, 3])"), "{msg}");
        assert!(msg.starts_with("x.pth: "), "{msg}");
    }
}
