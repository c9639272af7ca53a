//! Crops that stay on the face: each track's crop is moved, frame by frame, by the motion that
//! registers its thumbnail onto the previous frame's, so that consecutive crops of a still face
//! hold the same picture.
//!
//! Landmarks jitter even when smoothed (tenths of a pixel in place, several per cent in the
//! spread that sets the crop's scale), and a GAN answers a slightly moved or zoomed input with a
//! visibly different face: on a photo moved along a known path, faces cut at the true landmarks
//! came out 0.30 levels from the ideal, faces cut at the detected ones 2.08. Registration does
//! not move the restored faces afterwards (a resampling per frame, which blurs what it keeps);
//! it moves the crop, which is cut anyway. The landmarks of a locked face are the track's,
//! carried by the correction: the crop, the paste and the faces posted all follow them.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::temporal::{self, Motion, GRID};
use crate::align::{self, Border, Similarity, Stretch};
use crate::detect::Face;
use crate::error::Error;

/// Registration stops when what is left moves the crop by less than this many cells.
const CONVERGED: f64 = 0.02;
/// Steps of registration a frame, at most.
const STEPS: usize = 3;
/// A step that moves the crop by more than this many cells (or zooms or turns it by more than
/// [`MAX_STEP_TURN`]) is not the small motion of one frame (a turn of the head, another face in
/// the box): the crop goes back to the landmarks.
const MAX_STEP: f64 = 1.5;
const MAX_STEP_TURN: f64 = 0.05;
/// How far the crop may wander from the landmarks before it is drawn back: in cells, in
/// relative size and in radians. Within these a still face's crop does not move at all; beyond
/// them it is drawn back by [`PULL`] of the excess a frame, too little to show between
/// consecutive faces, so that registration errors cannot add up to a drift.
const FREE_SHIFT: f64 = 1.0;
const FREE_SCALE: f64 = 0.08;
const FREE_TURN: f64 = 0.08;
const PULL: f64 = 0.1;

const IDENTITY: Similarity = Similarity { a: 1.0, b: 0.0, tx: 0.0, ty: 0.0 };

/// What a track's crop was in the last frame.
#[derive(Debug)]
struct Locked {
    serial: u64,
    /// Frame to crop.
    crop: Similarity,
    /// How the crop moved from the frame before (crop to crop): the next frame's first guess.
    motion: Similarity,
    /// The crop's thumbnail in grey levels (`GRID x GRID`, on the host).
    grey: Vec<f32>,
}

/// The locked crops of a stream's live tracks.
#[derive(Debug, Default)]
pub struct Lock {
    tracks: HashMap<u64, Locked>,
    /// The cells of a thumbnail as `(x, y, 1)` rows (`GRID² x 3`), made once.
    cells: Option<Tensor>,
}

/// One face being registered.
struct Step {
    index: usize,
    /// The crop the landmarks give (frame to crop).
    fit: Similarity,
    /// The first guess of the crop, where the frame was sampled.
    guess: Similarity,
    /// The crop as registered so far.
    crop: Similarity,
    /// The track's grey thumbnail and crop of the frame before; `None` for a new track.
    previous: Option<(Vec<f32>, Similarity)>,
    done: bool,
    /// Registration failed and the crop went back to the landmarks.
    reset: bool,
}

impl Lock {
    pub fn clear(&mut self) {
        self.tracks.clear();
    }

    /// Moves the landmarks (and boxes) of `faces` (tracks `ids`) of frame `serial` so that each
    /// tracked face's `size` crop registers onto its crop of the frame before. Tracks not in
    /// the frame are forgotten. Returns each face's thumbnail as registered (`1 x 3 x GRID x
    /// GRID`; `None` for a face that does not align), for blending to compare with the next.
    pub fn follow(
        &mut self,
        frame: &Tensor,
        faces: &mut [Face],
        ids: &[u64],
        serial: u64,
        size: i64,
        stretch: Stretch,
    ) -> Result<Vec<Option<Tensor>>, Error> {
        let _guard = tch::no_grad_guard();
        // The last frame's states are taken, not copied: this frame's replace them (a frame
        // that fails here leaves none, and the next starts from its landmarks).
        let mut last_frame = std::mem::take(&mut self.tracks);
        let mut steps = Vec::new();
        for (index, (face, &id)) in faces.iter().zip(ids).enumerate() {
            let Some(fit) = align::align_stretched(&face.landmarks, size, stretch).map(|a| a.tfm) else { continue };
            let last = last_frame.remove(&id).filter(|p| p.serial + 1 == serial);
            // The content is expected to move as it did: the crop goes with it.
            let crop = last.as_ref().map_or(fit, |p| p.motion.after(&p.crop));
            let previous = last.map(|p| (p.grey, p.crop));
            steps.push(Step { index, fit, guess: crop, crop, done: previous.is_none(), previous, reset: false });
        }
        if steps.is_empty() {
            return Ok(faces.iter().map(|_| None).collect());
        }
        let centre = (size as f64 - 1.0) / 2.0;
        let cell = size as f64 / GRID as f64;
        let cells = match self.cells.as_ref().filter(|c| c.device() == frame.device()) {
            Some(c) => c.shallow_clone(),
            None => {
                let all = Tensor::f_arange(GRID * GRID, (Kind::Float, frame.device()))?;
                let (x, y) = (all.f_remainder(GRID)?, all.f_floor_divide_scalar(GRID)?);
                let c = Tensor::f_stack(&[x, y, all.f_ones_like()?], 1)?;
                self.cells = Some(c.shallow_clone());
                c
            }
        };
        // The frame is sampled once, at the first guesses, and the thumbnails come to the host:
        // each step moves a thumbnail there, and solves there.
        let guessed = crate::transfer::download_f32(&[&thumbnails(frame, &cells, &steps, size, stretch)?])?.remove(0);
        let one = (3 * GRID * GRID) as usize;
        let mut thumbs: Vec<Vec<f32>> = guessed.chunks(one).map(<[f32]>::to_vec).collect();
        for _ in 0..STEPS {
            let mut moved = false;
            for (i, s) in steps.iter_mut().enumerate() {
                let Some((before, _)) = s.previous.as_ref().filter(|_| !s.done) else { continue };
                match temporal::motion(before, &temporal::grey(&thumbs[i])) {
                    // Nothing moved (a still face in identical frames): the crop stays, bit for bit.
                    Some(m) if reach(&m) == 0.0 => {
                        s.done = true;
                        continue;
                    }
                    Some(m) if reach(&m) <= MAX_STEP && m.scale.abs().max(m.turn.abs()) <= MAX_STEP_TURN => {
                        // Content at u in the last crop is at moved(u) in this one: the crop that
                        // holds it at u again is moved⁻¹ after this one. Even a motion below
                        // CONVERGED is followed: left out, it would bias the next frame's guess.
                        let m_crop = about(centre, [m.shift[0] * cell, m.shift[1] * cell], m.scale, m.turn);
                        s.crop = m_crop.inverse().after(&s.crop);
                        s.done = reach(&m) < CONVERGED;
                    }
                    // Not a small motion, or nothing to register on: the landmarks place the crop.
                    _ => (s.crop, s.done, s.reset) = (s.fit, true, true),
                }
                thumbs[i] = moved_thumbnail(&guessed[i * one..(i + 1) * one], s, size);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        // Drawn back towards the landmarks beyond the free range.
        for (i, s) in steps.iter_mut().enumerate() {
            let off = s.crop.after(&s.fit.inverse());
            let at = off.apply([centre, centre]);
            let shift = [(at[0] - centre) / cell, (at[1] - centre) / cell];
            let (scale, turn) = (off.scale().ln(), off.b.atan2(off.a));
            let back = |v: f64, free: f64| if v.abs() > free { v - PULL * (v.abs() - free) * v.signum() } else { v };
            let length = shift[0].hypot(shift[1]);
            if length > FREE_SHIFT || scale.abs() > FREE_SCALE || turn.abs() > FREE_TURN {
                let kept = if length > FREE_SHIFT { back(length, FREE_SHIFT) / length } else { 1.0 };
                let off = about(centre, shift.map(|v| v * kept * cell), back(scale, FREE_SCALE).exp() - 1.0, back(turn, FREE_TURN));
                s.crop = off.after(&s.fit);
                thumbs[i] = moved_thumbnail(&guessed[i * one..(i + 1) * one], s, size);
            }
        }
        // Blending compares the thumbnails on the device: one copy for all faces, page-locked.
        let all: Vec<f32> = thumbs.concat();
        let n = steps.len() as i64;
        let on_device = crate::transfer::upload_pinned(&Tensor::f_from_slice(&all)?.f_reshape([n, 3, GRID, GRID])?, frame.device())?;
        let mut tracks = HashMap::with_capacity(steps.len());
        let mut out: Vec<Option<Tensor>> = faces.iter().map(|_| None).collect();
        for (j, s) in steps.iter().enumerate() {
            // The landmarks carried by the correction: aligned, they give this crop exactly.
            let correction = s.crop.inverse().after(&s.fit);
            let face = &mut faces[s.index];
            let before = face.landmarks;
            // Registered in display geometry, the landmarks stay in stored pixels.
            face.landmarks =
                before.map(|[x, y]| stretch.to_storage(correction.apply(stretch.to_display([x as f64, y as f64]))).map(|v| v as f32));
            let moved = |k: usize| (0..5).map(|i| face.landmarks[i][k] - before[i][k]).sum::<f32>() / 5.0;
            let (dx, dy) = (moved(0), moved(1));
            face.bbox = [face.bbox[0] + dx, face.bbox[1] + dy, face.bbox[2] + dx, face.bbox[3] + dy];
            // A crop given back to the landmarks did not move with the face: no motion to expect.
            let motion = match &s.previous {
                Some((_, last)) if *last != s.crop && !s.reset => s.crop.after(&last.inverse()),
                _ => IDENTITY,
            };
            out[s.index] = Some(on_device.f_narrow(0, j as i64, 1)?);
            tracks.insert(ids[s.index], Locked { serial, crop: s.crop, motion, grey: temporal::grey(&thumbs[j]) });
        }
        self.tracks = tracks;
        Ok(out)
    }
}

/// The largest displacement (cells) that `m` makes at the edge of the face's part of the grid.
fn reach(m: &Motion) -> f64 {
    m.shift[0].hypot(m.shift[1]) + (m.scale.abs() + m.turn.abs()) * GRID as f64 / 2.0
}

/// The similarity of crop pixels that scales by `1 + scale` and turns by `turn` about
/// `(centre, centre)`, then shifts by `shift` pixels.
fn about(centre: f64, shift: [f64; 2], scale: f64, turn: f64) -> Similarity {
    let (a, b) = ((1.0 + scale) * turn.cos(), (1.0 + scale) * turn.sin());
    Similarity { a, b, tx: centre + shift[0] - (a - b) * centre, ty: centre + shift[1] - (b + a) * centre }
}

/// The thumbnails (`N x 3 x GRID x GRID`) of the faces' crops at their first guesses: the
/// crops sampled at the grid's cells (registration needs the face's shape, not its detail), in
/// one sampling of the frame for all faces (a batch of grids would copy the frame per face).
fn thumbnails(frame: &Tensor, cells: &Tensor, steps: &[Step], size: i64, stretch: Stretch) -> Result<Tensor, Error> {
    if steps.is_empty() {
        return Ok(Tensor::f_zeros([0, 3, GRID, GRID], (Kind::Float, frame.device()))?);
    }
    let (h, w) = (frame.size()[2], frame.size()[3]);
    // Cell v is crop pixel (v + 0.5) k - 0.5.
    let k = size as f64 / GRID as f64;
    let to_crop = Similarity { a: k, b: 0.0, tx: 0.5 * k - 0.5, ty: 0.5 * k - 0.5 };
    let to_src: Vec<[[f64; 3]; 2]> = steps.iter().map(|s| stretch.into_storage(s.guess.inverse().after(&to_crop).matrix())).collect();
    let n = steps.len() as i64;
    let grid = grids(cells, &to_src, (h, w))?.f_reshape([1, n * GRID, GRID, 2])?;
    Ok(align::warp(frame, &grid, Border::Replicate)?.f_reshape([3, n, GRID, GRID])?.f_permute([1, 0, 2, 3])?)
}

/// The thumbnail (`3 x GRID x GRID`) of a face's crop as registered so far, moved on the host
/// from the one at the first guess (`from`): bilinear, edges replicated, as `grid_sample`
/// would. A face whose crop is still the guess keeps it bit for bit.
fn moved_thumbnail(from: &[f32], s: &Step, size: i64) -> Vec<f32> {
    if s.crop == s.guess {
        return from.to_vec();
    }
    let g = GRID as usize;
    // Cell v of a thumbnail is crop pixel (v + 0.5) k - 0.5; the new crop's pixel u is the
    // guess's pixel guess(crop⁻¹(u)).
    let k = size as f64 / GRID as f64;
    let to_crop = Similarity { a: k, b: 0.0, tx: 0.5 * k - 0.5, ty: 0.5 * k - 0.5 };
    let map = to_crop.inverse().after(&s.guess).after(&s.crop.inverse()).after(&to_crop);
    let top = (g - 1) as f64;
    let mut out = vec![0f32; 3 * g * g];
    for y in 0..g {
        for x in 0..g {
            let [sx, sy] = map.apply([x as f64, y as f64]).map(|v| v.clamp(0.0, top));
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(g - 1), (y0 + 1).min(g - 1));
            let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
            for c in 0..3 {
                let p = &from[c * g * g..(c + 1) * g * g];
                let upper = p[y0 * g + x0] * (1.0 - fx) + p[y0 * g + x1] * fx;
                let lower = p[y1 * g + x0] * (1.0 - fx) + p[y1 * g + x1] * fx;
                out[c * g * g + y * g + x] = upper * (1.0 - fy) + lower * fy;
            }
        }
    }
    out
}

/// Sampling grids (`N x GRID x GRID x 2`) that read, for cell `v` of face `i`, source pixel
/// `to_src[i](v)` of an `h x w` image: one product of the cells with all faces' maps
/// ([`align::grid_map`]).
fn grids(cells: &Tensor, to_src: &[[[f64; 3]; 2]], src: (i64, i64)) -> Result<Tensor, Error> {
    let n = to_src.len() as i64;
    // Face i's 3 x 2 map in columns 2i and 2i + 1.
    let mut maps = vec![0f32; 6 * to_src.len()];
    for (i, t) in to_src.iter().enumerate() {
        let m = align::affine_grid_map(*t, (0, 0), src);
        for r in 0..3 {
            maps[r * 2 * n as usize + 2 * i] = m[2 * r];
            maps[r * 2 * n as usize + 2 * i + 1] = m[2 * r + 1];
        }
    }
    // Page-locked: a plain copy would wait for the device to finish the frame's work so far.
    let maps = crate::transfer::upload_pinned(&Tensor::f_from_slice(&maps)?.f_reshape([3, 2 * n])?, cells.device())?;
    Ok(cells.f_matmul(&maps)?.f_reshape([GRID, GRID, n, 2])?.f_permute([2, 0, 1, 3])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A smooth textured frame, its content moved by `(dx, dy)` pixels.
    fn frame(dx: f64, dy: f64) -> Tensor {
        let (h, w) = (240i64, 320i64);
        let x = Tensor::arange(w, (Kind::Float, Device::Cpu)).view([1, 1, 1, w]) - dx;
        let y = Tensor::arange(h, (Kind::Float, Device::Cpu)).view([1, 1, h, 1]) - dy;
        let v = (&x * 0.11).sin() * 50.0 + (&y * 0.07).cos() * 40.0 + (&x * 0.05 + &y * 0.09).sin() * 30.0 + 120.0;
        v.expand([1, 3, h, w], false).contiguous()
    }

    /// GPEN's template of a 256 crop placed in the frame at half size, moved by `(dx, dy)`.
    fn face(dx: f32, dy: f32) -> Face {
        let landmarks = align::template(256).map(|[x, y]| [(100.0 + 0.5 * x) as f32 + dx, (60.0 + 0.5 * y) as f32 + dy]);
        Face { bbox: [110.0 + dx, 70.0 + dy, 210.0 + dx, 180.0 + dy], score: 0.99, landmarks }
    }

    fn centroid(f: &Face) -> [f32; 2] {
        [0, 1].map(|k| f.landmarks.iter().map(|p| p[k]).sum::<f32>() / 5.0)
    }

    #[test]
    fn crops_follow_the_content_not_the_landmarks_jitter() {
        let mut lock = Lock::default();
        let mut first = vec![face(0.0, 0.0)];
        let thumbs = lock.follow(&frame(0.0, 0.0), &mut first, &[1], 1, 256, Stretch::NONE).unwrap();
        assert_eq!(first[0].landmarks, face(0.0, 0.0).landmarks, "a new track keeps its landmarks");
        assert_eq!(thumbs[0].as_ref().unwrap().size(), [1, 3, GRID, GRID]);
        // The content moves by (0.6, -0.3) px; the detector says (0.2, 0.4).
        let mut second = vec![face(0.2, 0.4)];
        lock.follow(&frame(0.6, -0.3), &mut second, &[1], 2, 256, Stretch::NONE).unwrap();
        let (a, b) = (centroid(&first[0]), centroid(&second[0]));
        let moved = [b[0] - a[0], b[1] - a[1]];
        assert!((moved[0] - 0.6).abs() < 0.05 && (moved[1] + 0.3).abs() < 0.05, "the crop moved by {moved:?}");
        // The same picture again, the detector elsewhere: the crop stays where the face is.
        let mut third = vec![face(-0.3, 0.1)];
        lock.follow(&frame(0.6, -0.3), &mut third, &[1], 3, 256, Stretch::NONE).unwrap();
        let c = centroid(&third[0]);
        assert!((c[0] - b[0]).abs() < 0.05 && (c[1] - b[1]).abs() < 0.05, "{c:?} against {b:?}");
        // A gap (a frame without the track): it starts afresh from its landmarks.
        let mut later = vec![face(0.0, 0.0)];
        lock.follow(&frame(5.0, 5.0), &mut later, &[1], 5, 256, Stretch::NONE).unwrap();
        assert_eq!(later[0].landmarks, face(0.0, 0.0).landmarks);
    }

    #[test]
    fn identical_frames_keep_the_crop_bit_for_bit_and_a_new_picture_resets_it() {
        let mut lock = Lock::default();
        let still = frame(0.0, 0.0);
        let mut seen = Vec::new();
        for serial in 1..4 {
            let mut faces = vec![face(0.0, 0.0)];
            lock.follow(&still, &mut faces, &[7], serial, 256, Stretch::NONE).unwrap();
            seen.push(faces[0].landmarks);
        }
        assert!(seen.iter().all(|l| *l == seen[0]));
        // Another picture in the box (not a small motion): the landmarks place the crop.
        let mut faces = vec![face(0.0, 0.0)];
        lock.follow(&frame(0.0, 0.0).flip([3]), &mut faces, &[7], 4, 256, Stretch::NONE).unwrap();
        assert_eq!(faces[0].landmarks, face(0.0, 0.0).landmarks);
    }
}
