//! Faces that add no flicker: each track's restoration is blended, in aligned space, with the
//! track's previous one where the aligned input is still, and the flicker left is measured.
//!
//! A track's consecutive crops are registered onto each other ([`super::lock`]): a part of the
//! face that did not change in the input (compared on a coarse grid, so that noise does not
//! count) takes mostly the previous restoration, and a part that changed (a mouth opening, a
//! turn) takes the new one. A still input therefore gives a still output, bit for bit, and
//! motion is never smeared across frames.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::error::Error;

/// Cells per side of the grid on which aligned inputs are compared (8 x 8 pixels at 512).
pub const GRID: i64 = 64;
/// Mean change of a cell, in levels (0..255, mean of the channels), at or below which that part
/// of the face counts as still: sub-pixel drift and compression noise stay under it.
pub const STILL: f64 = 2.0;
/// Mean change of a cell, in levels, from which that part of the face counts as moving and is
/// not blended at all.
pub const MOVING: f64 = 8.0;

/// The aligned crops (`N x 3 x S x S`, 0..255) averaged over the cells of the comparison grid.
pub fn thumbnails(crops: &Tensor) -> Result<Tensor, Error> {
    Ok(crops.f_adaptive_avg_pool2d([GRID, GRID])?)
}

/// How still each part of a face is between two thumbnails (`1 x 3 x GRID x GRID`), from 1
/// (still) to 0 (moving), per cell (`1 x 1 x GRID x GRID`).
pub fn stillness(now: &Tensor, before: &Tensor) -> Result<Tensor, Error> {
    let change = now.f_sub(before)?.f_abs()?.f_mean_dim(1, true, Kind::Float)?;
    Ok(change.f_sub_scalar(MOVING)?.f_div_scalar(STILL - MOVING)?.f_clamp(0.0, 1.0)?)
}

/// `a` (`1 x C x S x S`) moved towards `b` by `strength` times `still` (`1 x 1 x GRID x
/// GRID`), a per-cell map spread over the pixels: bilinear to twice the grid, then each value
/// over a square of pixels, a quarter cell (a bilinear weight for every pixel costs half as
/// much as the whole blending). In place when `in_place`.
pub fn blend(a: &Tensor, b: &Tensor, still: &Tensor, strength: f64, in_place: bool) -> Result<Tensor, Error> {
    let size = a.size()[2];
    let fine = still.f_mul_scalar(strength)?.f_upsample_bilinear2d([2 * GRID, 2 * GRID], false, None, None)?;
    let weight = if size > 2 * GRID {
        fine.f_upsample_nearest2d([size, size], None, None)?
    } else {
        fine.f_upsample_bilinear2d([size, size], false, None, None)?
    };
    if in_place {
        let mut a = a.shallow_clone();
        let _ = a.f_lerp_tensor_(b, &weight)?;
        Ok(a)
    } else {
        Ok(a.f_lerp_tensor(b, &weight)?)
    }
}

/// The face in GPEN's template, in cells: its middle three fifths across, from a fifth to nine
/// tenths down.
const FACE: (usize, usize, usize, usize) = (GRID as usize / 5, GRID as usize * 4 / 5, GRID as usize / 5, GRID as usize * 9 / 10);

/// The grey levels (`GRID x GRID`, row by row) of a thumbnail's three channels (`3 x GRID x
/// GRID`).
pub fn grey(thumb: &[f32]) -> Vec<f32> {
    let n = (GRID * GRID) as usize;
    (0..n).map(|i| (thumb[i] + thumb[n + i] + thumb[2 * n + i]) / 3.0).collect()
}

/// How a face's content moved from `before` to `now` (grey thumbnails, [`grey`]): one
/// Lucas-Kanade step over the face's cells (its surroundings may stand still while it moves),
/// on the host: the thumbnails are small, and a few thousand multiplications cost less than
/// launching the tensor operations that would do them. `None` when the face is flat (nothing
/// to register on).
pub fn motion(before: &[f32], now: &[f32]) -> Option<Motion> {
    let g = GRID as usize;
    let (x0, x1, y0, y1) = FACE;
    let at = |t: &[f32], x: usize, y: usize| f64::from(t[y * g + x]);
    // Cell positions from the grid's centre, in half grids (scale and turn per half grid).
    let half = GRID as f64 / 2.0;
    let (mut normal, mut rhs) = ([[0.0f64; 4]; 4], [0.0f64; 4]);
    for y in y0..y1 {
        let ys = (y as f64 - (half - 0.5)) / half;
        for x in x0..x1 {
            let xs = (x as f64 - (half - 0.5)) / half;
            // Gradients of the previous thumbnail: content at u before is at u + d(u) now, so
            // now(u) = before(u - d(u)), and to first order grad(before) . d = before - now.
            let gx = (at(before, x + 1, y) - at(before, x - 1, y)) * 0.5;
            let gy = (at(before, x, y + 1) - at(before, x, y - 1)) * 0.5;
            let j = [gx, gy, gx * xs + gy * ys, gy * xs - gx * ys];
            let e = at(before, x, y) - at(now, x, y);
            for a in 0..4 {
                rhs[a] += j[a] * e;
                for b in 0..4 {
                    normal[a][b] += j[a] * j[b];
                }
            }
        }
    }
    Motion::solve(normal, rhs)
}

/// A small motion of a face's content in its crop: content at cell `u` before is at
/// `u + shift + scale * r + turn * perp(r)` now, `r` being `u` from the grid's centre.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Motion {
    /// Cells, x then y.
    pub shift: [f64; 2],
    /// Relative change of size.
    pub scale: f64,
    /// Radians.
    pub turn: f64,
}

impl Motion {
    /// The motion that solves the normal equations `normal x = rhs` of [`motion`]; `None` when
    /// they are singular.
    fn solve(normal: [[f64; 4]; 4], rhs: [f64; 4]) -> Option<Motion> {
        let mut m = [[0.0f64; 5]; 4];
        for (i, row) in m.iter_mut().enumerate() {
            row[..4].copy_from_slice(&normal[i]);
            row[4] = rhs[i];
        }
        // Gaussian elimination with partial pivoting on the 4 x 4 system.
        let size = (0..4).map(|i| m[i][i].abs()).fold(0.0, f64::max);
        for col in 0..4 {
            let pivot = (col..4).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
            if m[pivot][col].abs() <= 1e-9 * size.max(f64::MIN_POSITIVE) {
                return None;
            }
            m.swap(col, pivot);
            let pivot_row = m[col];
            for (r, row) in m.iter_mut().enumerate() {
                if r != col {
                    let f = row[col] / pivot_row[col];
                    for (v, p) in row.iter_mut().zip(pivot_row).skip(col) {
                        *v -= f * p;
                    }
                }
            }
        }
        let x: [f64; 4] = std::array::from_fn(|i| m[i][4] / m[i][i]);
        let half = GRID as f64 / 2.0;
        let motion = Motion { shift: [x[0], x[1]], scale: x[2] / half, turn: x[3] / half };
        (x.iter().all(|v| v.is_finite())).then_some(motion)
    }
}

/// What a track kept of the last frame it was pasted in, in aligned space.
#[derive(Debug)]
pub struct TrackState {
    /// The frame ([`TrackMemory::serial`]) it was pasted in.
    pub serial: u64,
    /// The aligned input's thumbnail (`1 x 3 x GRID x GRID`).
    pub thumb: Tensor,
    /// The restored face as blended (`1 x 3 x S x S`, 0..255); kept while blending is on.
    pub face: Option<Tensor>,
    /// The parsing mask as parsed and as pasted (`1 x 1 x S x S`), with face parsing.
    pub mask: Option<(Tensor, Tensor)>,
}

/// The state of each live track, from the last frame that was written.
#[derive(Debug, Default)]
pub struct TrackMemory {
    tracks: HashMap<u64, TrackState>,
    /// The number of the frame in hand; frames are numbered as they arrive, so that a track
    /// state is used only by the very next frame (a gap, a dropped or passed-through frame, ends
    /// the blending).
    pub serial: u64,
}

impl TrackMemory {
    /// What track `id` kept from the frame just before this one.
    pub fn previous(&self, id: u64) -> Option<&TrackState> {
        self.tracks.get(&id).filter(|s| s.serial + 1 == self.serial)
    }

    /// The states of a written frame; tracks not in it are forgotten.
    pub fn keep(&mut self, states: Vec<(u64, TrackState)>) {
        self.tracks = states.into_iter().collect();
    }

    pub fn clear(&mut self) {
        self.tracks.clear();
    }

    /// Restored faces kept (for the estimator's count and tests).
    pub fn faces_kept(&self) -> usize {
        self.tracks.values().filter(|s| s.face.is_some()).count()
    }
}

/// How much restored faces change from frame to frame against how much the input changed
/// there: the product's flicker figure.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Flicker {
    /// Mean absolute change (levels) between consecutive output frames inside the pasted region.
    pub output_change: f64,
    /// The same for the input frames.
    pub input_change: f64,
    /// The summed weight of the pixels compared (both frames' paste masks multiplied), so that
    /// figures of several streams or shots can be pooled.
    pub weight: f64,
    /// Pairs of consecutive frames measured (a face pasted in both, no scene cut between).
    pub pairs: u64,
}

impl Flicker {
    /// `output_change / input_change`: above 1 the restorer adds flicker; `None` before any pair
    /// (or when the input never changed).
    pub fn amplification(&self) -> Option<f64> {
        (self.pairs > 0 && self.input_change > 0.0).then(|| self.output_change / self.input_change)
    }

    /// The figures of `self` and `other` pooled, as if measured in one stream.
    pub fn pooled(&self, other: &Flicker) -> Flicker {
        let weight = self.weight + other.weight;
        let mean = |a: f64, b: f64| if weight > 0.0 { (a * self.weight + b * other.weight) / weight } else { 0.0 };
        Flicker {
            output_change: mean(self.output_change, other.output_change),
            input_change: mean(self.input_change, other.input_change),
            weight,
            pairs: self.pairs + other.pairs,
        }
    }
}

/// A written frame's pasted region, as the meter keeps it.
#[derive(Debug)]
struct PastedFrame {
    serial: u64,
    region: (i64, i64, i64, i64),
    input: Tensor,
    output: Tensor,
    mask: Tensor,
}

/// Measures flicker over a stream: each written frame's pasted region against the previous
/// one's, weighted by both frames' paste masks. Sums stay on the device until read.
#[derive(Debug, Default)]
pub struct FlickerMeter {
    last: Option<PastedFrame>,
    /// Weighted output change, weighted input change, weight.
    sums: Option<Tensor>,
    pairs: u64,
}

impl FlickerMeter {
    /// Adds frame `serial`'s pasted `region` (`x0, y0, width, height`): the input and output
    /// bytes there as written (`1 x 3 x h x w`, uint8: a quarter of float's memory) and the paste
    /// mask (`1 x 1 x h x w`, 0..1).
    pub fn observe(
        &mut self,
        serial: u64,
        region: (i64, i64, i64, i64),
        input: Tensor,
        output: Tensor,
        mask: &Tensor,
    ) -> Result<(), Error> {
        let _guard = tch::no_grad_guard();
        let now = PastedFrame { serial, region, input, output, mask: mask.shallow_clone() };
        if let Some(last) = self.last.as_ref().filter(|l| l.serial + 1 == serial) {
            if let Some(sums) = pair_sums(last, &now)? {
                self.sums = Some(match self.sums.take() {
                    Some(s) => s.f_add(&sums)?,
                    None => sums,
                });
                self.pairs += 1;
            }
        }
        self.last = Some(now);
        Ok(())
    }

    /// Forgets the last frame (a scene cut, a seek): the next pair starts after it.
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// The figures so far (one read from the device).
    pub fn read(&self) -> Result<Flicker, Error> {
        let Some(sums) = &self.sums else { return Ok(Flicker::default()) };
        let v = &crate::transfer::download_f32(&[sums])?[0];
        let weight = f64::from(v[2]).max(f64::MIN_POSITIVE);
        Ok(Flicker {
            output_change: f64::from(v[0]) / weight,
            input_change: f64::from(v[1]) / weight,
            weight: f64::from(v[2]),
            pairs: self.pairs,
        })
    }
}

/// The mask-weighted sums of output and input change over the overlap of two frames' regions
/// (a 3-vector on the device), or `None` when they do not overlap.
fn pair_sums(a: &PastedFrame, b: &PastedFrame) -> Result<Option<Tensor>, Error> {
    let (ax, ay, aw, ah) = a.region;
    let (bx, by, bw, bh) = b.region;
    let (x0, y0) = (ax.max(bx), ay.max(by));
    let (x1, y1) = ((ax + aw).min(bx + bw), (ay + ah).min(by + bh));
    if x1 <= x0 || y1 <= y0 {
        return Ok(None);
    }
    let part = |t: &Tensor, (rx, ry, _, _): (i64, i64, i64, i64)| t.f_narrow(2, y0 - ry, y1 - y0)?.f_narrow(3, x0 - rx, x1 - x0);
    let weight = part(&a.mask, a.region)?.f_mul(&part(&b.mask, b.region)?)?;
    let change = |x: &Tensor, y: &Tensor| -> Result<Tensor, Error> {
        let d = part(x, a.region)?.f_to_kind(Kind::Float)?.f_sub(&part(y, b.region)?.f_to_kind(Kind::Float)?)?;
        Ok(d.f_abs()?.f_mean_dim(1, true, Kind::Float)?.f_mul(&weight)?.f_sum(Kind::Float)?)
    };
    let sums = Tensor::f_stack(&[change(&a.output, &b.output)?, change(&a.input, &b.input)?, weight.f_sum(Kind::Float)?], 0)?;
    Ok(Some(sums))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn image(v: f64, h: i64, w: i64) -> Tensor {
        Tensor::full([1, 3, h, w], v, (Kind::Float, Device::Cpu))
    }

    fn bytes(v: f64, h: i64, w: i64) -> Tensor {
        image(v, h, w).to_kind(Kind::Uint8)
    }

    #[test]
    fn stillness_is_one_when_still_and_zero_when_moving() {
        let a = image(100.0, GRID, GRID);
        let still = stillness(&a, &a).unwrap();
        assert_eq!(still.size(), [1, 1, GRID, GRID]);
        assert_eq!(still.min().double_value(&[]), 1.0);
        // Half the face moved by 20 levels: that half is not blended, the other half is.
        let b = a.copy();
        let _ = b.narrow(3, 0, GRID / 2).fill_(120.0);
        let s = stillness(&b, &a).unwrap();
        assert_eq!(s.narrow(3, 0, GRID / 2).max().double_value(&[]), 0.0);
        assert_eq!(s.narrow(3, GRID / 2, GRID / 2).min().double_value(&[]), 1.0);
        // Between still and moving, the weight falls linearly: 5 levels is halfway.
        let c = stillness(&image(105.0, GRID, GRID), &a).unwrap();
        assert!((c.mean(Kind::Float).double_value(&[]) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn blending_spreads_the_map_in_squares_close_to_bilinear() {
        let still = Tensor::rand([1, 1, GRID, GRID], (Kind::Float, Device::Cpu));
        // Squares of a quarter cell: a weight is at most half a cell's step from bilinear.
        let steps = (still.narrow(3, 1, GRID - 1) - still.narrow(3, 0, GRID - 1)).abs().max().double_value(&[]);
        for size in [256, 512, 1024] {
            let a = Tensor::zeros([1, 3, size, size], (Kind::Float, Device::Cpu));
            let b = Tensor::ones([1, 3, size, size], (Kind::Float, Device::Cpu));
            let got = blend(&a, &b, &still, 0.8, false).unwrap();
            assert_eq!(got.size(), [1, 3, size, size]);
            let want = still.upsample_bilinear2d([size, size], false, None, None) * 0.8;
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err <= 0.5 * 0.8 * steps + 1e-6, "{size}: {err} against steps of {steps}");
            // In place gives the same, into `a`.
            let _ = blend(&a, &b, &still, 0.8, true).unwrap();
            assert!(a.equal(&got));
        }
    }

    #[test]
    fn motion_finds_a_sub_pixel_shift_a_zoom_and_a_turn_and_none_between_equal_faces() {
        // A smooth pattern sampled where the motion takes each cell (about the grid's centre).
        let pattern = |m: Motion| {
            let c = (GRID as f64 - 1.0) / 2.0;
            let mut v = vec![0f32; (GRID * GRID) as usize];
            for y in 0..GRID {
                for x in 0..GRID {
                    // The point that moved to (x, y): invert the small motion to first order.
                    let (rx, ry) = (x as f64 - c - m.shift[0], y as f64 - c - m.shift[1]);
                    let (sx, sy) = (rx - m.scale * rx + m.turn * ry, ry - m.scale * ry - m.turn * rx);
                    v[(y * GRID + x) as usize] =
                        ((sx * 0.2).sin() * 40.0 + (sy * 0.15).cos() * 30.0 + (sx * sy * 0.004).sin() * 20.0 + 100.0) as f32;
                }
            }
            Tensor::from_slice(&v).reshape([1, 1, GRID, GRID]).repeat([1, 3, 1, 1])
        };
        let still = Motion { shift: [0.0, 0.0], scale: 0.0, turn: 0.0 };
        let cases = [
            Motion { shift: [0.3, 0.2], scale: 0.0, turn: 0.0 },
            Motion { shift: [-0.5, 0.1], scale: 0.01, turn: 0.0 },
            Motion { shift: [0.0, 0.0], scale: 0.0, turn: 0.01 },
        ];
        let before = Tensor::cat(&cases.iter().map(|_| pattern(still)).collect::<Vec<_>>(), 0);
        let now = Tensor::cat(&cases.iter().map(|m| pattern(*m)).collect::<Vec<_>>(), 0);
        let solve = |now: &Tensor, before: &Tensor| -> Vec<Option<Motion>> {
            let (now, before): (Vec<f32>, Vec<f32>) =
                (Vec::try_from(now.flatten(0, -1)).unwrap(), Vec::try_from(before.flatten(0, -1)).unwrap());
            let one = (3 * GRID * GRID) as usize;
            (0..now.len() / one).map(|i| motion(&grey(&before[i * one..(i + 1) * one]), &grey(&now[i * one..(i + 1) * one]))).collect()
        };
        let found = solve(&now, &before);
        for (i, want) in cases.iter().enumerate() {
            let got = found[i].unwrap();
            let close = (got.shift[0] - want.shift[0]).abs() < 0.05
                && (got.shift[1] - want.shift[1]).abs() < 0.05
                && (got.scale - want.scale).abs() < 0.002
                && (got.turn - want.turn).abs() < 0.002;
            assert!(close, "case {i}: {got:?} for {want:?}");
        }
        // Equal faces: no motion at all (a still face's crop does not move); a flat face: none
        // to be found.
        assert_eq!(solve(&before, &before)[0], Some(still));
        let flat = Tensor::full([1, 3, GRID, GRID], 50.0, (Kind::Float, Device::Cpu));
        assert_eq!(solve(&flat, &flat)[0], None);
        // Only the face's part counts: a change in the corners moves nothing.
        let corner = pattern(still);
        let _ = corner.narrow(2, 0, 4).narrow(3, 0, 4).fill_(0.0);
        assert_eq!(solve(&corner, &pattern(still))[0], Some(still));
    }

    #[test]
    fn thumbnails_average_cells() {
        let x = Tensor::arange(512 * 512, (Kind::Float, Device::Cpu)).reshape([1, 1, 512, 512]).repeat([2, 3, 1, 1]);
        let t = thumbnails(&x).unwrap();
        assert_eq!(t.size(), [2, 3, GRID, GRID]);
        // The first cell is rows 0..8 and columns 0..8: its mean is row 3.5, column 3.5.
        assert!((t.double_value(&[0, 0, 0, 0]) - (3.5 * 512.0 + 3.5)).abs() < 1e-3);
    }

    #[test]
    fn a_state_serves_the_next_frame_only() {
        let mut m = TrackMemory { serial: 4, ..Default::default() };
        let state = |serial| TrackState { serial, thumb: image(0.0, 1, 1), face: None, mask: None };
        m.keep(vec![(7, state(4))]);
        m.serial = 5;
        assert!(m.previous(7).is_some());
        assert!(m.previous(8).is_none());
        // A frame in between that pasted nothing (a gap): the state is stale.
        m.serial = 6;
        assert!(m.previous(7).is_none());
    }

    #[test]
    fn the_meter_weighs_change_by_both_masks_over_the_overlap() {
        let mut m = FlickerMeter::default();
        let ones = Tensor::ones([1, 1, 4, 4], (Kind::Float, Device::Cpu));
        m.observe(1, (0, 0, 4, 4), bytes(10.0, 4, 4), bytes(50.0, 4, 4), &ones).unwrap();
        assert_eq!(m.read().unwrap().pairs, 0);
        // The next region is shifted by 2 columns: they overlap over 2 x 4 pixels.
        m.observe(2, (2, 0, 4, 4), bytes(12.0, 4, 4), bytes(53.0, 4, 4), &ones).unwrap();
        let f = m.read().unwrap();
        assert_eq!(f.pairs, 1);
        assert!((f.input_change - 2.0).abs() < 1e-6 && (f.output_change - 3.0).abs() < 1e-6, "{f:?}");
        assert!((f.amplification().unwrap() - 1.5).abs() < 1e-6);
        assert_eq!(f.weight, 8.0);
        let other = Flicker { output_change: 6.0, input_change: 1.0, weight: 24.0, pairs: 3 };
        let p = f.pooled(&other);
        assert_eq!((p.output_change, p.input_change, p.weight, p.pairs), (5.25, 1.25, 32.0, 4));
        // Not the next frame: no pair. A region elsewhere: no overlap, no pair.
        m.observe(4, (2, 0, 4, 4), bytes(0.0, 4, 4), bytes(0.0, 4, 4), &ones).unwrap();
        m.observe(5, (20, 0, 4, 4), bytes(0.0, 4, 4), bytes(0.0, 4, 4), &ones).unwrap();
        assert_eq!(m.read().unwrap().pairs, 1);
        m.forget();
        m.observe(6, (20, 0, 4, 4), bytes(9.0, 4, 4), bytes(9.0, 4, 4), &ones).unwrap();
        assert_eq!(m.read().unwrap().pairs, 1, "a forgotten frame starts no pair");
        // Pixels the mask leaves out do not count.
        let mut m = FlickerMeter::default();
        let half = Tensor::cat(&[ones.narrow(3, 0, 2), ones.narrow(3, 0, 2).zeros_like()], 3);
        let left_changes = Tensor::cat(&[image(30.0, 4, 2), image(0.0, 4, 2)], 3);
        m.observe(1, (0, 0, 4, 4), bytes(0.0, 4, 4), bytes(0.0, 4, 4), &half).unwrap();
        m.observe(2, (0, 0, 4, 4), bytes(1.0, 4, 4), left_changes.to_kind(Kind::Uint8), &half).unwrap();
        let f = m.read().unwrap();
        assert!((f.output_change - 30.0).abs() < 1e-6 && (f.input_change - 1.0).abs() < 1e-6, "{f:?}");
    }
}
