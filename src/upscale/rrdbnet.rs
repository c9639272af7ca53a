//! RRDBNet (ESRGAN's generator), as BasicSR's `rrdbnet_arch.py` and GPEN's `sr_model` copy:
//! GPEN's RealESRNet (num_feat 32) and Real-ESRGAN's x4plus/x2plus (num_feat 64) load unchanged.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::checkpoint::StateDict;
use crate::nn::{leaky_relu_, Conv2d, ConvSpec, Params};
use crate::{Error, Network};

type Result<T> = std::result::Result<T, tch::TchError>;

/// `RRDBNet(num_in_ch=3, num_out_ch=3, scale, num_feat, num_block, num_grow_ch)`; BasicSR's
/// defaults are scale 4, num_feat 64, num_block 23, num_grow_ch 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrdbConfig {
    pub scale: i64,
    pub num_feat: i64,
    pub num_block: i64,
    pub num_grow_ch: i64,
}

impl Default for RrdbConfig {
    fn default() -> Self {
        RrdbConfig { scale: 4, num_feat: 64, num_block: 23, num_grow_ch: 32 }
    }
}

impl RrdbConfig {
    /// Read from the tensor shapes: the input channels of `conv_first` give the scale (3: x4,
    /// 12: x2 after pixel-unshuffle by 2, 48: x1 after unshuffle by 4).
    pub fn from_state_dict(sd: &StateDict) -> std::result::Result<Self, Error> {
        let mismatch = |details: String| Error::ModelMismatch {
            network: Network::RrdbNet,
            path: sd.path.clone(),
            expected: "tensors named and shaped as in BasicSR's rrdbnet_arch.py".into(),
            details,
        };
        let first = sd.get("conv_first.weight").ok_or_else(|| mismatch("no `conv_first.weight` (not an RRDBNet checkpoint)".into()))?;
        let [num_feat, in_ch, _, _] = first.size()[..] else {
            return Err(mismatch(format!("`conv_first.weight` has shape {:?}, expected 4 dimensions", first.size())));
        };
        let scale = match in_ch {
            3 => 4,
            12 => 2,
            48 => 1,
            c => return Err(mismatch(format!("`conv_first.weight` takes {c} input channels; RRDBNet takes 3 (x4), 12 (x2) or 48 (x1)"))),
        };
        let grow = sd
            .get("body.0.rdb1.conv1.weight")
            .ok_or_else(|| mismatch("no `body.0.rdb1.conv1.weight` (not an RRDBNet checkpoint)".into()))?;
        let num_block = (0..).take_while(|i| sd.get(&format!("body.{i}.rdb1.conv1.weight")).is_some()).count() as i64;
        Ok(RrdbConfig { scale, num_feat, num_block, num_grow_ch: grow.size()[0] })
    }

    /// The configuration in words, as errors name it.
    pub fn describe(&self) -> String {
        format!("RRDBNet x{} (num_feat {}, num_block {}, num_grow_ch {})", self.scale, self.num_feat, self.num_block, self.num_grow_ch)
    }

    fn unshuffle(&self) -> i64 {
        match self.scale {
            1 => 4,
            2 => 2,
            _ => 1,
        }
    }

    /// Input sides must be multiples of this (pixel-unshuffle).
    pub fn multiple(&self) -> i64 {
        self.unshuffle()
    }

    /// Floats alive at the peak of a forward, per input pixel: the body's features and the dense
    /// block's concatenation at the unshuffled resolution, then the two upsampled stages (the
    /// last at the output resolution, with its input, activation and the next conv's output).
    pub fn peak_floats_per_pixel(&self) -> f64 {
        let u2 = (self.unshuffle() * self.unshuffle()) as f64;
        let low = (3.0 * self.num_feat as f64 + 2.0 * (self.num_feat + 4 * self.num_grow_ch) as f64) / u2;
        let s2 = (self.scale * self.scale) as f64;
        let high = 3.0 * self.num_feat as f64 * s2 + self.num_feat as f64 * s2 / 4.0;
        low.max(high)
    }
}

/// A state dict of `cfg`'s shapes with small random weights (benchmarks and tests: the official
/// weights cannot be had everywhere).
pub fn random_state_dict(cfg: &RrdbConfig, seed: i64) -> StateDict {
    crate::sys::manual_seed(seed);
    let (nf, gc) = (cfg.num_feat, cfg.num_grow_ch);
    let u = cfg.unshuffle();
    let mut convs: Vec<(String, i64, i64)> = vec![("conv_first".into(), 3 * u * u, nf)];
    for b in 0..cfg.num_block {
        for r in 1..=3 {
            for i in 0..5 {
                let cout = if i == 4 { nf } else { gc };
                convs.push((format!("body.{b}.rdb{r}.conv{}", i + 1), nf + i * gc, cout));
            }
        }
    }
    for name in ["conv_body", "conv_up1", "conv_up2", "conv_hr"] {
        convs.push((name.into(), nf, nf));
    }
    convs.push(("conv_last".into(), nf, 3));
    let mut tensors = Vec::new();
    for (name, cin, cout) in convs {
        let std = 0.1 / ((cin * 9) as f64).sqrt();
        tensors.push((format!("{name}.weight"), Tensor::randn([cout, cin, 3, 3], (Kind::Float, Device::Cpu)) * std));
        tensors.push((format!("{name}.bias"), Tensor::zeros([cout], (Kind::Float, Device::Cpu))));
    }
    StateDict::new("random".into(), tensors)
}

/// `ResidualDenseBlock`: five 3x3 convs, each seeing the block input and every earlier output.
pub struct ResidualDenseBlock {
    convs: [Conv2d; 5],
}

impl ResidualDenseBlock {
    pub fn new(p: &Params, prefix: &str, nf: i64, gc: i64) -> Result<Self> {
        let conv = |i: i64, cin: i64, cout: i64| Conv2d::new(p, &format!("{prefix}.conv{i}"), ConvSpec::new(cin, cout, 3, 1, 1), true);
        Ok(ResidualDenseBlock {
            convs: [
                conv(1, nf, gc)?,
                conv(2, nf + gc, gc)?,
                conv(3, nf + 2 * gc, gc)?,
                conv(4, nf + 3 * gc, gc)?,
                conv(5, nf + 4 * gc, nf)?,
            ],
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut feats = vec![x.shallow_clone()];
        for conv in &self.convs[..4] {
            let mut y = conv.forward(&Tensor::f_cat(&feats, 1)?)?;
            leaky_relu_(&mut y, 0.2)?;
            feats.push(y);
        }
        let x5 = self.convs[4].forward(&Tensor::f_cat(&feats, 1)?)?;
        // Empirically, scaling the residual by 0.2 (as BasicSR does).
        x5.f_mul_scalar(0.2)?.f_add(x)
    }
}

/// `RRDB`: three dense blocks and a scaled residual.
pub struct Rrdb {
    rdb: [ResidualDenseBlock; 3],
}

impl Rrdb {
    pub fn new(p: &Params, prefix: &str, nf: i64, gc: i64) -> Result<Self> {
        let b = |i: usize| ResidualDenseBlock::new(p, &format!("{prefix}.rdb{i}"), nf, gc);
        Ok(Rrdb { rdb: [b(1)?, b(2)?, b(3)?] })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.rdb[2].forward(&self.rdb[1].forward(&self.rdb[0].forward(x)?)?)?;
        out.f_mul_scalar(0.2)?.f_add(x)
    }
}

/// The network, on `N x 3 x H x W` RGB in 0..1 (H, W multiples of [`RrdbConfig::multiple`]).
pub struct RrdbNet {
    cfg: RrdbConfig,
    conv_first: Conv2d,
    body: Vec<Rrdb>,
    conv_body: Conv2d,
    conv_up1: Conv2d,
    conv_up2: Conv2d,
    conv_hr: Conv2d,
    conv_last: Conv2d,
    device: Device,
    path: PathBuf,
}

// SAFETY: as for the generator: weights are only read after construction, and libtorch allows
// concurrent reads, so streams may share one upscaler.
unsafe impl Sync for RrdbNet {}

impl RrdbNet {
    /// Loads a checkpoint (`.pth`, zip or legacy, or `.safetensors`), bare or wrapped
    /// (Real-ESRGAN and GPEN's RealESRNet keep theirs under `params_ema`, some under `params`),
    /// with the configuration read from its shapes.
    pub fn new(path: &Path, device: Device) -> std::result::Result<Self, Error> {
        let mut sd = crate::checkpoint::load(path, None)?;
        // Flat files (safetensors) keep the wrapper as a name prefix.
        if sd.get("conv_first.weight").is_none() {
            if let Some(k) = ["params_ema", "params"].iter().find(|k| sd.get(&format!("{k}.conv_first.weight")).is_some()) {
                sd = crate::checkpoint::load(path, Some(k))?;
            }
        }
        let cfg = RrdbConfig::from_state_dict(&sd)?;
        Self::from_state_dict(&sd, cfg, device)
    }

    pub fn from_state_dict(sd: &StateDict, cfg: RrdbConfig, device: Device) -> std::result::Result<Self, Error> {
        let _guard = tch::no_grad_guard();
        let p = Params::new(sd, device);
        let model = Self::build(&p, cfg, device)?;
        p.finish(Network::RrdbNet, &cfg.describe())?;
        Ok(model)
    }

    fn build(p: &Params, cfg: RrdbConfig, device: Device) -> Result<Self> {
        let (nf, gc) = (cfg.num_feat, cfg.num_grow_ch);
        let u = cfg.unshuffle();
        let conv = |name: &str, cin: i64, cout: i64| Conv2d::new(p, name, ConvSpec::new(cin, cout, 3, 1, 1), true);
        Ok(RrdbNet {
            cfg,
            conv_first: conv("conv_first", 3 * u * u, nf)?,
            body: (0..cfg.num_block).map(|i| Rrdb::new(p, &format!("body.{i}"), nf, gc)).collect::<Result<_>>()?,
            conv_body: conv("conv_body", nf, nf)?,
            conv_up1: conv("conv_up1", nf, nf)?,
            conv_up2: conv("conv_up2", nf, nf)?,
            conv_hr: conv("conv_hr", nf, nf)?,
            conv_last: conv("conv_last", nf, 3)?,
            device,
            path: p.path().to_owned(),
        })
    }

    pub fn config(&self) -> RrdbConfig {
        self.cfg
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The checkpoint it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let u = self.cfg.unshuffle();
        let x = if x.kind() == Kind::Float { x.shallow_clone() } else { x.f_to_kind(Kind::Float)? };
        let x = if u > 1 { x.f_pixel_unshuffle(u)? } else { x };
        let feat = self.conv_first.forward(&x)?;
        let mut body = feat.shallow_clone();
        for block in &self.body {
            body = block.forward(&body)?;
        }
        let mut feat = feat.f_add(&self.conv_body.forward(&body)?)?;
        drop(body);
        for conv in [&self.conv_up1, &self.conv_up2] {
            let (h, w) = (feat.size()[2], feat.size()[3]);
            let up = feat.f_upsample_nearest2d([h * 2, w * 2], 2.0, 2.0)?;
            feat = conv.forward(&up)?;
            leaky_relu_(&mut feat, 0.2)?;
        }
        let mut hr = self.conv_hr.forward(&feat)?;
        drop(feat);
        leaky_relu_(&mut hr, 0.2)?;
        self.conv_last.forward(&hr)
    }
}
