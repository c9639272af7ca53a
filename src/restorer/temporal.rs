//! Faces that add no flicker: each track's restoration is blended, in aligned space, with the
//! track's previous one where the aligned input is still, and the flicker left is measured.
//!
//! Faces are aligned to one template, so a track's consecutive aligned crops are nearly
//! registered: a part of the face that did not change in the input (compared on a coarse grid,
//! so that noise and sub-pixel shifts do not count) takes mostly the previous restoration, and a
//! part that moved (a mouth opening, a turn) takes the new one. A still input therefore gives
//! a still output, bit for bit, and motion is never smeared across frames.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::Error;

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
/// (still) to 0 (moving), as a `1 x 1 x size x size` map.
pub fn stillness(now: &Tensor, before: &Tensor, size: i64) -> Result<Tensor, Error> {
    let change = now.f_sub(before)?.f_abs()?.f_mean_dim(1, true, Kind::Float)?;
    let still = change.f_sub_scalar(MOVING)?.f_div_scalar(STILL - MOVING)?.f_clamp(0.0, 1.0)?;
    Ok(still.f_upsample_bilinear2d([size, size], false, None, None)?)
}

/// How far the face's content moved in aligned space since the previous thumbnail (`1 x 3 x
/// GRID x GRID` each): the landmarks' jitter between two frames shifts the aligned crops by a
/// fraction of a pixel, which blending must undo or it would mix two misregistered faces. One
/// Lucas-Kanade step on grey thumbnails, solved on the device (nothing is read back); the
/// result is a grid offset (`1 x 1 x 1 x 2`, normalised coordinates, x then y) to add to an
/// identity sampling grid, clamped to two cells (more is motion, which stillness catches).
pub fn registration(now: &Tensor, before: &Tensor) -> Result<Tensor, Error> {
    let (c, p) = (now.f_mean_dim(1, true, Kind::Float)?, before.f_mean_dim(1, true, Kind::Float)?);
    let inner = |t: &Tensor, dy: i64, dx: i64| t.f_narrow(2, 1 + dy, GRID - 2)?.f_narrow(3, 1 + dx, GRID - 2);
    let gx = inner(&c, 0, 1)?.f_sub(&inner(&c, 0, -1)?)?.f_mul_scalar(0.5)?;
    let gy = inner(&c, 1, 0)?.f_sub(&inner(&c, -1, 0)?)?.f_mul_scalar(0.5)?;
    let e = inner(&p, 0, 0)?.f_sub(&inner(&c, 0, 0)?)?;
    let sum = |a: &Tensor, b: &Tensor| a.f_mul(b)?.f_sum(Kind::Float);
    let (a, b, d) = (sum(&gx, &gx)?, sum(&gx, &gy)?, sum(&gy, &gy)?);
    let (r1, r2) = (sum(&gx, &e)?, sum(&gy, &e)?);
    let det = a.f_mul(&d)?.f_sub(&b.f_mul(&b)?)?.f_add_scalar(1e-6)?;
    let dx = d.f_mul(&r1)?.f_sub(&b.f_mul(&r2)?)?.f_div(&det)?;
    let dy = a.f_mul(&r2)?.f_sub(&b.f_mul(&r1)?)?.f_div(&det)?;
    // Content at u before is at u + d now: the previous face is sampled at v - d.
    let shift = Tensor::f_stack(&[dx, dy], 0)?.f_clamp(-2.0, 2.0)?.f_mul_scalar(-2.0 / GRID as f64)?;
    Ok(shift.f_reshape([1, 1, 1, 2])?)
}

/// An identity sampling grid for `size x size` images (`1 x size x size x 2`).
pub fn identity_grid(size: i64, device: tch::Device) -> Result<Tensor, Error> {
    let theta = Tensor::f_from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0])?.f_reshape([1, 2, 3])?.f_to_device(device)?;
    Ok(Tensor::f_affine_grid_generator(&theta, [1, 1, size, size], false)?)
}

/// `image` (`1 x C x H x W`) moved by a [`registration`] offset on `grid` (its identity grid);
/// edges are replicated. No offset gives `image` exactly (resampling on the identity grid is
/// not exact in floating point, and a still face must stay bit for bit).
pub fn moved(image: &Tensor, grid: &Tensor, offset: &Tensor) -> Result<Tensor, Error> {
    Ok(moved_parts(&[image], grid, offset)?.remove(0))
}

/// Each of `parts` (`1 x C x H x W`, the same `H x W`) moved as [`moved`] moves one image, in
/// one resampling; the offset stays on the device (reading it would wait for the queue).
pub fn moved_parts(parts: &[&Tensor], grid: &Tensor, offset: &Tensor) -> Result<Vec<Tensor>, Error> {
    // One part (the thumbnails) needs no concatenated copy.
    let image = if let [one] = parts { one.shallow_clone() } else { Tensor::f_cat(parts, 1)? };
    let sampled = image.f_grid_sampler(&grid.f_add(offset)?, 0, 1, false)?;
    let moving = offset.f_abs()?.f_sum(Kind::Float)?.f_gt(0.0)?.f_to_kind(image.kind())?;
    let all = image.f_lerp_tensor(&sampled, &moving)?;
    let mut at = 0;
    parts
        .iter()
        .map(|p| {
            let c = p.size()[1];
            at += c;
            Ok(all.f_narrow(1, at - c, c)?)
        })
        .collect()
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
    /// Identity sampling grids by size, made once.
    grids: HashMap<i64, Tensor>,
}

impl TrackMemory {
    /// The identity grid of `size x size` images on `device`.
    pub fn grid(&mut self, size: i64, device: tch::Device) -> Result<Tensor, Error> {
        if let Some(g) = self.grids.get(&size).filter(|g| g.device() == device) {
            return Ok(g.shallow_clone());
        }
        let g = identity_grid(size, device)?;
        self.grids.insert(size, g.shallow_clone());
        Ok(g)
    }

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
        let still = stillness(&a, &a, 128).unwrap();
        assert_eq!(still.size(), [1, 1, 128, 128]);
        assert_eq!(still.min().double_value(&[]), 1.0);
        // Half the face moved by 20 levels: that half is not blended, the other half is.
        let b = a.copy();
        let _ = b.narrow(3, 0, GRID / 2).fill_(120.0);
        let s = stillness(&b, &a, GRID).unwrap();
        assert_eq!(s.narrow(3, 0, GRID / 2 - 1).max().double_value(&[]), 0.0);
        assert_eq!(s.narrow(3, GRID / 2 + 1, GRID / 2 - 1).min().double_value(&[]), 1.0);
        // Between still and moving, the weight falls linearly: 5 levels is halfway.
        let c = stillness(&image(105.0, GRID, GRID), &a, GRID).unwrap();
        assert!((c.mean(Kind::Float).double_value(&[]) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn registration_finds_a_sub_pixel_shift_and_none_between_equal_faces() {
        // A smooth pattern and the same moved right by 0.3 and down by 0.2 cells.
        let pattern = |dx: f64, dy: f64| {
            let x = Tensor::arange(GRID, (Kind::Float, Device::Cpu)).view([1, 1, 1, GRID]) - dx;
            let y = Tensor::arange(GRID, (Kind::Float, Device::Cpu)).view([1, 1, GRID, 1]) - dy;
            ((&x * 0.2).sin() * 40.0 + (&y * 0.15).cos() * 30.0 + 100.0).repeat([1, 3, 1, 1])
        };
        let (before, now) = (pattern(0.0, 0.0), pattern(0.3, 0.2));
        let offset = registration(&now, &before).unwrap();
        let cells: Vec<f64> = Vec::try_from(offset.view([2]).to_kind(Kind::Double) * (-(GRID as f64) / 2.0)).unwrap();
        assert!((cells[0] - 0.3).abs() < 0.03 && (cells[1] - 0.2).abs() < 0.03, "{cells:?}");
        // The previous face moved by it lands on the new one.
        let grid = identity_grid(GRID, Device::Cpu).unwrap();
        let err = |a: &Tensor, b: &Tensor| (a - b).narrow(2, 4, GRID - 8).narrow(3, 4, GRID - 8).abs().mean(Kind::Float).double_value(&[]);
        assert!(err(&moved(&before, &grid, &offset).unwrap(), &now) < 0.2 * err(&before, &now));
        // Equal faces: no offset, and moving by it changes nothing, bit for bit.
        let none = registration(&before, &before).unwrap();
        assert_eq!(none.abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert!(moved(&before, &grid, &none).unwrap().equal(&before));
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
