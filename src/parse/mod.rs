//! ParseNet, the face-parsing network GPEN pastes through (yangxy/GPEN `face_parse/parse_model.py`
//! and `blocks.py`, commit 2c73670; weights `ParseNet-latest.pth`): a `N x 3 x 512 x 512` RGB
//! face in [-1, 1] in, 19 CelebAMask-HQ class logits per pixel out. Batch norm (eval mode,
//! eps 1e-5) is folded into the convolutions at load.
//!
//! Cost: a 3x3 convolution costs `C_out * C_in * 9 * H_out * W_out` multiply-adds. At the official
//! configuration ([`ParseConfig::default`]) one 512 face costs 234.0 G multiply-adds, 468.1 GFLOP
//! with the mask head only (the image head, skipped by [`ParseNet::forward`], adds 0.9 GFLOP):
//! 37 % in the encoder (its first two blocks, whose `conv1` keeps the input's size, 14 % each),
//! 5 % in the body at 32 x 32, 57 % in the decoder (its last two blocks, at 256 and 512, 21 %
//! each). See [`ParseConfig::flops`].

use std::path::{Path, PathBuf};

use tch::{Device, Kind, TchError, Tensor};

use crate::checkpoint::StateDict;
use crate::nn::{leaky_relu_, Conv2d, ConvSpec, Params};
use crate::{Error, Network, Setting};

type Result<T> = std::result::Result<T, TchError>;

/// The classes GPEN's paste mask is defined on (CelebAMask-HQ: 0 background, 1 skin, …, 8 and 9
/// ears, 13 hair, 14 hat, 17 neck, 18 cloth).
pub const PARSING_CLASSES: i64 = 19;

/// Slope of the LeakyReLU after every `conv1` (`ReluLayer(relu_type='LeakyReLU')`).
pub const LEAKY_SLOPE: f64 = 0.2;

/// `ParseNet(in_size, out_size, min_feat_size, base_ch, parsing_ch, res_depth, ch_range)` with
/// `norm_type='bn'` and `relu_type='LeakyReLU'` (the only ones supported: a checkpoint without
/// batch norm fails the strict load). [`Default`] is GPEN's `FaceParse.load_model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseConfig {
    /// Input side; `log2(in_size / min_feat_size)` encoder blocks halve it.
    pub in_size: i64,
    /// Output side; `log2(out_size / min_feat_size)` decoder blocks double the features.
    pub out_size: i64,
    /// Side of the body's features.
    pub min_feat_size: i64,
    /// Channels of the first convolution; each encoder block doubles them, within `ch_range`.
    pub base_ch: i64,
    /// Classes of the mask head.
    pub parsing_ch: i64,
    /// Residual blocks in the body.
    pub res_depth: i64,
    /// `[min, max]` channels of every block (`ch_clip`).
    pub ch_range: [i64; 2],
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            in_size: 512,
            out_size: 512,
            min_feat_size: 32,
            base_ch: 64,
            parsing_ch: PARSING_CLASSES,
            res_depth: 10,
            ch_range: [32, 256],
        }
    }
}

/// One block's channels and scale: `(prefix, c_in, c_out, scale)`.
type BlockPlan = (String, i64, i64, Scale);

impl ParseConfig {
    fn ch_clip(&self, c: i64) -> i64 {
        c.min(self.ch_range[1]).max(self.ch_range[0])
    }

    fn steps(size: i64, min_feat: i64) -> i64 {
        let ratio = (size / min_feat.min(size).max(1)).max(1);
        63 - ratio.leading_zeros() as i64
    }

    pub fn down_steps(&self) -> i64 {
        Self::steps(self.in_size, self.min_feat_size)
    }

    pub fn up_steps(&self) -> i64 {
        Self::steps(self.out_size, self.min_feat_size)
    }

    /// Every residual block in order (`encoder.1..`, `body.*`, `decoder.*`), and the channels the
    /// output heads take.
    fn plan(&self) -> (Vec<BlockPlan>, i64) {
        let mut blocks = Vec::new();
        let mut h = self.base_ch;
        for i in 0..self.down_steps() {
            blocks.push((format!("encoder.{}", i + 1), self.ch_clip(h), self.ch_clip(h * 2), Scale::Down));
            h *= 2;
        }
        for i in 0..self.res_depth {
            blocks.push((format!("body.{i}"), self.ch_clip(h), self.ch_clip(h), Scale::None));
        }
        for i in 0..self.up_steps() {
            blocks.push((format!("decoder.{i}"), self.ch_clip(h), self.ch_clip(h / 2), Scale::Up));
            h /= 2;
        }
        (blocks, self.ch_clip(h))
    }

    /// The same network with `ch_range` narrowed to the channels its blocks use, as
    /// [`from_state_dict`](Self::from_state_dict) reads it (the official `[32, 256]` with base 64
    /// reads `[64, 256]`: no block has fewer than 64 channels, so the bound cannot be seen).
    pub fn narrowed(&self) -> Self {
        let (blocks, head) = self.plan();
        let used = blocks.iter().flat_map(|b| [b.1, b.2]).chain([head]);
        let (lo, hi) = used.fold((i64::MAX, i64::MIN), |(lo, hi), c| (lo.min(c), hi.max(c)));
        ParseConfig { ch_range: [lo, hi], ..*self }
    }

    /// Read from the tensor shapes: `encoder.0` gives the base channels, the block counts give
    /// the steps (at a 512 input) and the residual depth, the blocks' channels the range (see
    /// [`narrowed`](Self::narrowed)) and `out_mask_conv` the classes. Whether every shape then
    /// fits is for the strict load to say.
    pub fn from_state_dict(sd: &StateDict) -> std::result::Result<Self, Error> {
        let mismatch = |details: String| Error::ModelMismatch {
            network: Network::ParseNet,
            path: sd.path.clone(),
            expected: "tensors named and shaped as in GPEN's face_parse/parse_model.py".into(),
            details,
        };
        let shape = |name: &str| -> std::result::Result<Vec<i64>, Error> {
            let t = sd.get(name).ok_or_else(|| mismatch(format!("no `{name}` (not a ParseNet checkpoint)")))?;
            match t.size() {
                s if s.len() == 4 => Ok(s),
                s => Err(mismatch(format!("`{name}` has shape {s:?}, expected 4 dimensions"))),
            }
        };
        let base_ch = shape("encoder.0.conv2d.weight")?[0];
        let parsing_ch = shape("out_mask_conv.conv2d.weight")?[0];
        let count =
            |part: &str, from: usize| (from..).take_while(|i| sd.get(&format!("{part}.{i}.conv1.conv2d.weight")).is_some()).count() as i64;
        let (down, res_depth, up) = (count("encoder", 1), count("body", 0), count("decoder", 0));
        if down > 9 || up > 9 {
            return Err(mismatch(format!("{down} encoder and {up} decoder blocks; a 512 input allows at most 9")));
        }
        let mut used = vec![shape("out_mask_conv.conv2d.weight")?[1]];
        for (part, from, n) in [("encoder", 1, down), ("body", 0, res_depth), ("decoder", 0, up)] {
            for i in from..from + n {
                let s = shape(&format!("{part}.{i}.conv1.conv2d.weight"))?;
                used.extend([s[0], s[1]]);
            }
        }
        if down > 0 && used[2] != base_ch {
            return Err(mismatch(format!("`encoder.1` takes {} channels but `encoder.0` gives {base_ch}", used[2])));
        }
        let ch_range = [*used.iter().min().unwrap_or(&base_ch), *used.iter().max().unwrap_or(&base_ch)];
        let min_feat_size = 512 >> down;
        Ok(ParseConfig { in_size: 512, out_size: min_feat_size << up, min_feat_size, base_ch, parsing_ch, res_depth, ch_range })
    }

    /// The configuration in words, as errors name it.
    pub fn describe(&self) -> String {
        format!(
            "ParseNet (base_ch {}, ch_range {:?}, res_depth {}, parsing_ch {}, {} down and {} up steps)",
            self.base_ch,
            self.ch_range,
            self.res_depth,
            self.parsing_ch,
            self.down_steps(),
            self.up_steps()
        )
    }

    /// Floating-point operations (two per multiply-add) of one forward on an `h x w` input
    /// (multiples of `2^down_steps`), with or without the image head.
    pub fn flops(&self, h: i64, w: i64, with_image: bool) -> f64 {
        let conv = |cin: i64, cout: i64, px: i64| 2.0 * (cin * cout * 9) as f64 * px as f64;
        let mut px = h * w;
        let mut total = conv(3, self.base_ch, px);
        let (blocks, head) = self.plan();
        for (_, cin, cout, scale) in blocks {
            total += match scale {
                // shortcut and conv2 at the halved size, conv1 at the input's
                Scale::Down => {
                    px /= 4;
                    conv(cin, cout, px) + conv(cin, cout, 4 * px) + conv(cout, cout, px)
                }
                Scale::Up => {
                    px *= 4;
                    2.0 * conv(cin, cout, px) + conv(cout, cout, px)
                }
                Scale::None if cin == cout => 2.0 * conv(cin, cout, px),
                Scale::None => 2.0 * conv(cin, cout, px) + conv(cout, cout, px),
            };
        }
        total + conv(head, self.parsing_ch, px) + if with_image { conv(head, 3, px) } else { 0.0 }
    }

    /// Parameters (weights, biases and batch-norm affine terms, as PyTorch counts them).
    pub fn parameters(&self) -> i64 {
        let conv = |cin: i64, cout: i64, bn: bool| cin * cout * 9 + if bn { 2 * cout } else { cout };
        let (blocks, head) = self.plan();
        let mut n = conv(3, self.base_ch, false) + conv(head, self.parsing_ch, false) + conv(head, 3, false);
        for (_, cin, cout, scale) in blocks {
            let shortcut = if scale == Scale::None && cin == cout { 0 } else { conv(cin, cout, false) };
            n += shortcut + conv(cin, cout, true) + conv(cout, cout, true);
        }
        n
    }
}

/// What a [`ConvLayer`] does to the size before or while convolving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    None,
    /// Nearest-neighbour upsampling x2 before the padding.
    Up,
    /// Stride 2.
    Down,
}

/// `ConvLayer`: optional nearest x2 upsampling, reflection padding of 1, a 3x3 convolution
/// (`{prefix}.conv2d`), batch norm (`{prefix}.norm.norm`, folded in) and LeakyReLU(0.2) where
/// asked.
#[derive(Debug)]
pub struct ConvLayer {
    conv: Conv2d,
    scale: Scale,
    relu: bool,
}

impl ConvLayer {
    /// No norm, no activation, with a bias (`encoder.0`, shortcuts, output heads).
    pub fn new(p: &Params, prefix: &str, cin: i64, cout: i64, scale: Scale) -> Result<Self> {
        let spec = ConvSpec::new(cin, cout, 3, if scale == Scale::Down { 2 } else { 1 }, 0);
        Ok(ConvLayer { conv: Conv2d::new(p, &format!("{prefix}.conv2d"), spec, true)?, scale, relu: false })
    }

    /// Batch norm folded in, no bias of its own, then LeakyReLU(0.2) if `relu`.
    pub fn with_batch_norm(p: &Params, prefix: &str, cin: i64, cout: i64, scale: Scale, relu: bool) -> Result<Self> {
        let spec = ConvSpec::new(cin, cout, 3, if scale == Scale::Down { 2 } else { 1 }, 0);
        let conv = Conv2d::with_batch_norm(p, &format!("{prefix}.conv2d"), &format!("{prefix}.norm.norm"), spec)?;
        Ok(ConvLayer { conv, scale, relu })
    }

    fn to_kind(&self, kind: Kind) -> Result<Self> {
        Ok(ConvLayer { conv: self.conv.to_kind(kind)?, scale: self.scale, relu: self.relu })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let padded = if self.scale == Scale::Up {
            let s = x.size();
            x.f_upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0)?.f_reflection_pad2d([1, 1, 1, 1])?
        } else {
            x.f_reflection_pad2d([1, 1, 1, 1])?
        };
        let mut y = self.conv.forward(&padded)?;
        drop(padded);
        if self.relu {
            leaky_relu_(&mut y, LEAKY_SLOPE)?;
        }
        Ok(y)
    }
}

/// `ResidualBlock`: `shortcut(x) + conv2(conv1(x))`; the shortcut is the identity when the
/// block keeps both size and channels, else a plain [`ConvLayer`] (`shortcut_func`).
#[derive(Debug)]
pub struct ResidualBlock {
    shortcut: Option<ConvLayer>,
    conv1: ConvLayer,
    conv2: ConvLayer,
}

impl ResidualBlock {
    pub fn new(p: &Params, prefix: &str, cin: i64, cout: i64, scale: Scale) -> Result<Self> {
        let shortcut = if scale == Scale::None && cin == cout {
            None
        } else {
            Some(ConvLayer::new(p, &format!("{prefix}.shortcut_func"), cin, cout, scale)?)
        };
        let (scale1, scale2) = match scale {
            Scale::Up => (Scale::Up, Scale::None),
            Scale::Down => (Scale::None, Scale::Down),
            Scale::None => (Scale::None, Scale::None),
        };
        Ok(ResidualBlock {
            shortcut,
            conv1: ConvLayer::with_batch_norm(p, &format!("{prefix}.conv1"), cin, cout, scale1, true)?,
            conv2: ConvLayer::with_batch_norm(p, &format!("{prefix}.conv2"), cout, cout, scale2, false)?,
        })
    }

    fn to_kind(&self, kind: Kind) -> Result<Self> {
        Ok(ResidualBlock {
            shortcut: self.shortcut.as_ref().map(|s| s.to_kind(kind)).transpose()?,
            conv1: self.conv1.to_kind(kind)?,
            conv2: self.conv2.to_kind(kind)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut res = self.conv2.forward(&self.conv1.forward(x)?)?;
        match &self.shortcut {
            Some(s) => res.f_add_(&s.forward(x)?),
            None => res.f_add_(x),
        }
    }
}

/// The network with its weights, on a device, computing in one precision.
#[derive(Debug)]
pub struct ParseNet {
    cfg: ParseConfig,
    /// `encoder.0`.
    first: ConvLayer,
    /// `encoder.1..`.
    encoder: Vec<ResidualBlock>,
    body: Vec<ResidualBlock>,
    decoder: Vec<ResidualBlock>,
    out_img_conv: ConvLayer,
    out_mask_conv: ConvLayer,
    device: Device,
    kind: Kind,
    path: PathBuf,
}

// SAFETY: as for the other networks: the weights are only read after construction, and
// libtorch allows concurrent reads, so streams may share one parser.
unsafe impl Sync for ParseNet {}

impl ParseNet {
    /// Loads a checkpoint (`.pth` or `.safetensors`) with the configuration read from its
    /// shapes, strictly: a file that is not ParseNet, has another class count than GPEN's 19, or
    /// misses, adds or mis-shapes tensors is an [`Error::ModelMismatch`] naming them all.
    /// `kind` is the compute precision (fp32, fp16 or bf16).
    pub fn load(path: &Path, device: Device, kind: Kind) -> std::result::Result<Self, Error> {
        let sd = crate::checkpoint::load(path, None)?;
        let cfg = ParseConfig::from_state_dict(&sd)?;
        if cfg.parsing_ch != PARSING_CLASSES {
            return Err(Error::ModelMismatch {
                network: Network::ParseNet,
                path: path.into(),
                expected: format!("{PARSING_CLASSES} CelebAMask-HQ classes, as GPEN's paste mask needs"),
                details: format!("`out_mask_conv.conv2d.weight` gives {} classes", cfg.parsing_ch),
            });
        }
        Self::from_state_dict(&sd, cfg, device, kind)
    }

    /// The network of `cfg` from `sd`, which must match it exactly (`num_batches_tracked`
    /// aside).
    pub fn from_state_dict(sd: &StateDict, cfg: ParseConfig, device: Device, kind: Kind) -> std::result::Result<Self, Error> {
        if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
            return Err(Error::invalid(Setting::Precision, format!("{kind:?} for ParseNet"), "use fp32, fp16 or bf16"));
        }
        let _guard = tch::no_grad_guard();
        let p = Params::new(sd, device);
        let model = Self::build(&p, cfg, device)?;
        p.finish(Network::ParseNet, &cfg.describe())?;
        if kind == Kind::Float {
            return Ok(model);
        }
        let blocks = |v: &[ResidualBlock]| v.iter().map(|b| b.to_kind(kind)).collect::<Result<Vec<_>>>();
        Ok(ParseNet {
            first: model.first.to_kind(kind)?,
            encoder: blocks(&model.encoder)?,
            body: blocks(&model.body)?,
            decoder: blocks(&model.decoder)?,
            out_img_conv: model.out_img_conv.to_kind(kind)?,
            out_mask_conv: model.out_mask_conv.to_kind(kind)?,
            kind,
            ..model
        })
    }

    fn build(p: &Params, cfg: ParseConfig, device: Device) -> Result<Self> {
        let (blocks, head) = cfg.plan();
        let (mut encoder, mut body, mut decoder) = (Vec::new(), Vec::new(), Vec::new());
        for (prefix, cin, cout, scale) in blocks {
            let block = ResidualBlock::new(p, &prefix, cin, cout, scale)?;
            match scale {
                Scale::Down => encoder.push(block),
                Scale::None => body.push(block),
                Scale::Up => decoder.push(block),
            }
        }
        Ok(ParseNet {
            cfg,
            first: ConvLayer::new(p, "encoder.0", 3, cfg.base_ch, Scale::None)?,
            encoder,
            body,
            decoder,
            out_img_conv: ConvLayer::new(p, "out_img_conv", head, 3, Scale::None)?,
            out_mask_conv: ConvLayer::new(p, "out_mask_conv", head, cfg.parsing_ch, Scale::None)?,
            device,
            kind: Kind::Float,
            path: p.path().to_owned(),
        })
    }

    /// Every tensor of a state dict of `cfg` with its shape, `num_batches_tracked` aside.
    pub fn expected_shapes(cfg: ParseConfig) -> Vec<(String, Vec<i64>)> {
        let empty = StateDict::new("<shapes>".into(), Vec::new());
        let p = Params::new(&empty, Device::Cpu);
        // Building against nothing records every request (with zeros in place of weights).
        let _model = Self::build(&p, cfg, Device::Cpu);
        p.requested()
    }

    pub fn config(&self) -> ParseConfig {
        self.cfg
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The checkpoint it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The body's features: `feat + body(feat)` through the decoder, in the compute precision.
    fn features(&self, x: &Tensor) -> std::result::Result<Tensor, Error> {
        let s = x.size();
        let multiple = 1 << self.cfg.down_steps();
        if s.len() != 4 || s[1] != 3 || s[2] % multiple != 0 || s[3] % multiple != 0 || s[2] == 0 || s[3] == 0 {
            return Err(Error::NetworkInput {
                network: Network::ParseNet,
                problem: format!("it takes N x 3 x H x W with H and W multiples of {multiple}, not {s:?}"),
            });
        }
        let x = x.f_to_device(self.device)?.f_to_kind(self.kind)?;
        let mut feat = self.first.forward(&x)?;
        drop(x);
        for block in &self.encoder {
            feat = block.forward(&feat)?;
        }
        let mut h = feat.shallow_clone();
        for block in &self.body {
            h = block.forward(&h)?;
        }
        let mut h = if self.body.is_empty() { feat.f_add(&feat)? } else { h.f_add_(&feat)? };
        drop(feat);
        for block in &self.decoder {
            h = block.forward(&h)?;
        }
        Ok(h)
    }

    /// The `N x 19 x H x W` class logits (`out_mask_conv`, as fp32) of `N x 3 x H x W` RGB faces
    /// in [-1, 1] (`v / 255 * 2 - 1`), on any device and in any precision.
    pub fn forward(&self, x: &Tensor) -> std::result::Result<Tensor, Error> {
        let _guard = tch::no_grad_guard();
        let h = self.features(x)?;
        Ok(self.out_mask_conv.forward(&h)?.f_to_kind(Kind::Float)?)
    }

    /// The class logits and the image head (`out_img_conv`), as the Python `forward` returns
    /// them, both as fp32.
    pub fn forward_both(&self, x: &Tensor) -> std::result::Result<(Tensor, Tensor), Error> {
        let _guard = tch::no_grad_guard();
        let h = self.features(x)?;
        let mask = self.out_mask_conv.forward(&h)?.f_to_kind(Kind::Float)?;
        Ok((mask, self.out_img_conv.forward(&h)?.f_to_kind(Kind::Float)?))
    }
}

/// A state dict of `cfg`'s shapes with small random weights and batch-norm statistics, with
/// `num_batches_tracked` as in real files (benchmarks and tests).
pub fn random_state_dict(cfg: &ParseConfig, seed: i64) -> StateDict {
    crate::sys::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let mut tensors = Vec::new();
    for (name, shape) in ParseNet::expected_shapes(*cfg) {
        let t = if name.ends_with(".running_var") {
            Tensor::rand(&shape[..], opts) + 0.5
        } else if name.ends_with(".norm.norm.weight") {
            Tensor::rand(&shape[..], opts) * 0.5 + 0.75
        } else if shape.len() == 4 {
            Tensor::randn(&shape[..], opts) * (1.0 / ((shape[1] * 9) as f64).sqrt())
        } else {
            Tensor::randn(&shape[..], opts) * 0.1
        };
        let counter = name.strip_suffix(".running_var").map(|bn| format!("{bn}.num_batches_tracked"));
        tensors.push((name, t));
        if let Some(counter) = counter {
            tensors.push((counter, Tensor::from(0i64)));
        }
    }
    StateDict::new("random".into(), tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ParseConfig {
        ParseConfig { base_ch: 8, ch_range: [8, 32], res_depth: 3, ..ParseConfig::default() }
    }

    #[test]
    fn parse_config_is_read_back_from_the_shapes() {
        for cfg in [ParseConfig::default(), tiny(), ParseConfig { parsing_ch: 11, res_depth: 0, ..tiny() }] {
            let sd = random_state_dict(&cfg, 1);
            assert_eq!(ParseConfig::from_state_dict(&sd).unwrap(), cfg.narrowed(), "{cfg:?}");
        }
        assert_eq!(ParseConfig::default().narrowed().ch_range, [64, 256]);
        assert_eq!(tiny().narrowed(), tiny());
    }

    #[test]
    fn parse_official_counts_match_gpen() {
        let cfg = ParseConfig::default();
        let sd = random_state_dict(&cfg, 1);
        // As `parsenet-and-paste.md` counts them: 21.3 M parameters, 238 tensors (154 tiny).
        assert_eq!(sd.len(), 238);
        assert_eq!(random_state_dict(&tiny(), 1).len(), 154);
        assert_eq!(tiny().parameters(), 206_542);
        let params: i64 =
            sd.iter().filter(|(n, _)| !n.contains("running_") && !n.ends_with("tracked")).map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(params, cfg.parameters());
        assert!((cfg.parameters() as f64 / 1e6 - 21.3).abs() < 0.05, "{}", cfg.parameters());
        let gflop = cfg.flops(512, 512, false) / 1e9;
        assert!((gflop - 468.08).abs() < 0.01, "{gflop}");
    }

    #[test]
    fn parse_net_runs_and_refuses_what_it_cannot_take() {
        let cfg = ParseConfig { res_depth: 1, ..tiny() };
        let net = ParseNet::from_state_dict(&random_state_dict(&cfg, 2), cfg, Device::Cpu, Kind::Float).unwrap();
        let (mask, img) = net.forward_both(&Tensor::zeros([1, 3, 64, 32], (Kind::Float, Device::Cpu))).unwrap();
        assert_eq!((mask.size(), img.size()), (vec![1, 19, 64, 32], vec![1, 3, 64, 32]));
        let e = net.forward(&Tensor::zeros([1, 3, 64, 40], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(e.to_string().contains("multiples of 16"), "{e}");
        let e = ParseNet::from_state_dict(&random_state_dict(&cfg, 2), cfg, Device::Cpu, Kind::Int).unwrap_err();
        assert!(matches!(e, Error::InvalidSetting { setting: Setting::Precision, .. }), "{e}");
    }
}
