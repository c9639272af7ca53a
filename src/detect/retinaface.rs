//! RetinaFace (Pytorch_Retinaface `models/retinaface.py`, `models/net.py`) with a MobileNet-0.25
//! or ResNet-50 backbone, BatchNorm folded into the convolutions at load.

use std::path::Path;

use tch::{Device, Kind, TchError, Tensor};

use super::face::Face;
use super::priors::{decode, PriorConfig};
use crate::checkpoint::StateDict;
use crate::nn::{leaky_relu, Conv2d, ConvSpec, Params};
use crate::{Error, Network, Setting};

type Result<T> = std::result::Result<T, TchError>;

/// The two published MobileNet-0.25 weight sets differ in activation and anchors, and each
/// gives garbage under the other's settings, so the variant is never guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectorVariant {
    /// biubug6/Face-Detector-1MB-with-landmark: ReLU, anchors 10/20, 32/64, 128/256.
    Fd1mb,
    /// Pytorch_Retinaface (and GPEN's RetinaFace-R50): LeakyReLU(0.1) in the MobileNet parts,
    /// anchors 16/32, 64/128, 256/512.
    Standard,
}

impl DetectorVariant {
    pub fn priors(self) -> PriorConfig {
        match self {
            DetectorVariant::Fd1mb => PriorConfig::small(),
            DetectorVariant::Standard => PriorConfig::standard(),
        }
    }

    /// Slope of the LeakyReLU in the MobileNet backbone, FPN and SSH (64 channels or fewer).
    fn slope(self) -> f64 {
        match self {
            DetectorVariant::Fd1mb => 0.0,
            DetectorVariant::Standard => 0.1,
        }
    }
}

/// sha256 of the published files whose variant is known.
const KNOWN_FILES: [(&str, DetectorVariant, &str); 2] = [
    (
        "ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1",
        DetectorVariant::Fd1mb,
        "Face-Detector-1MB mobilenet0.25_Final.pth",
    ),
    (
        "38ec7bb3c9cbfe2f40edabc05fab970a6d648747cbc534092be85d5eb9b37ed0",
        DetectorVariant::Standard,
        "Pytorch_Retinaface mobilenet0.25_Final.pth",
    ),
];

/// `conv_bn` / `conv_bn_no_relu` / `conv_bn1X1`: conv, BatchNorm, optional LeakyReLU.
#[derive(Debug)]
struct ConvBn {
    conv: Conv2d,
    slope: Option<f64>,
}

impl ConvBn {
    fn new(p: &Params, prefix: &str, spec: ConvSpec, slope: Option<f64>) -> Result<Self> {
        Ok(ConvBn { conv: Conv2d::with_batch_norm(p, &format!("{prefix}.0"), &format!("{prefix}.1"), spec)?, slope })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv.forward(x)?;
        match self.slope {
            Some(s) => leaky_relu(&y, s),
            None => Ok(y),
        }
    }
}

/// `conv_dw`: depthwise 3x3 + BN + act, pointwise 1x1 + BN + act (keys .0/.1 and .3/.4).
#[derive(Debug)]
struct ConvDw {
    depthwise: Conv2d,
    pointwise: Conv2d,
    slope: f64,
}

impl ConvDw {
    fn new(p: &Params, prefix: &str, inp: i64, oup: i64, stride: i64, slope: f64) -> Result<Self> {
        Ok(ConvDw {
            depthwise: Conv2d::with_batch_norm(
                p,
                &format!("{prefix}.0"),
                &format!("{prefix}.1"),
                ConvSpec::new(inp, inp, 3, stride, 1).groups(inp),
            )?,
            pointwise: Conv2d::with_batch_norm(p, &format!("{prefix}.3"), &format!("{prefix}.4"), ConvSpec::new(inp, oup, 1, 1, 0))?,
            slope,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = leaky_relu(&self.depthwise.forward(x)?, self.slope)?;
        leaky_relu(&self.pointwise.forward(&y)?, self.slope)
    }
}

/// `MobileNetV1` (width 0.25) of net.py; returns stage1, stage2, stage3.
#[derive(Debug)]
struct MobileNetV1 {
    first: ConvBn,
    stages: [Vec<ConvDw>; 3],
}

impl MobileNetV1 {
    fn new(p: &Params, slope: f64) -> Result<Self> {
        let first = ConvBn::new(p, "body.stage1.0", ConvSpec::new(3, 8, 3, 2, 1), Some(slope))?;
        // (input, output, stride) of the depthwise-separable blocks, per stage.
        let plan: [&[(i64, i64, i64)]; 3] = [
            &[(8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)],
            &[(64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 128, 1), (128, 128, 1), (128, 128, 1)],
            &[(128, 256, 2), (256, 256, 1)],
        ];
        let mut stages: [Vec<ConvDw>; 3] = Default::default();
        for (s, blocks) in plan.iter().enumerate() {
            let offset = if s == 0 { 1 } else { 0 }; // stage1.0 is the plain conv
            for (i, &(inp, oup, stride)) in blocks.iter().enumerate() {
                let prefix = format!("body.stage{}.{}", s + 1, i + offset);
                stages[s].push(ConvDw::new(p, &prefix, inp, oup, stride, slope)?);
            }
        }
        Ok(MobileNetV1 { first, stages })
    }

    fn forward(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let mut h = self.first.forward(x)?;
        let mut outs = Vec::with_capacity(3);
        for stage in &self.stages {
            for block in stage {
                h = block.forward(&h)?;
            }
            outs.push(h.shallow_clone());
        }
        Ok([outs.remove(0), outs.remove(0), outs.remove(0)])
    }
}

/// torchvision `Bottleneck` (ResNet v1.5: the stride sits on the 3x3 conv).
#[derive(Debug)]
struct Bottleneck {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    downsample: Option<Conv2d>,
}

impl Bottleneck {
    fn new(p: &Params, prefix: &str, inp: i64, width: i64, stride: i64, downsample: bool) -> Result<Self> {
        let bn = |conv: &str, bn: &str, spec| Conv2d::with_batch_norm(p, &format!("{prefix}.{conv}"), &format!("{prefix}.{bn}"), spec);
        Ok(Bottleneck {
            conv1: bn("conv1", "bn1", ConvSpec::new(inp, width, 1, 1, 0))?,
            conv2: bn("conv2", "bn2", ConvSpec::new(width, width, 3, stride, 1))?,
            conv3: bn("conv3", "bn3", ConvSpec::new(width, width * 4, 1, 1, 0))?,
            downsample: if downsample {
                Some(bn("downsample.0", "downsample.1", ConvSpec::new(inp, width * 4, 1, stride, 0))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(x)?.f_relu()?;
        let y = self.conv2.forward(&y)?.f_relu()?;
        let y = self.conv3.forward(&y)?;
        let identity = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.shallow_clone(),
        };
        y.f_add(&identity)?.f_relu()
    }
}

/// torchvision ResNet-50 up to layer4; returns layer2, layer3, layer4.
#[derive(Debug)]
struct ResNet50 {
    stem: Conv2d,
    layers: [Vec<Bottleneck>; 4],
}

impl ResNet50 {
    fn new(p: &Params) -> Result<Self> {
        let stem = Conv2d::with_batch_norm(p, "body.conv1", "body.bn1", ConvSpec::new(3, 64, 7, 2, 3))?;
        let mut layers: [Vec<Bottleneck>; 4] = Default::default();
        let mut inp = 64;
        for (l, (&blocks, &width)) in [3, 4, 6, 3].iter().zip(&[64i64, 128, 256, 512]).enumerate() {
            for b in 0..blocks {
                let stride = if b == 0 && l > 0 { 2 } else { 1 };
                layers[l].push(Bottleneck::new(p, &format!("body.layer{}.{b}", l + 1), inp, width, stride, b == 0)?);
                inp = width * 4;
            }
        }
        Ok(ResNet50 { stem, layers })
    }

    fn forward(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let h = self.stem.forward(x)?.f_relu()?;
        let mut h = h.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        let mut outs = Vec::with_capacity(3);
        for (l, layer) in self.layers.iter().enumerate() {
            for block in layer {
                h = block.forward(&h)?;
            }
            if l > 0 {
                outs.push(h.shallow_clone());
            }
        }
        Ok([outs.remove(0), outs.remove(0), outs.remove(0)])
    }
}

#[derive(Debug)]
enum Backbone {
    MobileNet(MobileNetV1),
    ResNet50(ResNet50),
}

/// `FPN`: lateral 1x1 convs, nearest up-sampling, 3x3 merges.
#[derive(Debug)]
struct Fpn {
    outputs: [ConvBn; 3],
    merge1: ConvBn,
    merge2: ConvBn,
}

impl Fpn {
    fn new(p: &Params, in_channels: [i64; 3], out: i64, slope: f64) -> Result<Self> {
        let lateral = |i: usize| ConvBn::new(p, &format!("fpn.output{}", i + 1), ConvSpec::new(in_channels[i], out, 1, 1, 0), Some(slope));
        Ok(Fpn {
            outputs: [lateral(0)?, lateral(1)?, lateral(2)?],
            merge1: ConvBn::new(p, "fpn.merge1", ConvSpec::new(out, out, 3, 1, 1), Some(slope))?,
            merge2: ConvBn::new(p, "fpn.merge2", ConvSpec::new(out, out, 3, 1, 1), Some(slope))?,
        })
    }

    fn forward(&self, x: &[Tensor; 3]) -> Result<[Tensor; 3]> {
        let o1 = self.outputs[0].forward(&x[0])?;
        let o2 = self.outputs[1].forward(&x[1])?;
        let o3 = self.outputs[2].forward(&x[2])?;
        let up = |t: &Tensor, like: &Tensor| {
            let s = like.size();
            t.f_upsample_nearest2d([s[2], s[3]], None, None)
        };
        let o2 = self.merge2.forward(&o2.f_add(&up(&o3, &o2)?)?)?;
        let o1 = self.merge1.forward(&o1.f_add(&up(&o2, &o1)?)?)?;
        Ok([o1, o2, o3])
    }
}

/// `SSH`: 3x3, 5x5 and 7x7 context branches (stacked 3x3 convs), concatenated, ReLU.
#[derive(Debug)]
struct Ssh {
    conv3x3: ConvBn,
    conv5x5_1: ConvBn,
    conv5x5_2: ConvBn,
    conv7x7_2: ConvBn,
    conv7x7_3: ConvBn,
}

impl Ssh {
    fn new(p: &Params, prefix: &str, c: i64, slope: f64) -> Result<Self> {
        let conv =
            |name: &str, i, o, act: bool| ConvBn::new(p, &format!("{prefix}.{name}"), ConvSpec::new(i, o, 3, 1, 1), act.then_some(slope));
        Ok(Ssh {
            conv3x3: conv("conv3X3", c, c / 2, false)?,
            conv5x5_1: conv("conv5X5_1", c, c / 4, true)?,
            conv5x5_2: conv("conv5X5_2", c / 4, c / 4, false)?,
            conv7x7_2: conv("conv7X7_2", c / 4, c / 4, true)?,
            conv7x7_3: conv("conv7x7_3", c / 4, c / 4, false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c3 = self.conv3x3.forward(x)?;
        let c5_1 = self.conv5x5_1.forward(x)?;
        let c5 = self.conv5x5_2.forward(&c5_1)?;
        let c7 = self.conv7x7_3.forward(&self.conv7x7_2.forward(&c5_1)?)?;
        Tensor::f_cat(&[c3, c5, c7], 1)?.f_relu()
    }
}

/// The raw outputs of the network, one row per prior.
#[derive(Debug)]
pub struct RawDetections {
    /// `N x 4` box regressions.
    pub loc: Tensor,
    /// `N` face probabilities (softmax of the class head, index 1).
    pub scores: Tensor,
    /// `N x 10` landmark regressions.
    pub landms: Tensor,
}

/// RetinaFace with its weights, on a device.
#[derive(Debug)]
pub struct RetinaFace {
    backbone: Backbone,
    fpn: Fpn,
    ssh: [Ssh; 3],
    class_head: [Conv2d; 3],
    bbox_head: [Conv2d; 3],
    landmark_head: [Conv2d; 3],
    variant: DetectorVariant,
    /// BGR channel means subtracted from the 0..255 input.
    mean: Tensor,
    device: Device,
    /// What the network computes in: fp32, or bf16 (scores and boxes come out in fp32).
    kind: Kind,
}

const ANCHORS: i64 = 2;

// SAFETY: as for the generator: the weights are only read after construction, and libtorch
// allows concurrent reads, so streams may share one detector.
unsafe impl Sync for RetinaFace {}

impl RetinaFace {
    /// Loads a detector checkpoint. `variant` overrides recognition: without it, a ResNet-50
    /// file is taken as standard, and a MobileNet-0.25 file must be one of the known files.
    pub fn load(path: &Path, variant: Option<DetectorVariant>, device: Device) -> std::result::Result<Self, Error> {
        Self::load_in(path, variant, device, Kind::Float)
    }

    /// As [`load`](Self::load), the network computing in `kind` (`BFloat16` on CPUs with bf16
    /// instructions): its weights folded in fp32, then rounded once.
    pub fn load_in(path: &Path, variant: Option<DetectorVariant>, device: Device, kind: Kind) -> std::result::Result<Self, Error> {
        let bytes = crate::checkpoint::read_sized(path)?;
        let sd = crate::checkpoint::load_bytes(path, &bytes, None)?;
        let sd = strip_prefix(sd, "module.");
        let resnet = sd.get("body.conv1.weight").is_some();
        let mobilenet = sd.get("body.stage1.0.0.weight").is_some();
        let variant = match (variant, resnet, mobilenet) {
            (_, false, false) => {
                return Err(Error::ModelMismatch {
                    network: Network::RetinaFace,
                    path: path.into(),
                    expected: "RetinaFace with a MobileNet-0.25 or ResNet-50 body".into(),
                    details: "no `body.stage1.0.0.weight` (MobileNet-0.25) nor `body.conv1.weight` (ResNet-50)".into(),
                })
            }
            (Some(DetectorVariant::Fd1mb), true, _) => {
                return Err(Error::invalid(
                    Setting::DetectorVariant,
                    format!(
                        "{}: a ResNet-50 RetinaFace, whose anchors are the standard ones: fd1mb's would find wrong faces",
                        path.display()
                    ),
                    "set detector-variant to auto or standard for this file",
                ))
            }
            (_, true, _) => DetectorVariant::Standard,
            (forced, false, true) => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(&bytes);
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                match (KNOWN_FILES.iter().find(|(sha, _, _)| *sha == hex), forced) {
                    // A known file's variant is known: another one forced finds no faces or
                    // twice the faces.
                    (Some((_, v, name)), Some(f)) if *v != f => {
                        return Err(Error::invalid(
                            Setting::DetectorVariant,
                            format!("{}: is {name}, of variant {v:?}, not {f:?}: it would find wrong faces", path.display()),
                            "set detector-variant to auto (or to the file's variant)",
                        ))
                    }
                    (Some((_, v, _)), _) => *v,
                    (None, Some(f)) => f,
                    (None, None) => {
                        return Err(Error::invalid(
                            Setting::DetectorVariant,
                            format!(
                                "{}: a RetinaFace MobileNet-0.25 file that is not one of the known ones (sha256 {hex}); \
                                 its activation and anchors cannot be told from the file",
                                path.display()
                            ),
                            "name the variant: fd1mb (Face-Detector-1MB weights) or standard (Pytorch_Retinaface weights)",
                        ))
                    }
                }
            }
        };
        let _guard = tch::no_grad_guard();
        let p = Params::with_kind(&sd, device, kind);
        let model = Self::build(&p, resnet, variant, device, kind).map_err(Error::Torch)?;
        p.finish(Network::RetinaFace, if resnet { "ResNet-50 body" } else { "MobileNet-0.25 body" })?;
        Ok(model)
    }

    fn build(p: &Params, resnet: bool, variant: DetectorVariant, device: Device, kind: Kind) -> Result<Self> {
        let (backbone, in_channels, out, slope) = if resnet {
            (Backbone::ResNet50(ResNet50::new(p)?), [512, 1024, 2048], 256, 0.0)
        } else {
            let s = variant.slope();
            (Backbone::MobileNet(MobileNetV1::new(p, s)?), [64, 128, 256], 64, s)
        };
        let head =
            |name: &str, i: usize, k: i64| Conv2d::new(p, &format!("{name}.{i}.conv1x1"), ConvSpec::new(out, ANCHORS * k, 1, 1, 0), true);
        Ok(RetinaFace {
            backbone,
            fpn: Fpn::new(p, in_channels, out, slope)?,
            ssh: [Ssh::new(p, "ssh1", out, slope)?, Ssh::new(p, "ssh2", out, slope)?, Ssh::new(p, "ssh3", out, slope)?],
            class_head: [head("ClassHead", 0, 2)?, head("ClassHead", 1, 2)?, head("ClassHead", 2, 2)?],
            bbox_head: [head("BboxHead", 0, 4)?, head("BboxHead", 1, 4)?, head("BboxHead", 2, 4)?],
            landmark_head: [head("LandmarkHead", 0, 10)?, head("LandmarkHead", 1, 10)?, head("LandmarkHead", 2, 10)?],
            variant,
            mean: Tensor::f_from_slice(&[104f32, 117., 123.])?.f_reshape([1, 3, 1, 1])?.f_to_device(device)?,
            device,
            kind,
        })
    }

    /// Every tensor of a RetinaFace state dict with its shape (BatchNorm's
    /// `num_batches_tracked` aside): ResNet-50 (GPEN's `RetinaFace-R50.pth`) or MobileNet-0.25.
    pub fn expected_shapes(resnet: bool) -> Vec<(String, Vec<i64>)> {
        let empty = StateDict::new("<shapes>".into(), Vec::new());
        let p = Params::new(&empty, Device::Cpu);
        // Building against nothing records every request (with zeros in place of weights).
        let _model = Self::build(&p, resnet, DetectorVariant::Standard, Device::Cpu, Kind::Float);
        p.requested()
    }

    pub fn variant(&self) -> DetectorVariant {
        self.variant
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs the network on `1 x 3 x H x W` BGR values minus the channel means (in its kind).
    pub fn forward_raw(&self, x: &Tensor) -> Result<RawDetections> {
        let _guard = tch::no_grad_guard();
        let x = &x.f_to_kind(self.kind)?;
        let feats = match &self.backbone {
            Backbone::MobileNet(m) => m.forward(x)?,
            Backbone::ResNet50(r) => r.forward(x)?,
        };
        let fpn = self.fpn.forward(&feats)?;
        let mut loc = Vec::with_capacity(3);
        let mut conf = Vec::with_capacity(3);
        let mut landms = Vec::with_capacity(3);
        let b = x.size()[0];
        for (i, f) in fpn.iter().enumerate() {
            let f = self.ssh[i].forward(f)?;
            // NCHW -> N x (H*W*anchors) x k, the order the priors are listed in.
            let flat = |t: Tensor, k: i64| t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_reshape([b, -1, k]);
            loc.push(flat(self.bbox_head[i].forward(&f)?, 4)?);
            conf.push(flat(self.class_head[i].forward(&f)?, 2)?);
            landms.push(flat(self.landmark_head[i].forward(&f)?, 10)?);
        }
        let conf = Tensor::f_cat(&conf, 1)?.f_softmax(-1, Kind::Float)?;
        Ok(RawDetections {
            loc: Tensor::f_cat(&loc, 1)?.f_squeeze_dim(0)?.f_to_kind(Kind::Float)?,
            scores: conf.f_select(2, 1)?.f_squeeze_dim(0)?,
            landms: Tensor::f_cat(&landms, 1)?.f_squeeze_dim(0)?.f_to_kind(Kind::Float)?,
        })
    }

    /// The best [`TOP_K`] priors of a `1 x 3 x H x W` RGB image (values 0..255, on the
    /// detector's device), as `K x 16` rows `[score, box (4), landmarks (10), prior index]`, on
    /// the device: nothing is read yet ([`decode_candidates`](Self::decode_candidates) does it
    /// on the host), so the rows of several passes can come down in one copy.
    pub fn candidates(&self, rgb: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let x = rgb.f_flip([1])?.f_sub(&self.mean)?;
        let raw = self.forward_raw(&x)?;
        let n = raw.scores.size()[0];
        // The reference keeps the best 5000 before suppression too.
        let (scores, index) = raw.scores.f_topk(TOP_K.min(n), 0, true, false)?;
        let index_f = index.f_to_kind(Kind::Float)?.f_unsqueeze(1)?;
        Tensor::f_cat(&[scores.f_unsqueeze(1)?, raw.loc.f_index_select(0, &index)?, raw.landms.f_index_select(0, &index)?, index_f], 1)
    }

    /// The faces of candidate rows (from [`candidates`](Self::candidates) of an `H x W` image,
    /// read on the host) with a score above `threshold`, in prior order, before suppression.
    pub fn decode_candidates(&self, rows: &[f32], (h, w): (i64, i64), threshold: f64) -> Vec<Face> {
        let mut kept: Vec<&[f32]> = rows.chunks_exact(16).filter(|r| r[0] as f64 > threshold).collect();
        kept.sort_by(|a, b| a[15].total_cmp(&b[15]));
        let cfg = self.variant.priors();
        let priors = cfg.priors(h, w);
        kept.iter()
            .filter_map(|r| {
                let prior = priors.get(r[15] as usize)?;
                let l: [f32; 4] = r[1..5].try_into().ok()?;
                let lm: [f32; 10] = r[5..15].try_into().ok()?;
                let (bbox, landmarks) = decode(prior, &l, &lm, cfg.variance, (w as f32, h as f32));
                Some(Face { bbox, score: r[0], landmarks })
            })
            .collect()
    }

    /// Faces with a score above `threshold` in a `1 x 3 x H x W` RGB image with values 0..255
    /// (float, on the detector's device), in that image's pixels, before suppression.
    pub fn detect(&self, rgb: &Tensor, threshold: f64) -> Result<Vec<Face>> {
        let s = rgb.size();
        let rows = crate::transfer::download_f32(&[&self.candidates(rgb)?])?;
        Ok(self.decode_candidates(&rows[0], (s[2], s[3]), threshold))
    }
}

/// Candidates kept per pass before suppression, as the reference detector's `top_k`.
pub const TOP_K: i64 = 5000;

fn strip_prefix(sd: StateDict, prefix: &str) -> StateDict {
    if !sd.names().all(|n| n.starts_with(prefix)) {
        return sd;
    }
    let path = sd.path.clone();
    let tensors = sd.iter().map(|(n, t)| (n[prefix.len()..].to_owned(), t.shallow_clone())).collect();
    StateDict::new(path, tensors)
}
