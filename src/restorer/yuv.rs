//! Y′CbCr and R′G′B′: a frame's samples converted as its caps' colorimetry says (matrix, range,
//! bit depth, as GStreamer's `video-color.c` defines them), and chroma resampled to and from full
//! resolution by its siting. Pure tensor functions, on whatever device the samples are.

use tch::{Kind, Tensor};

use crate::error::Error;

/// The weights of red and blue in luma (`gst_video_color_matrix_get_Kr_Kb`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matrix {
    pub kr: f64,
    pub kb: f64,
}

impl Matrix {
    pub const BT601: Matrix = Matrix { kr: 0.2990, kb: 0.1140 };
    pub const BT709: Matrix = Matrix { kr: 0.2126, kb: 0.0722 };
    pub const BT2020: Matrix = Matrix { kr: 0.2627, kb: 0.0593 };
    pub const SMPTE240M: Matrix = Matrix { kr: 0.212, kb: 0.087 };
    pub const FCC: Matrix = Matrix { kr: 0.30, kb: 0.11 };

    fn kg(&self) -> f64 {
        1.0 - self.kr - self.kb
    }
}

/// How a frame's samples code colour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Colorimetry {
    pub matrix: Matrix,
    /// Full range (0..2^depth-1) or limited (16..235 and 16..240 at 8 bits).
    pub full_range: bool,
    /// Bits per sample: 8 or 10.
    pub depth: u32,
}

impl Colorimetry {
    /// `(offset, scale)` of luma and of chroma code values (`gst_video_color_range_offsets`).
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let d = self.depth;
        let unit = (1u32 << (d - 8)) as f64;
        if self.full_range {
            let max = ((1u64 << d) - 1) as f64;
            ((0.0, max), ((1u64 << (d - 1)) as f64, max))
        } else {
            ((16.0 * unit, 219.0 * unit), (128.0 * unit, 224.0 * unit))
        }
    }

    /// The largest code value.
    pub fn max(&self) -> f64 {
        ((1u64 << self.depth) - 1) as f64
    }

    /// The R′G′B′ (0..255) a code value triple `[y, cb, cr]` makes, as a `3 x 3` matrix (rows R,
    /// G, B) and the offsets added after it, row-major: `rgb = M · yuv + offsets`.
    pub fn rgb_matrix(&self) -> [f32; 12] {
        let ((oy, sy), (oc, sc)) = self.ranges();
        let Matrix { kr, kb } = self.matrix;
        let (l, c) = (255.0 / sy, 255.0 / sc);
        let (rv, bu) = (2.0 * (1.0 - kr) * c, 2.0 * (1.0 - kb) * c);
        let (gu, gv) = (-kb * bu / self.matrix.kg(), -kr * rv / self.matrix.kg());
        let m = [[l, 0.0, rv], [l, gu, gv], [l, bu, 0.0]];
        let offset = |r: [f64; 3]| -(r[0] * oy + (r[1] + r[2]) * oc);
        let mut out = [0f32; 12];
        for (i, row) in m.iter().enumerate() {
            out[3 * i..3 * i + 3].copy_from_slice(&row.map(|v| v as f32));
            out[9 + i] = offset(*row) as f32;
        }
        out
    }

    /// Code values (`N x 1 x H x W` luma; `N x 2 x H x W` Cb and Cr at full resolution, `None`
    /// for grey) as R′G′B′ `N x 3 x H x W` in 0..255, neither rounded nor clamped. `matrix`:
    /// [`rgb_matrix`](Self::rgb_matrix) on the samples' device.
    pub fn to_rgb(&self, y: &Tensor, chroma: Option<&Tensor>, matrix: &Tensor) -> Result<Tensor, Error> {
        let Some(chroma) = chroma else {
            let ((oy, sy), _) = self.ranges();
            let luma = y.f_sub_scalar(oy)?.f_mul_scalar(255.0 / sy)?;
            return Ok(luma.f_expand([-1, 3, -1, -1], false)?.f_contiguous()?);
        };
        let (n, h, w) = (y.size()[0], y.size()[2], y.size()[3]);
        let m = matrix.f_narrow(0, 0, 9)?.f_reshape([3, 3])?;
        let offsets = matrix.f_narrow(0, 9, 3)?.f_reshape([3, 1])?;
        // Per picture: the chroma's part (3 x 2 by 2 x HW), then the luma's added in place.
        let picture = |i: i64| -> Result<Tensor, Error> {
            let mut rgb = offsets.f_addmm(&m.f_narrow(1, 1, 2)?, &chroma.f_select(0, i)?.f_reshape([2, h * w])?)?;
            let _ = rgb.f_addmm_(&m.f_narrow(1, 0, 1)?, &y.f_select(0, i)?.f_reshape([1, h * w])?)?;
            Ok(rgb.f_reshape([1, 3, h, w])?)
        };
        if n == 1 {
            return picture(0);
        }
        Ok(Tensor::f_cat(&(0..n).map(picture).collect::<Result<Vec<_>, _>>()?, 0)?)
    }

    /// R′G′B′ (`N x 3 x H x W`, 0..255) as code values: luma and, unless `grey`, Cb and Cr, each
    /// `N x 1 x H x W` float at full resolution. With `offsets` false, the change of code values
    /// a change of R′G′B′ makes (the conversion is linear).
    pub fn from_rgb(&self, rgb: &Tensor, grey: bool, offsets: bool) -> Result<(Tensor, Option<(Tensor, Tensor)>), Error> {
        let ((oy, sy), (oc, sc)) = self.ranges();
        let (oy, oc) = if offsets { (oy, oc) } else { (0.0, 0.0) };
        let Matrix { kr, kb } = self.matrix;
        let ch = |i: i64| rgb.f_narrow(1, i, 1);
        let (r, g, b) = (ch(0)?, ch(1)?, ch(2)?);
        let luma = r.f_mul_scalar(kr)?.f_add(&g.f_mul_scalar(self.matrix.kg())?)?.f_add(&b.f_mul_scalar(kb)?)?;
        let y = luma.f_mul_scalar(sy / 255.0)?.f_add_scalar(oy)?;
        if grey {
            return Ok((y, None));
        }
        let cb = b.f_sub(&luma)?.f_mul_scalar(sc / 255.0 / (2.0 * (1.0 - kb)))?.f_add_scalar(oc)?;
        let cr = r.f_sub(&luma)?.f_mul_scalar(sc / 255.0 / (2.0 * (1.0 - kr)))?.f_add_scalar(oc)?;
        Ok((y, Some((cb, cr))))
    }
}

/// Where chroma samples lie against the luma samples they are shared by (the caps'
/// `chroma-site`): on the first of them (co-sited) or between them, per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Siting {
    pub h_cosited: bool,
    pub v_cosited: bool,
}

/// Chroma subsampling: luma samples per chroma sample across and down (1 or 2).
pub type Subsampling = (i64, i64);

/// Chroma samples (`N x C x h x w`) at the full resolution `(height, width)`: linear between
/// the two nearest samples by their siting, as `videoconvert`'s default linear resampler, the
/// nearest one past the edges.
pub fn upsample(chroma: &Tensor, sub: Subsampling, siting: Siting, (height, width): (i64, i64)) -> Result<Tensor, Error> {
    let x = upsample_axis(chroma, 3, sub.0, siting.h_cosited, width)?;
    upsample_axis(&x, 2, sub.1, siting.v_cosited, height)
}

/// Doubles `c` along `dim` (each sample's two pixels interleaved), cut to `full`. A pixel lies
/// at chroma position x / 2, less a quarter sample when chroma sits between its two pixels: a
/// co-sited sample's pixels are it and the mean of it and the next; a centred one's take a
/// quarter of the previous or the next.
fn upsample_axis(c: &Tensor, dim: i64, factor: i64, cosited: bool, full: i64) -> Result<Tensor, Error> {
    let n = c.size()[dim as usize];
    if factor == 1 {
        return Ok(c.shallow_clone());
    }
    let next = Tensor::f_cat(&[c.f_narrow(dim, 1, n - 1)?, c.f_narrow(dim, n - 1, 1)?], dim)?;
    let (even, odd) = if cosited {
        (c.shallow_clone(), c.f_add(&next)?.f_mul_scalar(0.5)?)
    } else {
        let prev = Tensor::f_cat(&[c.f_narrow(dim, 0, 1)?, c.f_narrow(dim, 0, n - 1)?], dim)?;
        let three = c.f_mul_scalar(0.75)?;
        (three.f_add(&prev.f_mul_scalar(0.25)?)?, three.f_add(&next.f_mul_scalar(0.25)?)?)
    };
    let mut shape = c.size();
    shape[dim as usize] = 2 * n;
    Ok(Tensor::f_stack(&[even, odd], dim + 1)?.f_reshape(&shape)?.f_narrow(dim, 0, full)?)
}

/// The chroma samples that full-resolution values over a frame's rectangle make, as
/// `videoconvert` subsamples: each sample the mean of the pixels it stands for (weights 1/4,
/// 1/2, 1/4 over three pixels when co-sited), over the pixels inside the frame only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChromaRect {
    /// First chroma sample across and down, and the number of samples.
    pub x0: i64,
    pub y0: i64,
    pub width: i64,
    pub height: i64,
}

/// The chroma samples whose pixels meet the rectangle `(x0, y0, w, h)` of a `(width, height)`
/// frame.
pub fn chroma_rect((x0, y0, w, h): (i64, i64, i64, i64), frame: (i64, i64), sub: Subsampling, siting: Siting) -> ChromaRect {
    let axis = |p0: i64, len: i64, full: i64, f: i64, cosited: bool| -> (i64, i64) {
        let n = (full + f - 1) / f;
        if f == 1 {
            return (p0, len);
        }
        let last = p0 + len - 1;
        // Sample j stands for pixels 2j .. 2j+1, or 2j-1 .. 2j+1 co-sited.
        let (first, end) = if cosited { (p0.div_euclid(2), (last + 1).div_euclid(2)) } else { (p0.div_euclid(2), last.div_euclid(2)) };
        let (first, end) = (first.clamp(0, n - 1), end.clamp(0, n - 1));
        (first, end - first + 1)
    };
    let (cx, cw) = axis(x0, w, frame.0, sub.0, siting.h_cosited);
    let (cy, ch) = axis(y0, h, frame.1, sub.1, siting.v_cosited);
    ChromaRect { x0: cx, y0: cy, width: cw, height: ch }
}

/// `values` (`N x 1 x h x w` at full resolution over the frame rectangle `(x0, y0, w, h)`, taken
/// as 0 elsewhere) subsampled into the chroma samples of [`chroma_rect`]: `N x 1 x height x
/// width` of the rectangle. With values of a change, the change each sample takes, shared
/// pixels outside the rectangle counting as unchanged.
pub fn subsample(
    values: &Tensor,
    (x0, y0): (i64, i64),
    frame: (i64, i64),
    sub: Subsampling,
    siting: Siting,
) -> Result<(ChromaRect, Tensor), Error> {
    let (n, h, w) = (values.size()[0], values.size()[2], values.size()[3]);
    let rect = chroma_rect((x0, y0, w, h), frame, sub, siting);
    // The pixels the samples stand for, per axis: the first and how many.
    let span = |c0: i64, cn: i64, f: i64, cosited: bool| -> (i64, i64) {
        match (f, cosited) {
            (1, _) => (c0, cn),
            (_, false) => (f * c0, f * cn),
            (_, true) => (f * c0 - 1, f * cn + 1),
        }
    };
    let (px, pw) = span(rect.x0, rect.width, sub.0, siting.h_cosited);
    let (py, ph) = span(rect.y0, rect.height, sub.1, siting.v_cosited);
    let opts = (Kind::Float, values.device());
    // The values over the samples' span, 0 past the rectangle.
    let padded = Tensor::f_zeros([n, 1, ph, pw], opts)?;
    padded.f_narrow(2, y0 - py, h)?.f_narrow(3, x0 - px, w)?.f_copy_(&values.f_to_kind(Kind::Float)?)?;
    // The weights are separable, and so is the share of each sample's pixels inside the frame.
    let inside = |p0: i64, len: i64, full: i64| -> Result<Tensor, Error> {
        let ones = Tensor::f_zeros([len], opts)?;
        let (a, b) = ((-p0).max(0), len.min(full - p0));
        let _ = ones.f_narrow(0, a, b - a)?.f_fill_(1.0)?;
        Ok(ones)
    };
    let sums = weighted_sums(&padded, 3, sub.0, siting.h_cosited)?;
    let sums = weighted_sums(&sums, 2, sub.1, siting.v_cosited)?;
    let wx = weighted_sums(&inside(px, pw, frame.0)?, 0, sub.0, siting.h_cosited)?;
    let wy = weighted_sums(&inside(py, ph, frame.1)?, 0, sub.1, siting.v_cosited)?;
    let weight = wy.f_reshape([1, 1, -1, 1])?.f_mul(&wx.f_reshape([1, 1, 1, -1])?)?;
    Ok((rect, sums.f_div(&weight)?))
}

/// Along `dim`, the weighted sum of each sample's pixels: pairs (centred), or the 1, 2, 1
/// taps of pixels 2j - 1, 2j, 2j + 1 (co-sited, the span starting one pixel early).
fn weighted_sums(t: &Tensor, dim: i64, factor: i64, cosited: bool) -> Result<Tensor, Error> {
    let len = t.size()[dim as usize];
    Ok(match (factor, cosited) {
        (1, _) => t.shallow_clone(),
        (_, false) => t.f_slice(dim, 0, len, 2)?.f_add(&t.f_slice(dim, 1, len, 2)?)?,
        (_, true) => {
            let n = (len - 1) / 2;
            let (a, b, c) = (t.f_slice(dim, 0, 2 * n - 1, 2)?, t.f_slice(dim, 1, 2 * n, 2)?, t.f_slice(dim, 2, 2 * n + 1, 2)?);
            a.f_add(&b.f_mul_scalar(2.0)?)?.f_add(&c)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(values: &[f32], shape: [i64; 4]) -> Tensor {
        Tensor::from_slice(values).reshape(shape)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn code_values_round_trip_through_rgb_in_every_colorimetry() {
        let rgb = Tensor::rand([1, 3, 4, 5], (Kind::Float, Device::Cpu)) * 255.0;
        for matrix in [Matrix::BT601, Matrix::BT709, Matrix::BT2020, Matrix::SMPTE240M] {
            for (full_range, depth) in [(true, 8), (false, 8), (false, 10), (true, 10)] {
                let c = Colorimetry { matrix, full_range, depth };
                let (y, chroma) = c.from_rgb(&rgb, false, true).unwrap();
                let (cb, cr) = chroma.unwrap();
                let back = c.to_rgb(&y, Some(&Tensor::cat(&[cb, cr], 1)), &Tensor::from_slice(&c.rgb_matrix())).unwrap();
                assert!(max_diff(&back, &rgb) < 1e-3, "{c:?}");
            }
        }
    }

    #[test]
    fn limited_range_puts_black_and_white_at_16_and_235() {
        let c = Colorimetry { matrix: Matrix::BT709, full_range: false, depth: 8 };
        let rgb = Tensor::cat(
            &[Tensor::zeros([1, 3, 1, 1], (Kind::Float, Device::Cpu)), Tensor::full([1, 3, 1, 1], 255.0, (Kind::Float, Device::Cpu))],
            3,
        );
        let (y, chroma) = c.from_rgb(&rgb, false, true).unwrap();
        let (cb, cr) = chroma.unwrap();
        assert!(max_diff(&y, &t(&[16.0, 235.0], [1, 1, 1, 2])) < 1e-4);
        assert!(max_diff(&cb, &t(&[128.0, 128.0], [1, 1, 1, 2])) < 1e-4);
        assert!(max_diff(&cr, &t(&[128.0, 128.0], [1, 1, 1, 2])) < 1e-4);
        // Pure red in BT.601 full range: Cr at its maximum (127.5 above 128).
        let f = Colorimetry { matrix: Matrix::BT601, full_range: true, depth: 8 };
        let red = t(&[255.0, 0.0, 0.0], [1, 3, 1, 1]);
        let (y, chroma) = f.from_rgb(&red, false, true).unwrap();
        assert!((y.double_value(&[0, 0, 0, 0]) - 0.299 * 255.0).abs() < 1e-3);
        assert!((chroma.unwrap().1.double_value(&[0, 0, 0, 0]) - 255.5).abs() < 1e-3);
        // A grey frame: R = G = B = luma.
        let grey = f.to_rgb(&t(&[100.0], [1, 1, 1, 1]), None, &Tensor::from_slice(&f.rgb_matrix())).unwrap();
        assert_eq!(Vec::<f32>::try_from(grey.reshape([-1])).unwrap(), [100.0, 100.0, 100.0]);
    }

    #[test]
    fn chroma_is_interpolated_by_its_siting() {
        let c = t(&[0.0, 8.0, 16.0], [1, 1, 1, 3]);
        let cosited = upsample(&c, (2, 1), Siting { h_cosited: true, v_cosited: false }, (1, 6)).unwrap();
        assert_eq!(Vec::<f32>::try_from(cosited.reshape([-1])).unwrap(), [0.0, 4.0, 8.0, 12.0, 16.0, 16.0]);
        let centred = upsample(&c, (2, 1), Siting::default(), (1, 5)).unwrap();
        assert_eq!(Vec::<f32>::try_from(centred.reshape([-1])).unwrap(), [0.0, 2.0, 6.0, 10.0, 14.0]);
    }

    #[test]
    fn subsampling_averages_the_pixels_of_each_sample_inside_the_frame() {
        // A 5-pixel-wide frame, 4:2:0 centred: samples stand for pixels {0,1}, {2,3}, {4}.
        let v = t(&[2.0, 4.0, 6.0, 8.0, 10.0, 2.0, 4.0, 6.0, 8.0, 10.0], [1, 1, 2, 5]);
        let (rect, s) = subsample(&v, (0, 0), (5, 2), (2, 2), Siting::default()).unwrap();
        assert_eq!(rect, ChromaRect { x0: 0, y0: 0, width: 3, height: 1 });
        assert_eq!(Vec::<f32>::try_from(s.reshape([-1])).unwrap(), [3.0, 7.0, 10.0]);
        // A change over pixels 3..4 of row 0 only: the shared samples take their share of it.
        let change = t(&[4.0, 4.0], [1, 1, 1, 2]);
        let (rect, s) = subsample(&change, (3, 0), (5, 2), (2, 2), Siting::default()).unwrap();
        assert_eq!(rect, ChromaRect { x0: 1, y0: 0, width: 2, height: 1 });
        assert_eq!(Vec::<f32>::try_from(s.reshape([-1])).unwrap(), [1.0, 2.0], "a quarter of sample 1's pixels, half of sample 2's");
        // Co-sited: sample 1 stands for pixels 1, 2, 3 with weights 1, 2, 1.
        let (rect, s) = subsample(&change, (3, 0), (5, 1), (2, 1), Siting { h_cosited: true, v_cosited: false }).unwrap();
        assert_eq!(rect, ChromaRect { x0: 1, y0: 0, width: 2, height: 1 });
        assert_eq!(Vec::<f32>::try_from(s.reshape([-1])).unwrap(), [1.0, 4.0]);
    }
}
