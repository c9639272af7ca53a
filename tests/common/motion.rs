//! Clips with known motion made from a still photo: each frame is the photo scaled about its
//! centre and shifted by sub-pixel amounts (bilinear resampling), so where every point of the
//! photo lies in every frame is known exactly. Shared by the tracking test and benchmark.
#![allow(dead_code)]

use tch::{Kind, Tensor};

/// Where the photo is in one frame: scaled by `scale` about its centre, then shifted (pixels).
#[derive(Debug, Clone, Copy)]
pub struct Pose {
    pub dx: f64,
    pub dy: f64,
    pub scale: f64,
}

impl Pose {
    /// Where the photo's point `p` lies in the frame (pixel centres, `w` x `h` frame).
    pub fn apply(&self, p: [f64; 2], w: usize, h: usize) -> [f64; 2] {
        let c = [(w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0];
        [c[0] + self.scale * (p[0] - c[0]) + self.dx, c[1] + self.scale * (p[1] - c[1]) + self.dy]
    }

    /// The photo's point that lies at `q` in the frame.
    pub fn invert(&self, q: [f64; 2], w: usize, h: usize) -> [f64; 2] {
        let c = [(w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0];
        [c[0] + (q[0] - c[0] - self.dx) / self.scale, c[1] + (q[1] - c[1] - self.dy) / self.scale]
    }
}

/// The test path, `n` frames: a slow drift with a slow zoom (sub-pixel steps) for the first
/// half, then steady motion of 1.2 px and 0.4 px per frame.
pub fn path(n: usize) -> Vec<Pose> {
    let half = n / 2;
    (0..n)
        .map(|i| {
            let slow = i.min(half) as f64;
            let fast = i.saturating_sub(half) as f64;
            Pose { dx: 0.23 * slow + 1.2 * fast, dy: 0.11 * slow + 0.4 * fast, scale: 1.0 + 0.0008 * slow }
        })
        .collect()
}

/// The frame of `photo` (`1 x 3 x H x W`, 0..255 float) at `pose`, as packed RGB bytes; edges
/// are replicated where the photo moved away.
pub fn render(photo: &Tensor, pose: &Pose) -> Vec<u8> {
    let (h, w) = (photo.size()[2], photo.size()[3]);
    // Normalised coordinates (align_corners): sample the photo where each frame pixel came from.
    let (sx, sy) = (2.0 * pose.dx / (w - 1) as f64, 2.0 * pose.dy / (h - 1) as f64);
    let s = pose.scale;
    let theta = Tensor::from_slice(&[1.0 / s, 0.0, -sx / s, 0.0, 1.0 / s, -sy / s]).to_kind(Kind::Float).reshape([1, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, [1, 3, h, w], true);
    let frame = photo.grid_sampler(&grid, 0, 1, true);
    let bytes = frame.round().clamp(0.0, 255.0).to_kind(Kind::Uint8).squeeze_dim(0).permute([1, 2, 0]).contiguous();
    Vec::try_from(bytes.flatten(0, -1)).unwrap()
}
