//! GPEN's `upfirdn2d` uses (the blur after an up-sampling convolution, the up-sampling of the
//! RGB skip), written as depthwise convolutions.

use tch::{TchError, Tensor};

use super::loader::Loader;

type Result<T, E = TchError> = std::result::Result<T, E>;

/// `Blur`: `upfirdn2d(x, kernel, pad=(p, p))`, written as a depthwise convolution.
#[derive(Debug)]
pub(super) struct Blur {
    /// The flipped kernel (upfirdn2d is a true convolution), one copy per channel.
    weight: Tensor,
    channels: i64,
    pad: i64,
}

impl Blur {
    pub(super) fn new(l: &Loader, kernel: &str, channels: i64, pad: i64) -> Result<Self> {
        let k = l.raw(kernel)?.f_flip([0, 1])?;
        let weight = l.put(&k.f_reshape([1, 1, 4, 4])?.f_repeat([channels, 1, 1, 1])?)?;
        Ok(Blur { weight, channels, pad })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.f_conv2d::<Tensor>(&self.weight, None, [1, 1], [self.pad, self.pad], [1, 1], self.channels)
    }

    /// The same on the first `n` channels' worth of weights (all channels share the kernel).
    fn forward_channels(&self, x: &Tensor, n: i64) -> Result<Tensor> {
        let w = self.weight.f_narrow(0, 0, n)?;
        x.f_conv2d::<Tensor>(&w, None, [1, 1], [self.pad, self.pad], [1, 1], n)
    }
}

/// Largest transposed-convolution output computed at once; bigger ones go in channel slices,
/// since the `(2H+1)^2` output before the blur is the largest tensor of the whole forward.
const UP_CHUNK_BYTES: i64 = 16 << 20;

/// `conv_transpose2d(x, w, stride 2, groups)` then `blur`, in output-channel slices when the
/// intermediate would be large. `w` is `(groups * in, out, k, k)`; the result `(b, out, 2H, 2W)`.
pub(super) fn up_conv_blur(x: &Tensor, w: &Tensor, groups: i64, b: i64, blur: &Blur) -> Result<Tensor> {
    let (h, wd) = (x.size()[2], x.size()[3]);
    let out = w.size()[1];
    let elem = x.kind().elt_size_in_bytes() as i64;
    let full = b * out * (2 * h + 1) * (2 * wd + 1) * elem;
    let step = if full <= UP_CHUNK_BYTES { out } else { (out * UP_CHUNK_BYTES / full).max(1) };
    let run = |o0: i64, n: i64| -> Result<Tensor> {
        let y = x.f_conv_transpose2d::<Tensor>(&w.f_narrow(1, o0, n)?, None, [2, 2], [0, 0], [0, 0], groups, [1, 1])?;
        let ys = y.size();
        blur.forward_channels(&super::format::reshape(y, [b, n, ys[2], ys[3]])?, n)
    };
    if step >= out {
        return run(0, out);
    }
    let result = super::format::empty_as(x, [b, out, 2 * h, 2 * wd])?;
    let mut o0 = 0;
    while o0 < out {
        let n = step.min(out - o0);
        result.f_narrow(1, o0, n)?.f_copy_(&run(o0, n)?)?;
        o0 += n;
    }
    Ok(result)
}

/// `Upsample` (factor 2, pad (2, 1)): zero-stuffing then blur, written as the equivalent
/// transposed depthwise convolution (within 1 ulp of the official op). fp32: the RGB skip path.
#[derive(Debug)]
pub(super) struct Upsample {
    weight: Tensor,
    channels: i64,
}

impl Upsample {
    pub(super) fn new(l: &Loader, kernel: &str, channels: i64) -> Result<Self> {
        let k = l.raw(kernel)?;
        let weight = l.put_f32(&k.f_reshape([1, 1, 4, 4])?.f_repeat([channels, 1, 1, 1])?)?;
        Ok(Upsample { weight, channels })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.f_conv_transpose2d::<Tensor>(&self.weight, None, [2, 2], [1, 1], [0, 0], self.channels, [1, 1])
    }
}
