//! Face alignment as GPEN does it (`align_faces.py`, `face_enhancement.py`): the 5-point
//! template, Umeyama similarity fits (the forward one and GPEN's own inverse, a second fit with
//! the scale fixed), warps of all faces at once on the device, and the soft paste mask.

use tch::{Device, Kind, TchError, Tensor};

type Result<T> = std::result::Result<T, TchError>;

/// The 96x112 five-point reference of `align_faces.py` (eyes, nose, mouth corners).
const REFERENCE_FACIAL_POINTS: [[f64; 2]; 5] = [
    [30.29459953, 51.69630051],
    [65.53179932, 51.50139999],
    [48.02519989, 71.73660278],
    [33.54930115, 92.3655014],
    [62.72990036, 92.20410156],
];

/// GPEN's template for a `size` crop: the reference made square (+8 px in x), padded by an
/// inner factor of 0.25 (+28 px each side, 168 px in all), and scaled to `size`.
pub fn template(size: i64) -> [[f64; 2]; 5] {
    let s = size as f64 / 168.0;
    REFERENCE_FACIAL_POINTS.map(|[x, y]| [(x + 36.0) * s, (y + 28.0) * s])
}

/// A similarity transform `[[a, -b, tx], [b, a, ty]]` (scale, rotation, translation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    pub fn matrix(&self) -> [[f64; 3]; 2] {
        [[self.a, -self.b, self.tx], [self.b, self.a, self.ty]]
    }

    pub fn scale(&self) -> f64 {
        self.a.hypot(self.b)
    }

    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [self.a * x - self.b * y + self.tx, self.b * x + self.a * y + self.ty]
    }

    /// `self` after `first`: `p` goes to `self(first(p))`. The identity on either side leaves
    /// the other bit for bit.
    pub fn after(&self, first: &Similarity) -> Similarity {
        Similarity {
            a: self.a * first.a - self.b * first.b,
            b: self.a * first.b + self.b * first.a,
            tx: self.a * first.tx - self.b * first.ty + self.tx,
            ty: self.b * first.tx + self.a * first.ty + self.ty,
        }
    }

    /// The exact inverse (what `cv2.warpAffine` samples with).
    pub fn inverse(&self) -> Similarity {
        let d = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / d, -self.b / d);
        Similarity { a, b, tx: -(a * self.tx - b * self.ty), ty: -(b * self.tx + a * self.ty) }
    }

    /// Least-squares similarity from `src` to `dst` (Umeyama, without reflection). With
    /// `scale`, the scale is fixed and only rotation and translation are fitted. In 2-D the
    /// SVD solution has this closed form: the rotation is the angle of the cross-covariance
    /// `sum (dst_i - mean) * conj(src_i - mean)` read as complex numbers, and the scale its
    /// modulus over the source variance.
    pub fn umeyama(src: &[[f64; 2]], dst: &[[f64; 2]], scale: Option<f64>) -> Option<Similarity> {
        let n = src.len().min(dst.len());
        if n < 2 {
            return None;
        }
        let mean = |p: &[[f64; 2]]| {
            let (x, y) = p[..n].iter().fold((0.0, 0.0), |(x, y), q| (x + q[0], y + q[1]));
            [x / n as f64, y / n as f64]
        };
        let (ms, md) = (mean(src), mean(dst));
        let (mut re, mut im, mut var) = (0.0, 0.0, 0.0);
        for i in 0..n {
            let (sx, sy) = (src[i][0] - ms[0], src[i][1] - ms[1]);
            let (dx, dy) = (dst[i][0] - md[0], dst[i][1] - md[1]);
            re += dx * sx + dy * sy;
            im += dy * sx - dx * sy;
            var += sx * sx + sy * sy;
        }
        let norm = re.hypot(im);
        if var <= 0.0 || norm <= 0.0 || !norm.is_finite() {
            return None;
        }
        let s = scale.unwrap_or(norm / var);
        let (a, b) = (s * re / norm, s * im / norm);
        Some(Similarity { a, b, tx: md[0] - (a * ms[0] - b * ms[1]), ty: md[1] - (b * ms[0] + a * ms[1]) })
    }
}

/// How a picture's stored pixels are displayed: the scale of each axis from storage to display
/// pixels. Non-square pixels stretch x (a DV pixel of aspect 10/11 is 10/11 as wide as tall);
/// a field, every other line of a frame, stretches y by 2 more. Faces are aligned in display
/// geometry, where GPEN's template is undistorted; the crops and the paste read and write the
/// stored pixels through the composed map, so nothing is resampled twice. With [`Stretch::NONE`]
/// every composed map is the plain one, bit for bit (a product by 1.0 is exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stretch {
    pub x: f64,
    pub y: f64,
}

impl Stretch {
    /// Square pixels, a whole frame.
    pub const NONE: Stretch = Stretch { x: 1.0, y: 1.0 };

    /// A stored point in display coordinates.
    pub fn to_display(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [x * self.x, y * self.y]
    }

    /// A display point in stored coordinates.
    pub fn to_storage(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [x / self.x, y / self.y]
    }

    /// `m`, a map from display coordinates, read from stored ones: `m` after the stretch.
    pub fn from_storage(&self, m: [[f64; 3]; 2]) -> [[f64; 3]; 2] {
        m.map(|[a, b, c]| [a * self.x, b * self.y, c])
    }

    /// `m`, a map into display coordinates, into stored ones: the stretch undone after `m`.
    pub fn into_storage(&self, [r0, r1]: [[f64; 3]; 2]) -> [[f64; 3]; 2] {
        [r0.map(|v| v / self.x), r1.map(|v| v / self.y)]
    }
}

/// The transforms of one face: `tfm` maps the frame to the crop; `tfm_inv` is GPEN's way
/// back (a fit from the template to the landmarks with the scale fixed to `1 / scale`). Both
/// are in display coordinates; `stretch` takes stored frame pixels there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alignment {
    pub tfm: Similarity,
    pub tfm_inv: Similarity,
    pub stretch: Stretch,
}

impl Alignment {
    /// The map from crop pixels to stored frame pixels (what a crop samples).
    pub fn crop_to_frame(&self) -> [[f64; 3]; 2] {
        self.stretch.into_storage(self.tfm.inverse().matrix())
    }

    /// The map from stored frame pixels to crop pixels on the way back (GPEN's `tfm_inv`
    /// inverted, as its paste samples).
    pub fn frame_to_crop_back(&self) -> [[f64; 3]; 2] {
        self.stretch.from_storage(self.tfm_inv.inverse().matrix())
    }
}

/// Aligns five landmarks to the template of a `size` crop; `None` for degenerate landmarks.
pub fn align(landmarks: &[[f32; 2]; 5], size: i64) -> Option<Alignment> {
    align_stretched(landmarks, size, Stretch::NONE)
}

/// Aligns five landmarks, in stored pixels of a picture displayed through `stretch`, to the
/// template of a `size` crop, in display geometry; `None` for degenerate landmarks.
pub fn align_stretched(landmarks: &[[f32; 2]; 5], size: i64, stretch: Stretch) -> Option<Alignment> {
    let src = landmarks.map(|p| stretch.to_display([p[0] as f64, p[1] as f64]));
    let dst = template(size);
    let tfm = Similarity::umeyama(&src, &dst, None)?;
    let tfm_inv = Similarity::umeyama(&dst, &src, Some(1.0 / tfm.scale()))?;
    Some(Alignment { tfm, tfm_inv, stretch })
}

/// How a warp fills what lies outside its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Black, as `cv2.warpAffine` with BORDER_CONSTANT 0 (GPEN's crops).
    Zeros,
    /// The nearest edge pixel, so faces cut by the frame edge get no black band.
    Replicate,
}

/// The affine map, in `grid_sample`'s normalised coordinates (align_corners=false), that takes
/// output pixel `(x, y)` of a map to source pixel `to_src(x + x0, y + y0)` of an `src_h x src_w`
/// image: the 6 values of one `3 x 2` matrix of [`grids`], computed on the host.
pub fn grid_map(to_src: &Similarity, origin: (i64, i64), src: (i64, i64)) -> [f32; 6] {
    affine_grid_map(to_src.matrix(), origin, src)
}

/// [`grid_map`] of any affine map `m` (`[[a, b, c], [d, e, f]]`).
pub fn affine_grid_map(m: [[f64; 3]; 2], (x0, y0): (i64, i64), (src_h, src_w): (i64, i64)) -> [f32; 6] {
    // Normalised source coordinate: (2 * x + 1) / W - 1, folded into the affine map.
    let (sx, sy) = (2.0 / src_w as f64, 2.0 / src_h as f64);
    let tx = m[0][0] * x0 as f64 + m[0][1] * y0 as f64 + m[0][2];
    let ty = m[1][0] * x0 as f64 + m[1][1] * y0 as f64 + m[1][2];
    [m[0][0] * sx, m[1][0] * sy, m[0][1] * sx, m[1][1] * sy, (2.0 * tx + 1.0) / src_w as f64 - 1.0, (2.0 * ty + 1.0) / src_h as f64 - 1.0]
        .map(|v| v as f32)
}

/// Sampling grids (`N x out_h x out_w x 2`) from `N x 3 x 2` maps already on the device (see
/// [`grid_map`]): built on the device, nothing is transferred.
pub fn grids(maps: &Tensor, (out_h, out_w): (i64, i64)) -> Result<Tensor> {
    let opts = (Kind::Float, maps.device());
    let xs = Tensor::f_arange(out_w, opts)?.f_reshape([1, out_w])?.f_expand([out_h, out_w], false)?;
    let ys = Tensor::f_arange(out_h, opts)?.f_reshape([out_h, 1])?.f_expand([out_h, out_w], false)?;
    let ones = Tensor::f_ones([out_h, out_w], opts)?;
    let base = Tensor::f_stack(&[xs, ys, ones], 2)?.f_reshape([1, out_h * out_w, 3])?;
    base.f_matmul(maps)?.f_reshape([maps.size()[0], out_h, out_w, 2])
}

/// Sampling grid for `grid_sample` (align_corners=false) such that output pixel `(x, y)` of an
/// `out_h x out_w` map reads source pixel `to_src(x + x0, y + y0)` of an `src_h x src_w` image
/// (the maps computed here and copied to `device`).
pub fn sampling_grid(to_src: &[Similarity], origin: (i64, i64), out: (i64, i64), src: (i64, i64), device: Device) -> Result<Tensor> {
    let rows: Vec<f32> = to_src.iter().flat_map(|t| grid_map(t, origin, src)).collect();
    let maps = Tensor::f_from_slice(&rows)?.f_reshape([to_src.len() as i64, 3, 2])?.f_to_device(device)?;
    grids(&maps, out)
}

/// Bilinear warp of `image` (`N x C x H x W`, N = 1 or one per grid) through `grid`.
pub fn warp(image: &Tensor, grid: &Tensor, border: Border) -> Result<Tensor> {
    let n = grid.size()[0];
    let s = image.size();
    let image = if s[0] == n { image.shallow_clone() } else { image.f_expand([n, s[1], s[2], s[3]], false)? };
    let padding = match border {
        Border::Zeros => 0,
        Border::Replicate => 1,
    };
    Tensor::f_grid_sampler(&image, grid, 0, padding, false)
}

/// Crops of all faces at once: `B x C x size x size`, each face warped by its `tfm`.
pub fn crop_faces(frame: &Tensor, alignments: &[Alignment], size: i64, border: Border) -> Result<Tensor> {
    let s = frame.size();
    let maps = Tensor::f_from_slice(&crop_maps(alignments, (s[2], s[3])))?.f_reshape([alignments.len() as i64, 3, 2])?;
    warp(frame, &grids(&maps.f_to_device(frame.device())?, (size, size))?, border)
}

/// The `2 x 3` matrices (row-major, 6 values a face) that take crop pixels to frame pixels, as
/// `cv2.warpAffine` inverts each face's `tfm`; see [`crop_faces_cv`].
pub fn crop_matrices(alignments: &[Alignment]) -> Vec<f64> {
    alignments.iter().flat_map(|a| a.crop_to_frame().into_iter().flatten()).collect()
}

/// Crops of all faces as `cv2.warpAffine(frame, tfm, (size, size))` makes them from an 8-bit
/// frame, exactly: INTER_LINEAR in OpenCV's fixed point (source coordinates rounded to 1/1024
/// pixel for the row and column parts, then to 1/32; weights in 1/1024; the sum rounded half
/// up), on the device. `frame` is `1 x C x H x W` holding 8-bit values (as float); `matrices`
/// is `N x 6` (f64, from [`crop_matrices`]) on the frame's device. `B x C x size x size`,
/// integral values.
pub fn crop_faces_cv(frame: &Tensor, matrices: &Tensor, size: i64, border: Border) -> Result<Tensor> {
    let (c, h, w) = (frame.size()[1], frame.size()[2], frame.size()[3]);
    let n = matrices.size()[0];
    let dev = frame.device();
    let m = |i: i64| matrices.f_narrow(1, i, 1)?.f_reshape([n, 1, 1]); // N x 1 x 1, f64
    let pos = Tensor::f_arange(size, (Kind::Double, dev))?;
    let (col, row) = (pos.f_reshape([1, 1, size])?, pos.f_reshape([1, size, 1])?);
    // cv::warpAffine: X0 = round((M01 y + M02) 1024) per row, adelta = round(M00 x 1024) per
    // column, X = (X0 + adelta + 16) >> 5 (1/32 pixel); the same for Y.
    let fixed = |a: Tensor| -> Result<Tensor> { a.f_mul_scalar(1024.0)?.f_round()?.f_to_kind(Kind::Int64) };
    let x32 = fixed(m(1)?.f_mul(&row)?.f_add(&m(2)?)?)?.f_add(&fixed(m(0)?.f_mul(&col)?)?)?.f_add_scalar(16)?.f_floor_divide_scalar(32)?;
    let y32 = fixed(m(4)?.f_mul(&row)?.f_add(&m(5)?)?)?.f_add(&fixed(m(3)?.f_mul(&col)?)?)?.f_add_scalar(16)?.f_floor_divide_scalar(32)?;
    let (x0, fx) = (x32.f_floor_divide_scalar(32)?, x32.f_remainder(32)?);
    let (y0, fy) = (y32.f_floor_divide_scalar(32)?, y32.f_remainder(32)?);
    let flat = frame.f_reshape([1, c, h * w])?.f_expand([n, c, h * w], false)?;
    let mut sum = Tensor::f_zeros([n, c, size * size], (Kind::Float, dev))?;
    for (dy, wy) in [(0, fy.f_neg()?.f_add_scalar(32)?), (1, fy.shallow_clone())] {
        for (dx, wx) in [(0, fx.f_neg()?.f_add_scalar(32)?), (1, fx.shallow_clone())] {
            let (xs, ys) = (x0.f_add_scalar(dx)?, y0.f_add_scalar(dy)?);
            let inside = xs.f_ge(0)?.f_logical_and(&xs.f_lt(w)?)?.f_logical_and(&ys.f_ge(0)?)?.f_logical_and(&ys.f_lt(h)?)?;
            let index = ys.f_clamp(0, h - 1)?.f_mul_scalar(w)?.f_add(&xs.f_clamp(0, w - 1)?)?.f_reshape([n, 1, size * size])?;
            let taps = flat.f_gather(2, &index.f_expand([n, c, size * size], false)?, false)?;
            let mut weight = wx.f_mul(&wy)?;
            if border == Border::Zeros {
                weight = weight.f_mul(&inside)?;
            }
            sum = sum.f_add(&taps.f_mul(&weight.f_reshape([n, 1, size * size])?.f_to_kind(Kind::Float)?)?)?;
        }
    }
    // Weights sum to 1024; OpenCV rounds (v + 512) >> 10.
    sum.f_add_scalar(512.0)?.f_div_scalar(1024.0)?.f_floor()?.f_reshape([n, c, size, size])
}

/// The maps of [`crop_faces`] (one [`grid_map`] per face) for a frame of `height x width`.
pub fn crop_maps(alignments: &[Alignment], (height, width): (i64, i64)) -> Vec<f32> {
    alignments.iter().flat_map(|a| affine_grid_map(a.crop_to_frame(), (0, 0), (height, width))).collect()
}

/// The frame rectangle `(x0, y0, width, height)` that a `size` crop covers when pasted back
/// through `tfm_inv`, clipped to a `width x height` frame; `None` if it misses the frame.
pub fn paste_region(tfm_inv: &Similarity, size: i64, frame: (i64, i64)) -> Option<(i64, i64, i64, i64)> {
    paste_region_stretched(tfm_inv, Stretch::NONE, size, frame)
}

/// [`paste_region`] in stored pixels of a picture displayed through `stretch` (`tfm_inv` maps
/// the crop to display coordinates).
pub fn paste_region_stretched(
    tfm_inv: &Similarity,
    stretch: Stretch,
    size: i64,
    (height, width): (i64, i64),
) -> Option<(i64, i64, i64, i64)> {
    let s = size as f64;
    let corners = [[0.0, 0.0], [s, 0.0], [0.0, s], [s, s]].map(|p| stretch.to_storage(tfm_inv.apply(p)));
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for [x, y] in corners {
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !(x0.is_finite() && y0.is_finite() && x1.is_finite() && y1.is_finite()) {
        return None;
    }
    let x0 = (x0.floor() as i64 - 1).max(0);
    let y0 = (y0.floor() as i64 - 1).max(0);
    let x1 = (x1.ceil() as i64 + 1).min(width);
    let y1 = (y1.ceil() as i64 + 1).min(height);
    (x1 > x0 && y1 > y0).then_some((x0, y0, x1 - x0, y1 - y0))
}

/// The separable kernels of `cv2.getGaussianKernel(101, 4)` (normalised), `1 x 1 x 1 x 101` and
/// `1 x 1 x 101 x 1`, on `device`.
pub fn gaussian_kernels(device: Device) -> Result<(Tensor, Tensor)> {
    let taps: Vec<f64> = (-50..=50).map(|i: i32| (-(i * i) as f64 / (2.0 * 16.0)).exp()).collect();
    let total: f64 = taps.iter().sum();
    let taps: Vec<f32> = taps.iter().map(|t| (t / total) as f32).collect();
    let k = Tensor::f_from_slice(&taps)?.f_to_device(device)?;
    Ok((k.f_reshape([1, 1, 1, 101])?, k.f_reshape([1, 1, 101, 1])?))
}

/// GPEN's `mask_postprocess` blur: `cv2.GaussianBlur((101, 101), 4)` twice, with cv2's default
/// border (BORDER_REFLECT_101), on `N x 1 x H x W` masks, with the kernels of
/// [`gaussian_kernels`] on the masks' device.
pub fn blur_twice(mask: &Tensor, (kx, ky): &(Tensor, Tensor)) -> Result<Tensor> {
    let mut m = mask.shallow_clone();
    for _ in 0..2 {
        m = m.f_reflection_pad2d([50, 50, 0, 0])?.f_conv2d::<Tensor>(kx, None, [1, 1], [0, 0], [1, 1], 1)?;
        m = m.f_reflection_pad2d([0, 0, 50, 50])?.f_conv2d::<Tensor>(ky, None, [1, 1], [0, 0], [1, 1], 1)?;
    }
    Ok(m)
}

/// GPEN's fixed soft paste mask at 512: the rectangle (26,26)-(486,486) filled, blurred twice
/// with a 101-tap Gaussian of sigma 4, then resized (bilinear) to `size`. `1 x 1 x size x size`.
pub fn soft_mask(size: i64, device: Device) -> Result<Tensor> {
    const N: i64 = 512;
    let opts = (Kind::Float, Device::Cpu);
    let inside = Tensor::f_arange(N, opts)?.f_ge(26)?.f_logical_and(&Tensor::f_arange(N, opts)?.f_le(486)?)?;
    let inside = inside.f_to_kind(Kind::Float)?;
    let mask = inside.f_reshape([N, 1])?.f_mul(&inside.f_reshape([1, N])?)?.f_reshape([1, 1, N, N])?;
    let mut m = blur_twice(&mask, &gaussian_kernels(Device::Cpu)?)?;
    if size != N {
        m = m.f_upsample_bilinear2d([size, size], false, None, None)?;
    }
    m.f_to_device(device)
}

#[cfg(test)]
mod tests {
    #[test]
    fn similarities_compose_and_the_identity_changes_nothing() {
        let s = Similarity { a: 0.8, b: 0.3, tx: 5.5, ty: -2.25 };
        let t = Similarity { a: 1.1, b: -0.2, tx: -1.0, ty: 3.0 };
        let p = [3.0, -7.0];
        let (got, want) = (s.after(&t).apply(p), s.apply(t.apply(p)));
        assert!((got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12);
        let one = Similarity { a: 1.0, b: 0.0, tx: 0.0, ty: 0.0 };
        assert_eq!((one.after(&s), s.after(&one)), (s, s));
        let back = s.inverse().after(&s).apply(p);
        assert!((back[0] - p[0]).abs() < 1e-12 && (back[1] - p[1]).abs() < 1e-12);
    }

    #[test]
    fn fixed_point_crops_follow_opencv_arithmetic() {
        let frame = Tensor::arange(3 * 6 * 8, (Kind::Float, Device::Cpu)).remainder(251).reshape([1, 3, 6, 8]);
        let shift = |tx: f64, ty: f64| Similarity { a: 1.0, b: 0.0, tx, ty };
        let matrices = |t: &[Similarity]| {
            let v: Vec<f64> = t.iter().flat_map(|s| s.matrix().into_iter().flatten()).collect();
            Tensor::from_slice(&v).reshape([t.len() as i64, 6])
        };
        // The identity gives the frame back, exactly.
        let same = crop_faces_cv(&frame, &matrices(&[shift(0.0, 0.0)]), 6, Border::Zeros).unwrap();
        assert_eq!(same.sum(Kind::Double).double_value(&[]), frame.narrow(3, 0, 6).sum(Kind::Double).double_value(&[]));
        // Half a pixel to the right: the mean of neighbours, rounded half up (OpenCV's
        // (v + 512) >> 10), where a float warp would round half to even.
        let half = crop_faces_cv(&frame, &matrices(&[shift(0.5, 0.0)]), 4, Border::Replicate).unwrap();
        for x in 0..3 {
            let (a, b) = (frame.double_value(&[0, 0, 1, x]), frame.double_value(&[0, 0, 1, x + 1]));
            assert_eq!(half.double_value(&[0, 0, 1, x]), ((a + b) / 2.0 + 0.5).floor(), "x {x}");
        }
        // Past the edge: replicated, or black.
        let out = shift(-2.0, 0.0);
        let rep = crop_faces_cv(&frame, &matrices(&[out]), 4, Border::Replicate).unwrap();
        let zero = crop_faces_cv(&frame, &matrices(&[out]), 4, Border::Zeros).unwrap();
        assert_eq!(rep.double_value(&[0, 2, 3, 0]), frame.double_value(&[0, 2, 3, 0]));
        assert_eq!(zero.double_value(&[0, 2, 3, 0]), 0.0);
        // A magnified face on a smooth picture: within a level of the float warp (positions are
        // rounded to 1/32 pixel), integral everywhere.
        let a = align(&template(64).map(|[x, y]| [(x * 0.05 + 0.3) as f32, (y * 0.05 + 0.2) as f32]), 64).unwrap();
        let xs = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([1, 1, 1, 12]);
        let ys = Tensor::arange(10, (Kind::Float, Device::Cpu)).reshape([1, 1, 10, 1]);
        let big = (xs * 9.0 + ys * 7.0).expand([1, 3, 10, 12], false).contiguous();
        let cv = crop_faces_cv(&big, &Tensor::from_slice(&crop_matrices(&[a])).reshape([1, 6]), 64, Border::Replicate).unwrap();
        let float = crop_faces(&big, &[a], 64, Border::Replicate).unwrap();
        assert!((cv.shallow_clone() - float).abs().max().double_value(&[]) <= 1.0);
        assert_eq!((cv.shallow_clone() - cv.round()).abs().max().double_value(&[]), 0.0);
    }

    use super::*;

    #[test]
    fn template_matches_gpen_values() {
        let t = template(512);
        assert!((t[0][0] - 202.04068428190476).abs() < 1e-9 && (t[0][1] - 242.8839634590476).abs() < 1e-9);
        assert!((t[4][0] - 300.8911249066667).abs() < 1e-9);
        let t2 = template(1024);
        assert!((t2[2][1] - 2.0 * template(512)[2][1]).abs() < 1e-9);
    }

    #[test]
    fn umeyama_recovers_a_known_similarity_and_inverts() {
        let truth = Similarity { a: 1.3 * 0.6f64.cos(), b: 1.3 * 0.6f64.sin(), tx: -40.0, ty: 12.5 };
        let src = [[10.0, 20.0], [50.0, 22.0], [30.0, 40.0], [15.0, 60.0], [45.0, 61.0]];
        let dst = src.map(|p| truth.apply(p));
        let fit = Similarity::umeyama(&src, &dst, None).unwrap();
        for (x, y) in [(fit.a, truth.a), (fit.b, truth.b), (fit.tx, truth.tx), (fit.ty, truth.ty)] {
            assert!((x - y).abs() < 1e-9, "{fit:?}");
        }
        let back = fit.inverse();
        for p in src {
            let q = back.apply(fit.apply(p));
            assert!((q[0] - p[0]).abs() < 1e-9 && (q[1] - p[1]).abs() < 1e-9);
        }
        // With the scale fixed, the fitted scale is that scale.
        let fixed = Similarity::umeyama(&dst, &src, Some(0.5)).unwrap();
        assert!((fixed.scale() - 0.5).abs() < 1e-12);
        assert!(Similarity::umeyama(&[[1.0, 1.0]; 5], &dst, None).is_none());
    }

    #[test]
    fn stretched_alignment_reads_and_writes_stored_pixels_through_display_geometry() {
        // A face whose display landmarks are the template moved and scaled (an exact
        // similarity), stored with pixels 4/3 as wide and as a field (every other line).
        let stretch = Stretch { x: 4.0 / 3.0, y: 2.0 };
        let size = 256;
        let shown = template(size).map(|[x, y]| [0.5 * x + 300.0, 0.5 * y + 120.0]);
        let stored = shown.map(|p| stretch.to_storage(p).map(|v| v as f32));
        let a = align_stretched(&stored, size, stretch).unwrap();
        let plain = align(&stored, size).unwrap();
        let at = |m: [[f64; 3]; 2], [x, y]: [f64; 2]| [m[0][0] * x + m[0][1] * y + m[0][2], m[1][0] * x + m[1][1] * y + m[1][2]];
        for (t, s) in template(size).iter().zip(&stored) {
            // The crop samples the stored landmark at the template point, and the way back
            // takes the stored landmark to the template point: GPEN sees an undistorted face.
            let p = at(a.crop_to_frame(), *t);
            assert!((p[0] - s[0] as f64).abs() < 1e-3 && (p[1] - s[1] as f64).abs() < 1e-3, "{p:?} {s:?}");
            let q = at(a.frame_to_crop_back(), [s[0] as f64, s[1] as f64]);
            assert!((q[0] - t[0]).abs() < 1e-3 && (q[1] - t[1]).abs() < 1e-3, "{q:?} {t:?}");
        }
        // Aligned in stored pixels the same landmarks miss the template by pixels.
        let p = at(plain.crop_to_frame(), template(size)[0]);
        assert!((p[0] - stored[0][0] as f64).abs() + (p[1] - stored[0][1] as f64).abs() > 2.0, "{p:?}");
        // The paste region is in stored pixels: as tall as the crop's display height over 2.
        let (_, _, rw, rh) = paste_region_stretched(&a.tfm_inv, a.stretch, size, (1000, 1000)).unwrap();
        let shown_side = size as f64 / a.tfm.scale();
        assert!((rw as f64 - shown_side / stretch.x).abs() <= 3.0 && (rh as f64 - shown_side / stretch.y).abs() <= 3.0, "{rw}x{rh}");
        // Square pixels: the composed maps are the plain ones, bit for bit.
        let square = align_stretched(&stored, size, Stretch::NONE).unwrap();
        assert_eq!(square.crop_to_frame(), plain.tfm.inverse().matrix());
        assert_eq!(square.frame_to_crop_back(), plain.tfm_inv.inverse().matrix());
    }

    #[test]
    fn paste_region_is_clipped_to_the_frame() {
        let t = Similarity { a: 0.5, b: 0.0, tx: -10.0, ty: 5.0 };
        assert_eq!(paste_region(&t, 256, (100, 100)), Some((0, 4, 100, 96)));
        let far = Similarity { a: 0.5, b: 0.0, tx: 1000.0, ty: 0.0 };
        assert_eq!(paste_region(&far, 256, (100, 100)), None);
    }

    #[test]
    fn identity_grid_reproduces_the_image() {
        let img = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([1, 1, 3, 4]);
        let id = Similarity { a: 1.0, b: 0.0, tx: 0.0, ty: 0.0 };
        let grid = sampling_grid(&[id], (0, 0), (3, 4), (3, 4), Device::Cpu).unwrap();
        let out = warp(&img, &grid, Border::Zeros).unwrap();
        assert!(out.allclose(&img, 1e-5, 1e-5, false));
        // An offset window reads the shifted pixels.
        let grid = sampling_grid(&[id], (1, 1), (2, 3), (3, 4), Device::Cpu).unwrap();
        let out = warp(&img, &grid, Border::Zeros).unwrap();
        assert!(out.allclose(&img.narrow(2, 1, 2).narrow(3, 1, 3), 1e-5, 1e-5, false));
    }
}
