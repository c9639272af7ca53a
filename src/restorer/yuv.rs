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

    /// Code values (`N x 1 x H x W` each, float; chroma at full resolution, `None` for grey) as
    /// R′G′B′ `N x 3 x H x W` in 0..255, neither rounded nor clamped.
    pub fn to_rgb(&self, y: &Tensor, chroma: Option<(&Tensor, &Tensor)>) -> Result<Tensor, Error> {
        let ((oy, sy), (oc, sc)) = self.ranges();
        let luma = y.f_sub_scalar(oy)?.f_mul_scalar(255.0 / sy)?;
        let Some((cb, cr)) = chroma else {
            return Ok(Tensor::f_cat(&[&luma, &luma, &luma], 1)?);
        };
        let Matrix { kr, kb } = self.matrix;
        let cb = cb.f_sub_scalar(oc)?.f_mul_scalar(255.0 / sc)?;
        let cr = cr.f_sub_scalar(oc)?.f_mul_scalar(255.0 / sc)?;
        let r = luma.f_add(&cr.f_mul_scalar(2.0 * (1.0 - kr))?)?;
        let b = luma.f_add(&cb.f_mul_scalar(2.0 * (1.0 - kb))?)?;
        let g = luma.f_sub(&r.f_mul_scalar(kr)?)?.f_sub(&b.f_mul_scalar(kb)?)?.f_div_scalar(self.matrix.kg())?;
        Ok(Tensor::f_cat(&[&r, &g, &b], 1)?)
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

/// Chroma samples (`N x 1 x h x w`) at the full resolution `(height, width)`: linear between the
/// two nearest samples by their siting, as `videoconvert`'s default linear resampler, the
/// nearest one past the edges.
pub fn upsample(chroma: &Tensor, sub: Subsampling, siting: Siting, (height, width): (i64, i64)) -> Result<Tensor, Error> {
    let x = upsample_axis(chroma, 3, sub.0, siting.h_cosited, width)?;
    upsample_axis(&x, 2, sub.1, siting.v_cosited, height)
}

fn upsample_axis(c: &Tensor, dim: i64, factor: i64, cosited: bool, full: i64) -> Result<Tensor, Error> {
    let n = c.size()[dim as usize];
    if factor == 1 {
        return Ok(c.shallow_clone());
    }
    let device = c.device();
    // Full-resolution sample x lies at chroma position x / factor, less half a chroma sample
    // less half a pixel when chroma sits between its pixels.
    let phase = if cosited { 0.0 } else { 0.5 - 0.5 / factor as f64 };
    let at =
        Tensor::f_arange(full, (Kind::Float, device))?.f_div_scalar(factor as f64)?.f_sub_scalar(phase)?.f_clamp(0.0, (n - 1) as f64)?;
    let i0 = at.f_floor()?;
    let t = at.f_sub(&i0)?;
    let i0 = i0.f_to_kind(Kind::Int64)?;
    let i1 = i0.f_add_scalar(1)?.f_clamp_max(n - 1)?;
    let (a, b) = (c.f_index_select(dim, &i0)?, c.f_index_select(dim, &i1)?);
    let shape: Vec<i64> = (0..4).map(|d| if d == dim { full } else { 1 }).collect();
    let t = t.f_reshape(shape)?;
    Ok(a.f_add(&b.f_sub(&a)?.f_mul(&t)?)?)
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
    let device = values.device();
    // The pixels the samples stand for, per axis: `(first pixel, count, taps)`.
    let span = |c0: i64, cn: i64, f: i64, cosited: bool| -> (i64, i64, Vec<f32>) {
        match (f, cosited) {
            (1, _) => (c0, cn, vec![1.0]),
            (_, false) => (f * c0, f * cn, vec![1.0; f as usize]),
            (_, true) => (f * c0 - 1, f * cn + 1, vec![1.0, 2.0, 1.0]),
        }
    };
    let (px, pw, kx) = span(rect.x0, rect.width, sub.0, siting.h_cosited);
    let (py, ph, ky) = span(rect.y0, rect.height, sub.1, siting.v_cosited);
    let opts = (Kind::Float, device);
    // The values and the pixels that exist, over the samples' span.
    let padded = Tensor::f_zeros([n, 1, ph, pw], opts)?;
    padded.f_narrow(2, y0 - py, h)?.f_narrow(3, x0 - px, w)?.f_copy_(&values.f_to_kind(Kind::Float)?)?;
    let inside = Tensor::f_zeros([1, 1, ph, pw], opts)?;
    let (ix0, iy0) = ((-px).max(0), (-py).max(0));
    let (ix1, iy1) = (pw.min(frame.0 - px), ph.min(frame.1 - py));
    let _ = inside.f_narrow(2, iy0, iy1 - iy0)?.f_narrow(3, ix0, ix1 - ix0)?.f_fill_(1.0)?;
    let (kh, kw) = (ky.len() as i64, kx.len() as i64);
    let taps: Vec<f32> = ky.iter().flat_map(|a| kx.iter().map(move |b| a * b)).collect();
    let kernel = Tensor::f_from_slice(&taps)?.f_reshape([1, 1, kh, kw])?.f_to_device(device)?;
    let stride = [sub.1, sub.0];
    let sum = padded.f_conv2d(&kernel, None::<Tensor>, stride, [0, 0], [1, 1], 1)?;
    let weight = inside.f_conv2d(&kernel, None::<Tensor>, stride, [0, 0], [1, 1], 1)?;
    Ok((rect, sum.f_div(&weight)?))
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
                let back = c.to_rgb(&y, Some((&cb, &cr))).unwrap();
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
        let grey = f.to_rgb(&t(&[100.0], [1, 1, 1, 1]), None).unwrap();
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
