//! Background upscaling: RRDBNet (GPEN's RealESRNet, Real-ESRGAN) or bicubic, whole-frame or in
//! overlapping tiles blended with feathered weights, so that memory is bounded by the tile and
//! no seam shows.

pub mod rrdbnet;

use std::sync::Arc;

use tch::{Kind, TchError, Tensor};

pub use rrdbnet::{RrdbConfig, RrdbNet};

use crate::{Error, Setting};

type Result<T> = std::result::Result<T, TchError>;

/// A stretch `[start, start + len)` of one axis, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: i64,
    pub len: i64,
}

impl Span {
    pub fn end(&self) -> i64 {
        self.start + self.len
    }
}

/// Tiles of `tile` pixels covering `0..length`, neighbours overlapping by at least `overlap`,
/// spread evenly, each starting at a multiple of `align` (pixel-unshuffle groups pixels from
/// the frame's origin, so a tile must see the same grouping as the whole frame); the last tile
/// ends at `length` and may be up to `align - 1` longer. `tile == 0` or a tile at least as long
/// as the axis: one span.
pub fn spans(length: i64, tile: i64, overlap: i64, align: i64) -> Vec<Span> {
    let align = align.max(1);
    if length <= 0 {
        return Vec::new();
    }
    if tile <= 0 {
        return vec![Span { start: 0, len: length }];
    }
    let tile = (tile - tile % align).max(align).max(overlap + align);
    if tile >= length {
        return vec![Span { start: 0, len: length }];
    }
    // Flooring a start to the alignment can cost up to `align - 1` of overlap.
    let step = (tile - overlap - (align - 1)).max(1);
    let n = ((length - overlap + step - 1) / step).max(2);
    let mut out: Vec<Span> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let start = (i * (length - tile)) as f64 / (n - 1) as f64;
        let start = (start.round() as i64) / align * align;
        let len = if i == n - 1 { length - start } else { tile };
        // Flooring may give two tiles one start on short axes: the later (longer) one stays.
        match out.last_mut() {
            Some(prev) if prev.start == start => *prev = Span { start, len },
            _ => out.push(Span { start, len }),
        }
    }
    out
}

/// Raw blending weights of span `i` along its axis, at `scale` output pixels per input pixel.
/// Towards a neighbour the weight ramps linearly from 0 to 1 across the middle half of the
/// overlap, so each tile's outer quarter of the overlap (where its convolutions saw zero padding
/// instead of the picture) does not count. Weights are normalised by their sum over all tiles.
pub fn window(spans: &[Span], i: usize, scale: i64) -> Vec<f32> {
    let s = spans[i];
    let overlap_with = |j: Option<usize>| -> f64 {
        match j.and_then(|j| spans.get(j)) {
            Some(o) => ((s.end().min(o.end()) - s.start.max(o.start)).max(0) * scale) as f64,
            None => 0.0,
        }
    };
    let (left, right) = (overlap_with(i.checked_sub(1)), overlap_with(Some(i + 1)));
    let ramp = |d: f64, ov: f64| if ov <= 0.0 { 1.0 } else { ((d + 0.5 - ov / 4.0) / (ov / 2.0)).clamp(0.0, 1.0) };
    let n = s.len * scale;
    (0..n).map(|p| (ramp(p as f64, left) * ramp((n - 1 - p) as f64, right)) as f32).collect()
}

/// The tiles of a `width x height` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TilePlan {
    pub xs: Vec<Span>,
    pub ys: Vec<Span>,
}

impl TilePlan {
    pub fn new(width: i64, height: i64, tile: i64, overlap: i64, align: i64) -> Self {
        TilePlan { xs: spans(width, tile, overlap, align), ys: spans(height, tile, overlap, align) }
    }

    pub fn tiles(&self) -> usize {
        self.xs.len() * self.ys.len()
    }
}

/// Checks the tile size against the tile overlap: each tile must keep a part of its own.
pub fn check_tiles(tile: i64, overlap: i64) -> std::result::Result<(), Error> {
    if tile > 0 && tile < 2 * overlap {
        return Err(Error::invalid(
            Setting::TileSize,
            format!("{tile} is smaller than twice the tile overlap {overlap}: tiles would be all overlap"),
            format!("use a tile size of at least {}, or a smaller overlap", 2 * overlap),
        ));
    }
    Ok(())
}

/// How the background is upscaled.
pub enum Upscaler {
    /// An RRDBNet of the same scale.
    Net(Arc<RrdbNet>),
    /// Bicubic interpolation (no model given).
    Bicubic(i64),
}

impl std::fmt::Debug for Upscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upscaler::Net(n) => write!(f, "RRDBNet {:?}", n.config()),
            Upscaler::Bicubic(x) => write!(f, "bicubic x{x}"),
        }
    }
}

impl Upscaler {
    /// Upscaling by `factor` with `net` (from `registry::upscaler`),
    /// whose scale must be `factor`.
    pub fn with_net(net: Arc<RrdbNet>, factor: i64) -> std::result::Result<Self, Error> {
        let scale = net.config().scale;
        if scale != factor {
            return Err(Error::invalid(
                Setting::Upscale,
                format!("{}: an RRDBNet x{scale} cannot upscale by {factor}", net.path().display()),
                format!("set the factor to {scale}, or give an x{factor} model"),
            ));
        }
        Ok(Upscaler::Net(net))
    }

    /// Predicted peak bytes of upscaling a `width x height` frame in tiles of `tile` (0: whole).
    pub fn peak_bytes(&self, tile: i64, (width, height): (i64, i64)) -> u64 {
        let f = self.factor() as f64;
        let pixels = (width * height) as f64;
        match self {
            Upscaler::Bicubic(_) => (pixels * (1.0 + f * f) * 3.0 * 4.0 * 2.0) as u64,
            Upscaler::Net(n) => {
                let cfg = n.config();
                let tile_pixels = if tile <= 0 { pixels } else { ((tile.min(width) * tile.min(height)) as f64).min(pixels) };
                // The input in 0..1; with tiles also the output and weight accumulators and the
                // two output-sized results of normalising and scaling them.
                let frame = pixels * 3.0 * 4.0 * 2.0 + if tile > 0 { pixels * f * f * 4.0 * (3.0 + 1.0 + 6.0) } else { 0.0 };
                (tile_pixels * cfg.peak_floats_per_pixel() * 4.0 + frame) as u64
            }
        }
    }

    pub fn factor(&self) -> i64 {
        match self {
            Upscaler::Net(n) => n.config().scale,
            Upscaler::Bicubic(f) => *f,
        }
    }

    /// `1 x 3 x H x W` float 0..255 (RGB) to `1 x 3 x fH x fW` float 0..255, in tiles of `tile`
    /// input pixels overlapping by `overlap` (`tile == 0`: the whole frame at once).
    pub fn upscale(&self, frame: &Tensor, tile: i64, overlap: i64) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let net = match self {
            Upscaler::Bicubic(f) => {
                let (h, w) = (frame.size()[2], frame.size()[3]);
                return frame.f_upsample_bicubic2d([h * f, w * f], false, None, None)?.f_clamp(0.0, 255.0);
            }
            Upscaler::Net(n) => n,
        };
        let (h, w) = (frame.size()[2], frame.size()[3]);
        let plan = TilePlan::new(w, h, tile, overlap, net.config().multiple());
        let unit = frame.f_div_scalar(255.0)?;
        if plan.tiles() == 1 {
            return run_padded(net, &unit)?.f_clamp(0.0, 1.0)?.f_mul_scalar(255.0);
        }
        let s = net.config().scale;
        let dev = frame.device();
        let out = Tensor::f_zeros([1, 3, h * s, w * s], (Kind::Float, dev))?;
        let weights = Tensor::f_zeros([1, 1, h * s, w * s], (Kind::Float, dev))?;
        // Every tile's column and row windows go to the device in one copy, which does not wait
        // for the device (page-locked memory).
        let windows: Vec<Vec<f32>> =
            (0..plan.xs.len()).map(|ix| window(&plan.xs, ix, s)).chain((0..plan.ys.len()).map(|iy| window(&plan.ys, iy, s))).collect();
        let all = crate::transfer::upload_pinned(&Tensor::f_from_slice(&windows.concat())?, dev)?;
        let mut at = 0;
        let mut parts = Vec::with_capacity(windows.len());
        for w in &windows {
            parts.push(all.f_narrow(0, at, w.len() as i64)?);
            at += w.len() as i64;
        }
        let rows = parts.split_off(plan.xs.len());
        let wxs = parts.iter().map(|w| w.f_reshape([1, 1, 1, -1])).collect::<Result<Vec<_>>>()?;
        for (y, wy) in plan.ys.iter().zip(&rows) {
            let wy = wy.f_reshape([1, 1, -1, 1])?;
            for (x, wx) in plan.xs.iter().zip(&wxs) {
                let w = wy.f_mul(wx)?;
                let part = run_padded(net, &unit.f_narrow(2, y.start, y.len)?.f_narrow(3, x.start, x.len)?)?;
                let _ = out.f_narrow(2, y.start * s, y.len * s)?.f_narrow(3, x.start * s, x.len * s)?.f_add_(&part.f_mul(&w)?)?;
                let _ = weights.f_narrow(2, y.start * s, y.len * s)?.f_narrow(3, x.start * s, x.len * s)?.f_add_(&w)?;
            }
        }
        out.f_div(&weights)?.f_clamp(0.0, 1.0)?.f_mul_scalar(255.0)
    }
}

/// The net on `x` (0..1), padded at the bottom and right to the multiple pixel-unshuffle needs
/// (by reflection, as GPEN's RealESRNet does; by replication where the side is too short to
/// reflect), and cropped back.
fn run_padded(net: &RrdbNet, x: &Tensor) -> Result<Tensor> {
    let m = net.config().multiple();
    let (h, w) = (x.size()[2], x.size()[3]);
    let (ph, pw) = ((m - h % m) % m, (m - w % m) % m);
    let s = net.config().scale;
    if ph == 0 && pw == 0 {
        return net.forward(x);
    }
    let padded = if ph < h && pw < w { x.f_reflection_pad2d([0, pw, 0, ph])? } else { x.f_replication_pad2d([0, pw, 0, ph])? };
    net.forward(&padded)?.f_narrow(2, 0, h * s)?.f_narrow(3, 0, w * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normalised weights of every output position along one axis.
    fn coverage(length: i64, tile: i64, overlap: i64, scale: i64) -> Vec<f64> {
        let sp = spans(length, tile, overlap, scale);
        let mut sum = vec![0f64; (length * scale) as usize];
        let mut count = vec![0usize; (length * scale) as usize];
        for i in 0..sp.len() {
            for (p, w) in window(&sp, i, scale).iter().enumerate() {
                let at = (sp[i].start * scale) as usize + p;
                sum[at] += *w as f64;
                count[at] += 1;
            }
        }
        assert!(count.iter().all(|&c| c >= 1), "every pixel covered ({length}, {tile}, {overlap})");
        sum
    }

    #[test]
    fn spans_cover_the_axis_within_bounds_with_the_overlap() {
        for length in [1i64, 2, 3, 7, 95, 96, 97, 255, 256, 257, 1000, 1080, 1920, 4320, 7680] {
            for (tile, overlap) in [(0, 0), (1, 0), (2, 1), (8, 4), (64, 16), (96, 10), (256, 32), (400, 0), (10000, 16)] {
                for align in [1, 2, 4] {
                    let sp = spans(length, tile, overlap, align);
                    let what = format!("length {length} tile {tile} overlap {overlap} align {align}: {sp:?}");
                    assert_eq!(sp[0].start, 0, "{what}");
                    assert_eq!(sp.last().unwrap().end(), length, "{what}");
                    for s in &sp {
                        assert!(s.start >= 0 && s.end() <= length && s.len >= 1, "{what}");
                        assert_eq!(s.start % align, 0, "{what}");
                        if tile > 0 {
                            assert!(s.len < tile.max(overlap + align) + align, "{what}");
                        }
                    }
                    for pair in sp.windows(2) {
                        assert!(pair[1].start > pair[0].start, "advancing: {what}");
                        assert!(pair[0].end() - pair[1].start >= overlap, "{what}");
                    }
                    if tile == 0 || tile >= length {
                        assert_eq!(sp.len(), 1);
                    }
                }
            }
        }
    }

    #[test]
    fn weights_are_positive_everywhere_and_normalise_to_one() {
        for length in [1i64, 5, 96, 97, 300, 1080, 7680] {
            for (tile, overlap) in [(0, 0), (16, 8), (32, 8), (96, 16), (256, 32), (128, 0)] {
                for scale in [1i64, 2, 4] {
                    let sum = coverage(length, tile, overlap, scale);
                    assert!(sum.iter().all(|&w| w > 0.0), "{length} {tile} {overlap} x{scale}: a pixel with no weight");
                }
            }
        }
    }

    #[test]
    fn a_lone_tile_weighs_one_and_ramps_face_neighbours_only() {
        let sp = spans(100, 0, 16, 1);
        assert!(window(&sp, 0, 2).iter().all(|&w| w == 1.0));
        let sp = spans(100, 60, 20, 1);
        assert_eq!(sp, vec![Span { start: 0, len: 60 }, Span { start: 40, len: 60 }]);
        let w0 = window(&sp, 0, 1);
        assert_eq!(w0[0], 1.0, "no ramp at the frame edge");
        assert_eq!(*w0.last().unwrap(), 0.0, "outer quarter of the overlap does not count");
        // Cross-fade: the two tiles' weights sum to 1 across the overlap.
        let w1 = window(&sp, 1, 1);
        for p in 40..60 {
            assert!((w0[p] + w1[p - 40] - 1.0).abs() < 1e-6, "at {p}: {} + {}", w0[p], w1[p - 40]);
        }
    }

    #[test]
    fn tiles_must_be_at_least_twice_the_overlap() {
        assert!(check_tiles(0, 64).is_ok());
        assert!(check_tiles(64, 32).is_ok());
        let e = check_tiles(48, 32).unwrap_err();
        assert!(matches!(e, Error::InvalidSetting { setting: Setting::TileSize, .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("48 is smaller than twice the tile overlap 32") && e.contains("at least 64"), "{e}");
    }

    #[test]
    fn eight_k_frame_plans_quickly_and_fully() {
        let plan = TilePlan::new(7680, 4320, 256, 32, 2);
        assert_eq!(plan.xs.len(), 35);
        assert_eq!(plan.ys.len(), 20);
        assert_eq!(TilePlan::new(1, 1, 256, 32, 4).tiles(), 1);
    }
}
