//! The GPEN generator (yangxy/GPEN `face_model/gpen_model.py`): configuration read from a
//! checkpoint's tensor shapes, the strict key/shape check, and the model itself.

mod format;
mod model;
pub mod profile;
mod strips;
mod upfirdn;

use std::path::PathBuf;

use crate::checkpoint::StateDict;
use crate::{Error, Network};

pub use model::{FullGenerator, Intermediates};
pub use strips::{Banding, Strips, STRIP_BYTES};

/// Mirrors `FullGenerator(size, style_dim, n_mlp, channel_multiplier=2, narrow=1)`; blur kernel
/// `[1,3,3,1]`, `lr_mlp=0.01` and `isconcat=True` are fixed in every released model.
#[derive(Debug, Clone, PartialEq)]
pub struct GpenConfig {
    /// Face resolution in pixels (a power of two: 256, 512, 1024, 2048 for GPEN-BFR).
    pub size: i64,
    /// Width of the latent w.
    pub style_dim: i64,
    /// Layers of the mapping MLP.
    pub n_mlp: i64,
    pub channel_multiplier: i64,
    /// Width factor applied to every level.
    pub narrow: f64,
}

impl Default for GpenConfig {
    fn default() -> Self {
        GpenConfig { size: 512, style_dim: 512, n_mlp: 8, channel_multiplier: 2, narrow: 1.0 }
    }
}

/// Learning-rate multiplier of the mapping layers (`lr_mlp`), folded into their weights.
pub const LR_MLP: f64 = 0.01;

impl GpenConfig {
    /// The configuration the official GPEN-BFR-`size` model was released with.
    pub fn official(size: i64) -> Self {
        match size {
            256 => GpenConfig { size, channel_multiplier: 1, narrow: 0.5, ..Default::default() },
            _ => GpenConfig { size, ..Default::default() },
        }
    }

    pub fn log_size(&self) -> i64 {
        63 - self.size.leading_zeros() as i64
    }

    /// `self.channels[res]` of the Python model, with its `int(...)` truncation.
    pub fn channels(&self, res: i64) -> i64 {
        let base = match res {
            ..=32 => 512,
            64 => 256 * self.channel_multiplier,
            128 => 128 * self.channel_multiplier,
            256 => 64 * self.channel_multiplier,
            512 => 32 * self.channel_multiplier,
            1024 => 16 * self.channel_multiplier,
            _ => 8 * self.channel_multiplier,
        };
        (base as f64 * self.narrow) as i64
    }

    pub fn describe(&self) -> String {
        format!(
            "GPEN-{} (channel_multiplier {}, narrow {}, style_dim {}, n_mlp {})",
            self.size, self.channel_multiplier, self.narrow, self.style_dim, self.n_mlp
        )
    }

    /// Reads the configuration from the tensor shapes of a state dict.
    pub fn from_state_dict(sd: &StateDict) -> Result<Self, Error> {
        let not_gpen = |details: String| Error::ModelMismatch {
            network: Network::Gpen,
            path: sd.path.clone(),
            expected: "tensors named and shaped as in GPEN's gpen_model.py".into(),
            details,
        };
        let shape = |name: &str| sd.get(name).map(|t| t.size());
        let (Some(ecd0), Some(input)) = (shape("ecd0.0.0.weight"), shape("generator.input.input")) else {
            let first: Vec<_> = sd.names().take(5).collect();
            return Err(not_gpen(format!(
                "it has no `ecd0.0.0.weight` or `generator.input.input` among its {} tensors (first: {})",
                sd.len(),
                first.join(", ")
            )));
        };
        // ecd0 .. ecd{log2(size)-2}
        let n_ecd = (0..).take_while(|i| sd.names().any(|n| n.starts_with(&format!("ecd{i}.")))).count() as i64;
        let log = n_ecd + 1;
        if !(3..=14).contains(&log) {
            return Err(not_gpen(format!("{n_ecd} encoder levels do not make a GPEN")));
        }
        let size = 1i64 << log;
        let n_mlp = (1..).take_while(|j| sd.get(&format!("generator.style.{j}.weight")).is_some()).count() as i64;
        let style_dim = match shape("generator.style.1.weight") {
            Some(s) if s.len() == 2 => s[0],
            _ => return Err(not_gpen("no mapping network (`generator.style.1.weight`)".into())),
        };
        if input.len() != 4 || ecd0.len() != 4 {
            return Err(not_gpen("`generator.input.input` or `ecd0.0.0.weight` is not 4-D".into()));
        }
        let ch4 = input[1];
        let narrow = ch4 as f64 / 512.0;
        // The first level whose width depends on the multiplier: 64 (or the face size if smaller).
        let res = 64.min(size);
        let ch = if res == size {
            ecd0[0]
        } else {
            let i = log - 6; // ecd{i} outputs size >> i = 64
            match shape(&format!("ecd{i}.0.1.weight")) {
                Some(s) if !s.is_empty() => s[0],
                _ => return Err(not_gpen(format!("no encoder layer `ecd{i}.0.1.weight`"))),
            }
        };
        let per_cm = GpenConfig { size, style_dim, n_mlp, channel_multiplier: 1, narrow }.channels(res);
        let channel_multiplier = if res <= 32 || per_cm == 0 { 1 } else { ((ch as f64) / per_cm as f64).round() as i64 };
        if ch4 == 0 || channel_multiplier < 1 {
            return Err(not_gpen(format!("impossible channel widths ({ch4} at 4x4, {ch} at {res}x{res})")));
        }
        Ok(GpenConfig { size, style_dim, n_mlp, channel_multiplier, narrow })
    }

    /// Every tensor of the official state dict, in its order, with its shape (buffers included).
    pub fn expected_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let sd = self.style_dim;
        let log = self.log_size();
        let mut out: Vec<(String, Vec<i64>)> = Vec::new();
        let mut add = |name: String, shape: &[i64]| out.push((name, shape.to_vec()));
        let g = "generator";
        for j in 1..=self.n_mlp {
            add(format!("{g}.style.{j}.weight"), &[sd, sd]);
            add(format!("{g}.style.{j}.bias"), &[sd]);
        }
        let ch4 = self.channels(4);
        add(format!("{g}.input.input"), &[1, ch4, 4, 4]);
        let styled = |add: &mut dyn FnMut(String, &[i64]), p: String, ic: i64, oc: i64, up: bool| {
            add(format!("{p}.conv.weight"), &[1, oc, ic, 3, 3]);
            if up {
                add(format!("{p}.conv.blur.kernel"), &[4, 4]);
            }
            add(format!("{p}.conv.modulation.weight"), &[ic, sd]);
            add(format!("{p}.conv.modulation.bias"), &[ic]);
            add(format!("{p}.noise.weight"), &[1]);
            add(format!("{p}.activate.bias"), &[2 * oc]);
        };
        let rgb = |add: &mut dyn FnMut(String, &[i64]), p: String, ic: i64, up: bool| {
            add(format!("{p}.bias"), &[1, 3, 1, 1]);
            if up {
                add(format!("{p}.upsample.kernel"), &[4, 4]);
            }
            add(format!("{p}.conv.weight"), &[1, 3, ic, 1, 1]);
            add(format!("{p}.conv.modulation.weight"), &[ic, sd]);
            add(format!("{p}.conv.modulation.bias"), &[ic]);
        };
        styled(&mut add, format!("{g}.conv1"), ch4, ch4, false);
        rgb(&mut add, format!("{g}.to_rgb1"), 2 * ch4, false);
        let mut ic = ch4;
        for i in 3..=log {
            let oc = self.channels(1 << i);
            let k = 2 * (i - 3);
            styled(&mut add, format!("{g}.convs.{k}"), 2 * ic, oc, true);
            styled(&mut add, format!("{g}.convs.{}", k + 1), 2 * oc, oc, false);
            ic = oc;
        }
        for i in 3..=log {
            let oc = self.channels(1 << i);
            rgb(&mut add, format!("{g}.to_rgbs.{}", i - 3), 2 * oc, true);
        }
        let top = self.channels(self.size);
        add("ecd0.0.0.weight".into(), &[top, 3, 1, 1]);
        add("ecd0.0.1.bias".into(), &[top]);
        for n in 1..=log - 2 {
            let cin = self.channels(self.size >> (n - 1));
            let cout = self.channels(self.size >> n);
            add(format!("ecd{n}.0.0.kernel"), &[4, 4]);
            add(format!("ecd{n}.0.1.weight"), &[cout, cin, 3, 3]);
            add(format!("ecd{n}.0.2.bias"), &[cout]);
        }
        add("final_linear.0.weight".into(), &[sd, ch4 * 16]);
        add("final_linear.0.bias".into(), &[sd]);
        out
    }

    /// Strict check ([`nn::check_tensors`](crate::nn::check_tensors)): missing, unexpected,
    /// mis-shaped, non-float and non-finite tensors, reported together by name.
    pub fn check_state_dict(&self, sd: &StateDict) -> Result<(), Error> {
        crate::nn::check_tensors(sd, Network::Gpen, &self.describe(), &self.expected_shapes(), &|_| false)
    }
}

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
