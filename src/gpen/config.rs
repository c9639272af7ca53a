//! GPEN's configuration: the official sizes, and the configuration read from a checkpoint's
//! tensor shapes with the strict key/shape check.

use crate::checkpoint::StateDict;
use crate::error::{Error, Network};

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
