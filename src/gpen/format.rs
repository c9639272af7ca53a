//! Memory formats of feature maps. On the CPU the forward runs channels last (NHWC strides
//! under NCHW sizes): oneDNN's convolutions, transposed convolutions and depthwise blurs are
//! faster on it (at the top of GPEN-512 in fp32: the transposed conv 245 -> 124 ms, the blur
//! 89 -> 22 ms, the 3x3 conv 252 -> 194 ms), and every op of the generator keeps its input's
//! format, so it is chosen once, on the input. New buffers follow the format of a tensor they
//! are filled from.

use tch::{TchError, Tensor};

type Result<T, E = TchError> = std::result::Result<T, E>;

/// Whether `t` (4-D) has channels-last strides.
pub(super) fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    size.len() == 4 && size[1] > 1 && stride[1] == 1 && stride[3] == size[1]
}

/// `t` (4-D) with channels-last strides (a copy).
pub(super) fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])
}

/// `t` in the format of `like`: converted to channels last when `like` is so and `t` is not.
pub(super) fn as_format_of(t: Tensor, like: &Tensor) -> Result<Tensor> {
    if is_channels_last(like) && !is_channels_last(&t) {
        to_channels_last(&t)
    } else {
        Ok(t)
    }
}

/// An uninitialised `(n, c, h, w)` tensor of `like`'s kind, device and format.
pub(super) fn empty_as(like: &Tensor, [n, c, h, w]: [i64; 4]) -> Result<Tensor> {
    let options = (like.kind(), like.device());
    if is_channels_last(like) {
        Tensor::f_empty([n, h, w, c], options)?.f_permute([0, 3, 1, 2])
    } else {
        Tensor::f_empty([n, c, h, w], options)
    }
}

/// `t` reshaped to `size`, or `t` itself when it has that size already: a reshape to the same
/// size may rewrite the stride of a dimension of size 1, which makes a batch of one faces in
/// channels last look like neither format to libtorch (and the next convolution falls back to
/// NCHW).
pub(super) fn reshape(t: Tensor, size: [i64; 4]) -> Result<Tensor> {
    if t.size() == size {
        Ok(t)
    } else {
        t.f_reshape(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn channels_last_keeps_values_and_spreads_to_new_buffers() {
        let t = Tensor::rand([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        assert!(!is_channels_last(&t));
        let cl = to_channels_last(&t).unwrap();
        assert!(is_channels_last(&cl));
        assert_eq!(cl.size(), t.size());
        assert!(cl.equal(&t));
        assert!(is_channels_last(&empty_as(&cl, [2, 7, 4, 5]).unwrap()));
        assert!(!is_channels_last(&empty_as(&t, [2, 7, 4, 5]).unwrap()));
        assert!(is_channels_last(&as_format_of(t.shallow_clone(), &cl).unwrap()));
        // A convolution keeps the format of its input.
        let w = Tensor::rand([6, 3, 3, 3], (Kind::Float, Device::Cpu));
        let y = cl.conv2d::<Tensor>(&w, None, [1, 1], [1, 1], [1, 1], 1);
        assert!(is_channels_last(&y));
        assert!(y.allclose(&t.conv2d::<Tensor>(&w, None, [1, 1], [1, 1], [1, 1], 1), 1e-5, 1e-5, false));
    }
}
