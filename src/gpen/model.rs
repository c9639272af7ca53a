//! FullGenerator on libtorch, one struct per official Python class.
//!
//! Every op is a fallible `f_*` call so that libtorch errors (out of memory above all) come back
//! as `Result`s. Constant products the Python code recomputes on each call (`W * scale`,
//! `b * lr_mul`) are folded in once at load; that is exact, as the official code forms the same
//! elementwise product first.
//!
//! In half precision only the convolutions over feature maps run in the low precision: the
//! mapping network, the style modulation and demodulation, and the RGB skip path (three channels)
//! stay in fp32, which costs little and keeps the output within a fraction of a level of fp32.

use std::path::Path;

use tch::{Device, Kind, TchError, Tensor};

use super::config::{GpenConfig, LR_MLP};
use super::format::{as_format_of, empty_as, reshape, to_channels_last};
use super::loader::Loader;
use super::strips::{ceil_div, Banding, Strips};
use super::upfirdn::{up_conv_blur, Blur, Upsample};
use crate::checkpoint::StateDict;
use crate::error::{Error, Network};

const SQRT_2: f64 = std::f64::consts::SQRT_2;
type Result<T, E = TchError> = std::result::Result<T, E>;

/// `FusedLeakyReLU`: `sqrt(2) * leaky_relu(x + bias, 0.2)`.
#[derive(Debug)]
struct FusedLeakyReLU {
    /// `sqrt(2) * bias` and `sqrt(2)`: the gain moved in front of the activation.
    scaled_bias: Tensor,
    gain: Tensor,
}

impl FusedLeakyReLU {
    /// `rank` is the rank of the inputs (2 for linear layers, 4 for feature maps).
    fn new(l: &Loader, bias: &str, rank: usize) -> Result<Self> {
        let b = l.get(bias)?;
        let mut shape = vec![1, b.size()[0]];
        shape.resize(rank, 1);
        Self::of(b.f_reshape(shape)?)
    }

    /// With `bias` already shaped and placed.
    fn of(bias: Tensor) -> Result<Self> {
        let scaled_bias = bias.f_mul_scalar(SQRT_2)?;
        let gain = Tensor::from(SQRT_2 as f32).f_to_kind(bias.kind())?.f_to_device(bias.device())?;
        Ok(FusedLeakyReLU { scaled_bias, gain })
    }

    /// In place on `x`, which the caller gives up: no activation-sized temporaries. As
    /// `leaky_relu(sqrt(2) x + sqrt(2) bias)`: two passes over `x` instead of three.
    fn forward(&self, mut x: Tensor) -> Result<Tensor> {
        let _ = self.scaled_bias.f_addcmul_out(&x, &x, &self.gain)?;
        crate::nn::leaky_relu_(&mut x, 0.2)?;
        Ok(x)
    }
}

/// `EqualLinear`: a linear layer whose weight is scaled by `lr_mul / sqrt(in_dim)`. Always fp32:
/// it only ever sees latents.
#[derive(Debug)]
struct EqualLinear {
    weight: Tensor,
    bias: Tensor,
    activation: Option<FusedLeakyReLU>,
}

impl EqualLinear {
    fn new(l: &Loader, prefix: &str, lr_mul: f64, activation: bool) -> Result<Self> {
        let w = l.raw(&format!("{prefix}.weight"))?;
        let scale = (1.0 / (w.size()[1] as f64).sqrt()) * lr_mul;
        let weight = l.put_f32(&w.f_mul_scalar(scale)?)?;
        let b = l.raw(&format!("{prefix}.bias"))?.f_mul_scalar(lr_mul)?;
        let bias = l.put_f32(&b)?;
        let activation = if activation { Some(FusedLeakyReLU::of(bias.f_reshape([1, -1])?)?) } else { None };
        Ok(EqualLinear { weight, bias, activation })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.activation {
            Some(act) => act.forward(x.f_linear::<Tensor>(&self.weight, None)?),
            None => x.f_linear(&self.weight, Some(&self.bias)),
        }
    }
}

/// `PixelNorm`: `x * rsqrt(mean(x^2, dim=1) + 1e-8)`.
#[derive(Debug)]
struct PixelNorm;

impl PixelNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.f_square()?.f_mean_dim(1, true, None::<Kind>)?;
        x.f_mul(&mean.f_add_scalar(1e-8)?.f_rsqrt()?)
    }
}

/// `EqualConv2d` without bias (the encoder's bias lives in its `FusedLeakyReLU`).
#[derive(Debug)]
struct EqualConv2d {
    weight: Tensor,
    stride: i64,
    padding: i64,
}

impl EqualConv2d {
    fn new(l: &Loader, prefix: &str, stride: i64, padding: i64) -> Result<Self> {
        let w = l.raw(&format!("{prefix}.weight"))?;
        let s = w.size();
        let scale = 1.0 / ((s[1] * s[2] * s[3]) as f64).sqrt();
        Ok(EqualConv2d { weight: l.put(&w.f_mul_scalar(scale)?)?, stride, padding })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        x.f_conv2d::<Tensor>(&self.weight, None, [s, s], [p, p], [1, 1], 1)
    }
}

/// `ConvLayer` of the encoder: optional blur + stride-2 conv, then `FusedLeakyReLU`.
#[derive(Debug)]
struct ConvLayer {
    blur: Option<Blur>,
    conv: EqualConv2d,
    activate: FusedLeakyReLU,
}

impl ConvLayer {
    fn new(l: &Loader, prefix: &str, in_channels: i64, downsample: bool) -> Result<Self> {
        if downsample {
            Ok(ConvLayer {
                blur: Some(Blur::new(l, &format!("{prefix}.0.kernel"), in_channels, 2)?),
                conv: EqualConv2d::new(l, &format!("{prefix}.1"), 2, 0)?,
                activate: FusedLeakyReLU::new(l, &format!("{prefix}.2.bias"), 4)?,
            })
        } else {
            Ok(ConvLayer {
                blur: None,
                conv: EqualConv2d::new(l, &format!("{prefix}.0"), 1, 0)?,
                activate: FusedLeakyReLU::new(l, &format!("{prefix}.1.bias"), 4)?,
            })
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.blur {
            Some(b) => self.conv.forward(&b.forward(x)?)?,
            None => self.conv.forward(x)?,
        };
        self.activate.forward(y)
    }
}

/// How a [`ModulatedConv2d`] applies the per-sample style.
#[derive(Debug)]
enum Modulation {
    /// The official form: modulate (and demodulate) the weights per sample, then one grouped
    /// convolution over the batch. Cheaper where the feature maps are larger than the weights.
    /// `weight` is fp32 `(1, out, in, k, k)`, cast to the input's precision once modulated.
    Fused { weight: Tensor },
    /// Scale the input channels by the style and the output channels by the demodulation
    /// coefficients around a fixed weight (StyleGAN2-ADA's `fused_modconv=False`); the same
    /// function up to rounding, and cheaper at the low resolutions, where weights are large.
    /// `weight` is `(out, in, k, k)` (`(in, out, k, k)` when up-sampling) in the compute
    /// precision; `weight_sq` is fp32 `(out, in)`, the squared weights summed over the kernel.
    /// With `prenorm` (float16) `weight` is pre-normalised, see [`PreNorm`].
    Unfused { weight: Tensor, weight_sq: Tensor, prenorm: Option<PreNorm> },
}

/// StyleGAN2-ADA's pre-normalisation for reduced precision, on the unfused path: there the
/// activations are multiplied by the raw style and `in x k x k` products are summed in the
/// compute precision before the demodulation brings the result back to scale. Styles of a
/// few thousand (a trained mapping network can make them) then overflow float16's 65504.
///
/// Exact because of the demodulation. With `y = conv(x * s, W)` and the fp32 coefficient
/// `d[b, o] = rsqrt(S[b, o] + 1e-8)`, `S[b, o] = sum over i of s[b, i]^2 * sum over k, k of W[o, i]^2`,
/// the output is `y * d`. Scale each output channel's weights by `g[o] = 1 / (max |W[o]| *
/// sqrt(in * k * k))` (its largest entry becomes `1 / sqrt(in * k * k)`, as in ADA) and each
/// sample's style by `1 / c[b]`, `c[b] = max |s[b]|` (its largest entry becomes 1). The
/// convolution is linear in both, so it gives `y' = y * g[o] / c[b]`, and then
/// `y' * (d[b, o] * c[b] / g[o]) = y * d[b, o]`: the same output with the same epsilon, the
/// only difference being rounding. (ADA recomputes the epsilon on the scaled operands, which
/// moves it by `(c / g)^2`; applying the scale to the fp32 coefficient instead keeps it.)
/// Bounds in the compute precision: `|x * s'| <= |x|` and `|y'| <= sqrt(in * k * k) * max |x|`.
/// The cost is one `max` over the `b x in` styles per layer; the weights are scaled at load.
#[derive(Debug)]
struct PreNorm {
    /// `1 / g[o]` as fp32 `(1, out)`.
    inv_gain: Tensor,
}

/// `ModulatedConv2d`: a convolution modulated by the style, optionally demodulated.
#[derive(Debug)]
struct ModulatedConv2d {
    modulation_kind: Modulation,
    modulation: EqualLinear,
    demodulate: bool,
    /// Present on up-sampling convs: the blur after the transposed convolution.
    blur: Option<Blur>,
    in_channels: i64,
    out_channels: i64,
    kernel_size: i64,
}

impl ModulatedConv2d {
    /// `in_res` is the side of the input feature map, which decides the cheaper modulation.
    fn new(l: &Loader, prefix: &str, demodulate: bool, upsample: bool, in_res: i64) -> Result<Self> {
        let w = l.raw(&format!("{prefix}.weight"))?;
        let s = w.size();
        let (out_channels, in_channels, kernel_size) = (s[1], s[2], s[3]);
        let scale = 1.0 / ((in_channels * kernel_size * kernel_size) as f64).sqrt();
        let weight = w.f_mul_scalar(scale)?;
        let out_res = if upsample { 2 * in_res } else { in_res };
        let weight_work = out_channels * in_channels * kernel_size * kernel_size;
        let map_work = in_channels * in_res * in_res + out_channels * out_res * out_res;
        let modulation_kind = if weight_work > map_work {
            let mut w4 = weight.f_squeeze_dim(0)?;
            let weight_sq = l.put_f32(&w4.f_square()?.f_sum_dim_intlist(&[2i64, 3][..], false, None::<Kind>)?)?;
            // float16 only: bfloat16 has fp32's range, so neither it nor fp32 can overflow here,
            // and their figures (parity, speed, memory) stay those of the official operation order.
            let prenorm = if demodulate && l.kind == Kind::Half {
                let fan_in = ((in_channels * kernel_size * kernel_size) as f64).sqrt();
                // max |W[o]| * sqrt(in k k); a channel of zeros keeps a tiny gain (its output is 0).
                let inv_gain = w4.f_abs()?.f_amax(&[1i64, 2, 3][..], false)?.f_clamp_min(1e-30)?.f_mul_scalar(fan_in)?;
                w4 = w4.f_div(&inv_gain.f_reshape([-1, 1, 1, 1])?)?;
                Some(PreNorm { inv_gain: l.put_f32(&inv_gain.f_reshape([1, -1])?)? })
            } else {
                None
            };
            let w4 = if upsample { w4.f_transpose(0, 1)? } else { w4 };
            Modulation::Unfused { weight: l.put(&w4)?, weight_sq, prenorm }
        } else {
            Modulation::Fused { weight: l.put_f32(&weight)? }
        };
        let blur = if upsample { Some(Blur::new(l, &format!("{prefix}.blur.kernel"), out_channels, 1)?) } else { None };
        Ok(ModulatedConv2d {
            modulation_kind,
            modulation: EqualLinear::new(l, &format!("{prefix}.modulation"), 1.0, false)?,
            demodulate,
            blur,
            in_channels,
            out_channels,
            kernel_size,
        })
    }

    fn forward(&self, x: &Tensor, latent: &Tensor) -> Result<Tensor> {
        let style = self.modulation.forward(latent)?;
        match &self.modulation_kind {
            Modulation::Fused { weight } => self.forward_fused(x, &style, weight),
            Modulation::Unfused { weight, weight_sq, prenorm } => self.forward_unfused(x, &style, weight, weight_sq, prenorm.as_ref()),
        }
    }

    fn forward_fused(&self, x: &Tensor, style: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let (i, o, k) = (self.in_channels, self.out_channels, self.kernel_size);
        let s = x.size();
        let (b, h, w) = (s[0], s[2], s[3]);
        let mut weight = weight.f_mul(&style.f_reshape([b, 1, i, 1, 1])?)?;
        if self.demodulate {
            let d = weight.f_square()?.f_sum_dim_intlist(&[2i64, 3, 4][..], false, None::<Kind>)?;
            let d = d.f_add_scalar(1e-8)?.f_rsqrt()?.f_reshape([b, o, 1, 1, 1])?;
            weight = weight.f_mul_(&d)?;
        }
        let weight = weight.f_to_kind(x.kind())?;
        // One grouped convolution over the batch, as the official code does.
        let x = reshape(x.shallow_clone(), [1, b * i, h, w])?;
        match &self.blur {
            Some(blur) => {
                let wt = weight.f_transpose(1, 2)?.f_reshape([b * i, o, k, k])?;
                up_conv_blur(&x, &wt, b, b, blur)
            }
            None => {
                let wt = weight.f_reshape([b * o, i, k, k])?;
                let y = x.f_conv2d::<Tensor>(&wt, None, [1, 1], [k / 2, k / 2], [1, 1], b)?;
                reshape(y, [b, o, h, w])
            }
        }
    }

    fn forward_unfused(
        &self,
        x: &Tensor,
        style: &Tensor,
        weight: &Tensor,
        weight_sq: &Tensor,
        prenorm: Option<&PreNorm>,
    ) -> Result<Tensor> {
        let (i, o, k) = (self.in_channels, self.out_channels, self.kernel_size);
        let b = x.size()[0];
        // Pre-normalised: the style scaled by 1 / c[b] (largest entry 1), see [`PreNorm`].
        let style_max = match prenorm {
            Some(_) => Some(style.f_abs()?.f_amax(&[1i64][..], true)?.f_clamp_min(1e-30)?),
            None => None,
        };
        let s_in = match &style_max {
            Some(c) => style.f_div(c)?,
            None => style.shallow_clone(),
        };
        let xs = x.f_mul(&s_in.f_to_kind(x.kind())?.f_reshape([b, i, 1, 1])?)?;
        drop(s_in);
        let y = match &self.blur {
            Some(blur) => up_conv_blur(&xs, weight, 1, b, blur)?,
            None => xs.f_conv2d::<Tensor>(weight, None, [1, 1], [k / 2, k / 2], [1, 1], 1)?,
        };
        if !self.demodulate {
            return Ok(y);
        }
        // sum over (in, k, k) of (W s)^2 = (s^2) . (sum over k, k of W^2)
        let mut d = style.f_square()?.f_matmul(&weight_sq.f_tr()?)?.f_add_scalar(1e-8)?.f_rsqrt()?;
        if let (Some(p), Some(c)) = (prenorm, &style_max) {
            // d * c[b] / g[o], in fp32: undoes both scalings.
            d = d.f_mul_(c)?.f_mul_(&p.inv_gain)?;
        }
        y.shallow_clone().f_mul_(&d.f_to_kind(y.kind())?.f_reshape([b, o, 1, 1])?)
    }
}

/// `NoiseInjection(isconcat=True)`: GPEN's "noise" is an encoder feature, concatenated. Applied
/// together with the activation that follows it ([`StyledConv::forward`]).
#[derive(Debug)]
struct NoiseInjection {
    /// `sqrt(2) * weight`: the activation's gain, moved in front of it.
    scaled_weight: Tensor,
}

/// `ConstantInput`: the learned 4x4 start of the decoder.
#[derive(Debug)]
struct ConstantInput {
    input: Tensor,
}

/// `StyledConv`: modulated conv, concatenated encoder feature, fused activation.
#[derive(Debug)]
struct StyledConv {
    conv: ModulatedConv2d,
    noise: NoiseInjection,
    activate: FusedLeakyReLU,
}

impl StyledConv {
    fn new(l: &Loader, prefix: &str, upsample: bool, in_res: i64) -> Result<Self> {
        Ok(StyledConv {
            conv: ModulatedConv2d::new(l, &format!("{prefix}.conv"), true, upsample, in_res)?,
            noise: NoiseInjection { scaled_weight: l.put(&l.raw(&format!("{prefix}.noise.weight"))?.f_mul_scalar(SQRT_2)?)? },
            activate: FusedLeakyReLU::new(l, &format!("{prefix}.activate.bias"), 4)?,
        })
    }

    /// Takes `x` so that it is freed as soon as the convolution has read it.
    ///
    /// `sqrt(2) * leaky_relu(cat([y, w * noise]) + b)` as `leaky_relu(cat([s y + s b, (s w)
    /// noise + s b]))` with `s = sqrt(2)` folded into the bias and the noise weight at load (the
    /// same function, the leaky ReLU being positively homogeneous; rounding aside): each half of
    /// the result is written once from its source, then activated in place. Three passes over
    /// the largest maps of the forward instead of seven (copy, copy, scale, bias, activation,
    /// gain), and no activation-sized temporary.
    fn forward(&self, x: Tensor, latent: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let y = self.conv.forward(&x, latent)?;
        drop(x);
        let s = y.size();
        let (cy, cn) = (s[1], noise.size()[1]);
        let mut out = empty_as(&y, [s[0], cy + cn, s[2], s[3]])?;
        let b = &self.activate.scaled_bias;
        let _ = b.f_narrow(1, 0, cy)?.f_addcmul_out(&out.f_narrow(1, 0, cy)?, &y, &self.activate.gain)?;
        drop(y);
        let _ = b.f_narrow(1, cy, cn)?.f_addcmul_out(&out.f_narrow(1, cy, cn)?, noise, &self.noise.scaled_weight)?;
        crate::nn::leaky_relu_(&mut out, 0.2)?;
        Ok(out)
    }
}

/// `ToRGB`: 1x1 modulated conv to RGB plus the up-sampled skip of the previous level; the
/// three-channel sum is kept in fp32.
#[derive(Debug)]
struct ToRGB {
    conv: ModulatedConv2d,
    bias: Tensor,
    upsample: Option<Upsample>,
}

impl ToRGB {
    fn new(l: &Loader, prefix: &str, upsample: bool, in_res: i64) -> Result<Self> {
        let upsample = if upsample { Some(Upsample::new(l, &format!("{prefix}.upsample.kernel"), 3)?) } else { None };
        Ok(ToRGB {
            conv: ModulatedConv2d::new(l, &format!("{prefix}.conv"), false, false, in_res)?,
            bias: l.put_f32(&l.raw(&format!("{prefix}.bias"))?)?,
            upsample,
        })
    }

    fn forward(&self, x: &Tensor, latent: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let y = self.conv.forward(x, latent)?.f_to_kind(Kind::Float)?.f_add_(&self.bias)?;
        match (skip, &self.upsample) {
            (Some(skip), Some(up)) => y.shallow_clone().f_add_(&up.forward(skip)?),
            _ => Ok(y),
        }
    }
}

/// `Generator`: the StyleGAN2 decoder with its mapping network.
#[derive(Debug)]
struct Generator {
    style: Vec<EqualLinear>,
    input: ConstantInput,
    conv1: StyledConv,
    to_rgb1: ToRGB,
    convs: Vec<StyledConv>,
    to_rgbs: Vec<ToRGB>,
}

impl Generator {
    fn new(l: &Loader, cfg: &GpenConfig) -> Result<Self> {
        let style = (1..=cfg.n_mlp).map(|j| EqualLinear::new(l, &format!("generator.style.{j}"), LR_MLP, true)).collect::<Result<_>>()?;
        let levels = cfg.log_size() - 2;
        let mut convs = Vec::new();
        let mut to_rgbs = Vec::new();
        for r in 0..levels {
            let res = 8 << r;
            convs.push(StyledConv::new(l, &format!("generator.convs.{}", 2 * r), true, res / 2)?);
            convs.push(StyledConv::new(l, &format!("generator.convs.{}", 2 * r + 1), false, res)?);
            to_rgbs.push(ToRGB::new(l, &format!("generator.to_rgbs.{r}"), true, res)?);
        }
        Ok(Generator {
            style,
            input: ConstantInput { input: l.get("generator.input.input")? },
            conv1: StyledConv::new(l, "generator.conv1", false, 4)?,
            to_rgb1: ToRGB::new(l, "generator.to_rgb1", false, 4)?,
            convs,
            to_rgbs,
        })
    }

    /// The mapping network: `PixelNorm` then `n_mlp` EqualLinear layers.
    fn map(&self, z: &Tensor) -> Result<Tensor> {
        let mut w = PixelNorm.forward(z)?;
        for layer in &self.style {
            w = layer.forward(&w)?;
        }
        Ok(w)
    }

    /// One level above 4x4: the up-sampling conv, the conv, and the RGB skip. `k` counts levels
    /// from 8x8.
    fn level(&self, k: usize, x: Tensor, w: &Tensor, noise: &Tensor, skip: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.convs[2 * k].forward(x, w, noise)?;
        let x = self.convs[2 * k + 1].forward(x, w, noise)?;
        let skip = self.to_rgbs[k].forward(&x, w, Some(skip))?;
        Ok((x, skip))
    }

    /// `feats` are the encoder features from the face size down to 4x4; each is freed once
    /// its level is done (unless the caller keeps a handle). With `bands`, the top levels run
    /// on bands of rows (see [`Strips`]) and `feats` lacks the top feature: the band's rows of
    /// it come from the function (start row, rows).
    fn forward(&self, w: &Tensor, mut feats: Vec<Tensor>, bands: Option<(Strips, TopFeature)>) -> Result<Tensor, Error> {
        let b = w.size()[0];
        let levels = self.to_rgbs.len();
        let missing = || Error::NetworkInput {
            network: Network::Gpen,
            problem: format!("the decoder needs {} encoder features and was given fewer", levels + 1),
        };
        let noise = feats.pop().ok_or_else(missing)?;
        // The decoder runs in the format of the encoder's features (see `format`).
        let x = as_format_of(self.input.input.f_repeat([b, 1, 1, 1])?, &noise)?;
        let mut x = self.conv1.forward(x, w, &noise)?;
        drop(noise);
        let mut skip = self.to_rgb1.forward(&x, w, None)?;
        super::profile::mark(|| "decoder 4".into());
        let levels = self.to_rgbs.len();
        let banded = bands.as_ref().map_or(0, |(s, _)| s.levels.clamp(1, levels));
        for k in 0..levels - banded {
            let noise = feats.pop().ok_or_else(missing)?;
            (x, skip) = self.level(k, x, w, &noise, &skip)?;
            super::profile::mark(|| format!("decoder {}", 8 << k));
        }
        match bands {
            Some((s, top)) => {
                if feats.len() + 1 != banded {
                    return Err(missing());
                }
                let out = self.forward_strips(w, x, skip, &feats, top, Strips { levels: banded, ..s })?;
                super::profile::mark(|| format!("decoder {}-{} in bands", 8 << (levels - banded), 4 << levels));
                Ok(out)
            }
            None => Ok(skip),
        }
    }

    /// The top `s.levels` levels on bands of `s.rows` output rows: each band starts from the
    /// rows of the last whole level that it depends on (its rows plus [`Strips::halo`] on each
    /// side), runs the levels on them, and keeps the rows that the halo made exact. `feats`
    /// holds the encoder features of the banded levels below the top, the highest first.
    fn forward_strips(&self, w: &Tensor, x: Tensor, skip: Tensor, feats: &[Tensor], top: TopFeature, s: Strips) -> Result<Tensor> {
        let first = self.to_rgbs.len() - s.levels;
        let (entry, scale) = (x.size()[2], 1i64 << s.levels);
        let size = entry * scale;
        let rows = ceil_div(s.rows.max(1), scale) * scale;
        let halo = Strips::halo(s.levels);
        let sk = skip.size();
        let out = empty_as(&skip, [sk[0], sk[1], size, size])?;
        let mut row = 0;
        while row < size {
            let n = rows.min(size - row);
            let e0 = (row / scale - halo).max(0);
            let e1 = ((row + n) / scale + halo).min(entry);
            let mut xs = x.f_narrow(2, e0, e1 - e0)?;
            let mut ss = skip.f_narrow(2, e0, e1 - e0)?;
            for j in 0..s.levels {
                let f = 2i64 << j;
                let noise = if j + 1 == s.levels {
                    top(e0 * f, (e1 - e0) * f)?
                } else {
                    feats[s.levels - 2 - j].f_narrow(2, e0 * f, (e1 - e0) * f)?
                };
                (xs, ss) = self.level(first + j, xs, w, &noise, &ss)?;
            }
            drop(xs);
            out.f_narrow(2, row, n)?.f_copy_(&ss.f_narrow(2, row - e0 * scale, n)?)?;
            row += n;
            trim_heap_on(&skip);
        }
        Ok(out)
    }
}

/// [`sys::trim_heap`](crate::sys::trim_heap) when `t` lives on the CPU: called after each
/// band (encoder and decoder), after the encoder and at the end of a forward, so that a phase's
/// peak does not come on top of what the phases before it left in the heap. (After each whole
/// decoder level it measured no lower peak, so it is not done there.) Only with
/// `GST_GPEN_KEEP_HEAP=0`: by default the heap keeps its pages ([`sys::keep_heap`](crate::sys::keep_heap)).
fn trim_heap_on(t: &Tensor) {
    if t.device() == Device::Cpu {
        crate::sys::trim_heap();
    }
}

/// The rows `(start, count)` of the top level's encoder feature, computed when a band needs them.
type TopFeature<'a> = &'a dyn Fn(i64, i64) -> Result<Tensor>;

/// What one forward pass computed, for parity checks against the official code.
#[derive(Debug)]
pub struct Intermediates {
    /// Encoder features `ecd0 .. ecdN`, from the face size down to 4x4.
    pub ecd: Vec<Tensor>,
    /// `final_linear` output.
    pub z: Tensor,
    /// Mapping network output (the latent used by every style slot).
    pub w: Tensor,
    /// Raw generator output (no clamp), `B x 3 x size x size`.
    pub output: Tensor,
}

/// `FullGenerator`: the GPEN encoder feeding the StyleGAN2 decoder.
#[derive(Debug)]
pub struct FullGenerator {
    ecd: Vec<ConvLayer>,
    final_linear: EqualLinear,
    generator: Generator,
    config: GpenConfig,
    device: Device,
    kind: Kind,
}

// SAFETY: after construction the model is only read: `forward` takes `&self` and creates new
// tensors, never writing the weights, and libtorch allows concurrent reads of a tensor from
// several threads. This is what lets streams share one model (see `registry`).
unsafe impl Sync for FullGenerator {}

impl FullGenerator {
    /// Reads a checkpoint file and builds the model (see [`FullGenerator::from_state_dict`]).
    pub fn load(path: &Path, key: Option<&str>, device: Device, kind: Kind) -> std::result::Result<Self, crate::Error> {
        let sd = crate::checkpoint::load(path, key)?;
        Self::from_state_dict(&sd, device, kind)
    }

    /// Builds the model from a state dict: the configuration comes from the tensor shapes, and
    /// the state dict must match it exactly. `kind` is the compute precision.
    pub fn from_state_dict(sd: &StateDict, device: Device, kind: Kind) -> std::result::Result<Self, crate::Error> {
        let config = GpenConfig::from_state_dict(sd)?;
        config.check_state_dict(sd)?;
        if device.is_cuda() {
            // A library user may come here without resolving a device first.
            let _ = crate::sys::load_cuda_backend();
        }
        let l = Loader { sd, device, kind };
        let build = || -> Result<Self> {
            let mut ecd = vec![ConvLayer::new(&l, "ecd0.0", 3, false)?];
            for n in 1..config.log_size() - 1 {
                let in_channels = config.channels(config.size >> (n - 1));
                ecd.push(ConvLayer::new(&l, &format!("ecd{n}.0"), in_channels, true)?);
            }
            Ok(FullGenerator {
                ecd,
                final_linear: EqualLinear::new(&l, "final_linear.0", 1.0, true)?,
                generator: Generator::new(&l, &config)?,
                config: config.clone(),
                device,
                kind,
            })
        };
        let _guard = tch::no_grad_guard();
        let model = build()?;
        if device == Device::Cpu {
            crate::sys::keep_heap();
            // The loader's temporaries (transposed, squared, scaled copies of the weights).
            crate::sys::release_heap();
        }
        Ok(model)
    }

    pub fn config(&self) -> &GpenConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Restores a batch of aligned faces: `B x 3 x size x size`, RGB in [-1, 1]. The output is
    /// fp32, on the model's device. The top levels run on bands when their maps are large
    /// ([`Strips::plan`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, Error> {
        self.forward_with(x, Banding::Default)
    }

    /// As [`forward`](Self::forward) with the banding chosen by the caller: `Banding::Off` on a
    /// GPU with room for whole maps, `Banding::Above(bytes)` to band only maps above `bytes`.
    pub fn forward_with(&self, x: &Tensor, banding: Banding) -> Result<Tensor, Error> {
        let batch = x.size().first().copied().unwrap_or(1);
        let strips = Strips::plan_with(&self.config, batch, self.kind.elt_size_in_bytes() as i64, banding);
        Ok(self.run(x, false, strips)?.output)
    }

    /// As [`forward`](Self::forward) with the banding given (`None`: whole maps throughout).
    pub fn forward_strips(&self, x: &Tensor, strips: Option<Strips>) -> Result<Tensor, Error> {
        Ok(self.run(x, false, strips)?.output)
    }

    /// As [`forward`](Self::forward) on whole maps, keeping the encoder features and latents.
    pub fn forward_intermediates(&self, x: &Tensor) -> Result<Intermediates, Error> {
        self.run(x, true, None)
    }

    /// The forward pass; without `keep` each encoder feature is freed as soon as the decoder
    /// has used it (`ecd` comes back empty).
    fn run(&self, x: &Tensor, keep: bool, strips: Option<Strips>) -> Result<Intermediates, Error> {
        let _guard = tch::no_grad_guard();
        let s = x.size();
        let size = self.config.size;
        if s.len() != 4 || s[1] != 3 || s[2] != size || s[3] != size {
            return Err(Error::NetworkInput {
                network: Network::Gpen,
                problem: format!("GPEN-{size} takes B x 3 x {size} x {size} faces, got {s:?}"),
            });
        }
        let input = x.f_to_device(self.device)?.f_to_kind(self.kind)?;
        // Channels last on the CPU, where oneDNN is faster on it; on CUDA as given (unmeasured).
        let input = if self.device == Device::Cpu { to_channels_last(&input)? } else { input };
        let strips = strips.filter(|s| s.levels > 0 && !keep);
        let mut ecd = Vec::with_capacity(self.ecd.len());
        let mut h = match strips {
            // The top feature (the largest map of the encoder) never exists whole: the next
            // level is computed from it band by band, and the decoder's bands recompute their
            // rows of it (a 1x1 conv of the input).
            Some(s) => self.second_feature_in_bands(&input, s.rows)?,
            None => {
                let top = self.ecd[0].forward(&input)?;
                ecd.push(top.shallow_clone());
                self.ecd[1].forward(&top)?
            }
        };
        ecd.push(h.shallow_clone());
        super::profile::mark(|| format!("encoder {}-{}", size, size / 2));
        for layer in &self.ecd[2..] {
            h = layer.forward(&h)?;
            ecd.push(h.shallow_clone());
            super::profile::mark(|| format!("encoder {}", h.size()[2]));
        }
        let z = self.final_linear.forward(&h.f_reshape([s[0], -1])?.f_to_kind(Kind::Float)?)?;
        drop(h);
        let w = self.generator.map(&z)?;
        trim_heap_on(&w);
        super::profile::mark(|| "final_linear + mapping".into());
        let feats = if keep { ecd.iter().map(Tensor::shallow_clone).collect() } else { std::mem::take(&mut ecd) };
        let top = |start: i64, rows: i64| self.ecd[0].forward(&input.f_narrow(2, start, rows)?);
        // Callers get the usual contiguous layout (three channels: a small copy).
        let output = self.generator.forward(&w, feats, strips.map(|s| (s, &top as TopFeature)))?.f_contiguous()?;
        trim_heap_on(&output);
        let ecd = ecd.iter().map(Tensor::f_contiguous).collect::<Result<_>>()?;
        Ok(Intermediates { ecd, z, w, output })
    }
}

impl FullGenerator {
    /// `ecd1(ecd0(input))` computed on bands of about `rows` input rows. `ecd1` (blur with
    /// padding 2, 3x3 conv with stride 2) makes output row `r` from input rows `2r-2 ..= 2r+3`,
    /// so a band of output rows needs one more output row's worth on each side; bands start on
    /// even input rows so that they keep the stride's phase.
    fn second_feature_in_bands(&self, input: &Tensor, rows: i64) -> Result<Tensor> {
        let (batch, size) = (input.size()[0], input.size()[2]);
        let half = size / 2;
        let step = (rows / 2).max(1);
        let out = empty_as(input, [batch, self.config.channels(half), half, half])?;
        let mut r0 = 0;
        while r0 < half {
            let r1 = (r0 + step).min(half);
            let (a0, a1) = ((2 * r0 - 2).max(0), (2 * r1 + 2).min(size));
            let band = self.ecd[1].forward(&self.ecd[0].forward(&input.f_narrow(2, a0, a1 - a0)?)?)?;
            out.f_narrow(2, r0, r1 - r0)?.f_copy_(&band.f_narrow(2, r0 - a0 / 2, r1 - r0)?)?;
            r0 = r1;
            trim_heap_on(&out);
        }
        Ok(out)
    }
}
