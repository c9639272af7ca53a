//! Paste-back: restored faces warped into the frame through their soft masks, as GPEN's
//! `face_enhancement.py` composes them. Pure tensor functions over constants made once per
//! face size and device; nothing here reads or writes frame memory.

use tch::{Device, Kind, Tensor};

use super::settings::MaskRegions;
use crate::align::{self, Alignment, Border};
use crate::error::Error;

/// Faces smaller than this (box side, pixels) get GPEN's light smoothing after restoration.
pub const SMALL_FACE: f32 = 100.0;

/// The constants of pasting faces of one size on one device.
#[derive(Debug)]
pub struct Paster {
    size: i64,
    /// The soft paste mask, `1 x 1 x size x size`.
    mask: Tensor,
    /// GPEN's 3x3 smoothing of small faces, one filter per channel.
    smooth: Tensor,
    /// The Gaussian of GPEN's mask blur, separable (see [`align::blur_twice`]).
    blur: (Tensor, Tensor),
    /// 1 for the parsing classes the restored face replaces, 0 for the others (19 values).
    replaced: Tensor,
}

/// Side of the faces ParseNet reads, and of the masks GPEN post-processes.
pub const PARSE_SIZE: i64 = 512;

/// Pixels zeroed on every side of a parsing mask before it is blurred (GPEN's `thres`).
const PARSE_BORDER: i64 = 26;

/// A frame rectangle `(x0, y0, width, height)`.
pub type Region = (i64, i64, i64, i64);

/// Faces composed over a rectangle of the frame.
#[derive(Debug)]
pub struct Pasted {
    /// The frame rectangle written.
    pub region: Region,
    /// The composed rectangle, `1 x 3 x height x width`, 0..255 (not rounded).
    pub image: Tensor,
    /// The combined paste mask over `region` (`1 x 1 x height x width`, 0..1): where it is 0
    /// the image equals the background exactly.
    pub mask: Tensor,
    /// Faces that reached the frame.
    pub faces: usize,
}

impl Paster {
    /// `regions`: the parsing classes the restored face replaces (used with parsing masks).
    pub fn new(size: i64, device: Device, regions: MaskRegions) -> Result<Self, Error> {
        let smooth = Tensor::f_from_slice(&[1f32, 2., 1., 2., 4., 2., 1., 2., 1.])?
            .f_div_scalar(16.0)?
            .f_reshape([1, 1, 3, 3])?
            .f_repeat([3, 1, 1, 1])?
            .f_to_device(device)?;
        let replaced = Tensor::f_from_slice(&regions.table())?.f_to_device(device)?;
        Ok(Paster { size, mask: align::soft_mask(size, device)?, smooth, blur: align::gaussian_kernels(device)?, replaced })
    }

    /// GPEN's face-parsing masks of restored faces (`N x 3 x size x size`, 0..255), as
    /// `face_enhancement.py` makes them, all faces at once on the device: each face truncated to
    /// 8 bits (GPEN's `tensor2img`), resized to 512 (rounded, as `cv2.resize` on 8-bit images),
    /// parsed (`parse`: `N x 3 x 512 x 512` in -1..1 to the `N x 512 x 512` class of each pixel), the
    /// replaced classes set to 1 and the others to 0, a 26-pixel border zeroed, blurred twice
    /// (101 taps, sigma 4), and resized back to `size`. `N x 1 x size x size`, 0..1.
    pub fn parse_masks(&self, restored: &Tensor, parse: impl Fn(&Tensor) -> Result<Tensor, Error>) -> Result<Tensor, Error> {
        let _guard = tch::no_grad_guard();
        let n = restored.size()[0];
        let mut faces = restored.f_clamp(0.0, 255.0)?.f_floor()?;
        if self.size != PARSE_SIZE {
            faces = faces.f_upsample_bilinear2d([PARSE_SIZE, PARSE_SIZE], false, None, None)?.f_round()?;
        }
        // GPEN scales the 8-bit face in float64 (numpy) and then casts: the same here, so that
        // nearly tied classes fall the same way.
        let unit = faces.f_to_kind(Kind::Double)?.f_div_scalar(255.0)?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?.f_to_kind(Kind::Float)?;
        let classes = parse(&unit)?.f_to_kind(Kind::Int64)?; // N x 512 x 512
        let mask = self.replaced.f_index_select(0, &classes.f_reshape([-1])?)?.f_reshape([n, 1, PARSE_SIZE, PARSE_SIZE])?;
        let inner = PARSE_SIZE - 2 * PARSE_BORDER;
        let mask = mask.f_narrow(2, PARSE_BORDER, inner)?.f_narrow(3, PARSE_BORDER, inner)?.f_constant_pad_nd([
            PARSE_BORDER,
            PARSE_BORDER,
            PARSE_BORDER,
            PARSE_BORDER,
        ])?;
        let mask = align::blur_twice(&mask, &self.blur)?;
        Ok(if self.size != PARSE_SIZE { mask.f_upsample_bilinear2d([self.size, self.size], false, None, None)? } else { mask })
    }

    pub fn size(&self) -> i64 {
        self.size
    }

    /// GPEN's finishing of restored faces (`N x 3 x size x size`, 0..255): the faces marked
    /// `small` smoothed lightly (their restoration is mostly invented detail), then blended with
    /// their crops by `alpha` (1: restored only).
    pub fn finish(&self, restored: Tensor, crops: &Tensor, small: &[bool], alpha: f64) -> Result<Tensor, Error> {
        let mut restored = restored;
        if small.iter().any(|&s| s) {
            let smoothed = restored.f_reflection_pad2d([1, 1, 1, 1])?.f_conv2d::<Tensor>(&self.smooth, None, [1, 1], [0, 0], [1, 1], 3)?;
            let mut pick: Vec<Tensor> = Vec::with_capacity(small.len());
            for (i, &s) in small.iter().enumerate() {
                pick.push(if s { smoothed.f_narrow(0, i as i64, 1)? } else { restored.f_narrow(0, i as i64, 1)? });
            }
            restored = Tensor::f_cat(&pick, 0)?;
        }
        if alpha < 1.0 {
            restored = restored.f_mul_scalar(alpha)?.f_add(&crops.f_mul_scalar(1.0 - alpha)?)?;
        }
        Ok(restored)
    }

    /// The frame rectangle `(x0, y0, width, height)` each face lands in, clipped to a frame of
    /// `height x width`; `None` for a face that misses the frame.
    pub fn regions(&self, alignments: &[Alignment], (height, width): (i64, i64)) -> Vec<Option<Region>> {
        alignments.iter().map(|a| align::paste_region_stretched(&a.tfm_inv, a.stretch, self.size, (height, width))).collect()
    }

    /// The grid maps (6 values per face, see [`align::grid_map`]) that warp each face back into
    /// its region; zeros for faces that miss the frame. Computed on the host, so that a frame's
    /// maps travel to the device in one copy.
    pub fn maps(&self, alignments: &[Alignment], regions: &[Option<Region>]) -> Vec<f32> {
        alignments
            .iter()
            .zip(regions)
            .flat_map(|(a, r)| match r {
                Some((x0, y0, _, _)) => align::affine_grid_map(a.frame_to_crop_back(), (*x0, *y0), (self.size, self.size)),
                None => [0.0; 6],
            })
            .collect()
    }

    /// Composes `faces` (`N x 3 x size x size`, 0..255) over `background` (`1 x 3 x H x W`),
    /// each warped back into its region through its map (`maps`: `N x 3 x 2` on the device, from
    /// [`maps`](Self::maps)) with its mask (`masks`: `N x 1 x size x size` from
    /// [`parse_masks`](Self::parse_masks), or the soft rectangle); where masks overlap the face
    /// with the larger mask wins the pixel, as in GPEN. Only the union of the regions is
    /// composed. `None` when no face reaches the frame.
    pub fn paste(
        &self,
        background: &Tensor,
        faces: &Tensor,
        regions: &[Option<Region>],
        maps: &Tensor,
        masks: Option<&Tensor>,
    ) -> Result<Option<Pasted>, Error> {
        let Some((ux0, uy0, ux1, uy1)) = regions.iter().flatten().fold(None, |u, &(x0, y0, rw, rh)| {
            Some(match u {
                None => (x0, y0, x0 + rw, y0 + rh),
                Some((a, b, c, d)) => (x0.min(a), y0.min(b), (x0 + rw).max(c), (y0 + rh).max(d)),
            })
        }) else {
            return Ok(None);
        };
        let opts = (Kind::Float, background.device());
        let full_mask = Tensor::f_zeros([1, 1, uy1 - uy0, ux1 - ux0], opts)?;
        let full_img = Tensor::f_zeros([1, 3, uy1 - uy0, ux1 - ux0], opts)?;
        let mut pasted = 0;
        for (i, region) in regions.iter().enumerate() {
            let Some((x0, y0, rw, rh)) = *region else { continue };
            let mask = match masks {
                Some(m) => m.f_narrow(0, i as i64, 1)?,
                None => self.mask.shallow_clone(),
            };
            let face = Tensor::f_cat(&[faces.f_narrow(0, i as i64, 1)?, mask], 1)?;
            let grid = align::grids(&maps.f_narrow(0, i as i64, 1)?, (rh, rw))?;
            let warped = align::warp(&face, &grid, Border::Zeros)?;
            let (img, mask) = (warped.f_narrow(1, 0, 3)?, warped.f_narrow(1, 3, 1)?);
            let window = |t: &Tensor| t.f_narrow(2, y0 - uy0, rh)?.f_narrow(3, x0 - ux0, rw);
            let mut mask_window = window(&full_mask)?;
            let mut img_window = window(&full_img)?;
            // Per-pixel maximum of the masks; the face with the larger mask wins the pixel.
            let take = mask.f_gt_tensor(&mask_window)?;
            img_window.f_copy_(&img.f_where_self(&take, &img_window)?)?;
            mask_window.f_copy_(&mask.f_where_self(&take, &mask_window)?)?;
            pasted += 1;
        }
        let bg = background.f_narrow(2, uy0, uy1 - uy0)?.f_narrow(3, ux0, ux1 - ux0)?;
        // bg * (1 - m) + img * m: where m is 0 this is bg exactly.
        let image = bg.f_mul(&full_mask.f_neg()?.f_add_scalar(1.0)?)?.f_add(&full_img.f_mul(&full_mask)?)?;
        Ok(Some(Pasted { region: (ux0, uy0, ux1 - ux0, uy1 - uy0), image, mask: full_mask, faces: pasted }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::template;

    /// Landmarks of a face of `size` placed at `(x, y)` and scaled by `scale` in the frame.
    fn alignment_at(size: i64, (x, y): (f64, f64), scale: f64) -> Alignment {
        let lm = template(size).map(|[a, b]| [(a * scale + x) as f32, (b * scale + y) as f32]);
        align::align(&lm, size).unwrap()
    }

    fn paste(p: &Paster, bg: &Tensor, faces: &Tensor, alignments: &[Alignment]) -> Option<Pasted> {
        let regions = p.regions(alignments, (bg.size()[2], bg.size()[3]));
        let maps = Tensor::from_slice(&p.maps(alignments, &regions)).reshape([alignments.len() as i64, 3, 2]);
        p.paste(bg, faces, &regions, &maps, None).unwrap()
    }

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().max().double_value(&[])
    }

    #[test]
    fn a_face_lands_where_its_alignment_says_and_nothing_else_changes() {
        let p = Paster::new(64, Device::Cpu, MaskRegions::GPEN).unwrap();
        let bg = Tensor::full([1, 3, 100, 120], 10.0, (Kind::Float, Device::Cpu));
        let face = Tensor::full([1, 3, 64, 64], 200.0, (Kind::Float, Device::Cpu));
        let a = alignment_at(64, (30.0, 20.0), 1.0);
        let out = paste(&p, &bg, &face, &[a]).unwrap();
        let (x0, y0, w, h) = out.region;
        assert!((28..=30).contains(&x0) && (18..=20).contains(&y0) && (64..=68).contains(&w) && (64..=68).contains(&h), "{:?}", out.region);
        assert_eq!(out.faces, 1);
        // The centre is the face, the region's edge is the background (the mask is 0 there).
        let centre = out.image.double_value(&[0, 0, 32 + 20 - y0, 32 + 30 - x0]);
        assert!((centre - 200.0).abs() < 1e-3, "{centre}");
        assert!((out.image.double_value(&[0, 1, 0, 0]) - 10.0).abs() < 1e-6);
        // Everywhere: background + mask * (face - background).
        let expected = out.mask.shallow_clone() * 190.0 + 10.0;
        assert!(max_abs(&(out.image.narrow(1, 0, 1) - expected)) < 1e-3);
        assert!(out.mask.min().double_value(&[]) >= 0.0 && out.mask.max().double_value(&[]) <= 1.0 + 1e-6);
    }

    #[test]
    fn overlapping_faces_take_the_larger_mask_and_faces_off_frame_are_skipped() {
        let p = Paster::new(64, Device::Cpu, MaskRegions::GPEN).unwrap();
        let bg = Tensor::zeros([1, 3, 100, 160], (Kind::Float, Device::Cpu));
        let faces = Tensor::cat(
            &[
                Tensor::full([1, 3, 64, 64], 100.0, (Kind::Float, Device::Cpu)),
                Tensor::full([1, 3, 64, 64], 50.0, (Kind::Float, Device::Cpu)),
            ],
            0,
        );
        let (a, b) = (alignment_at(64, (10.0, 10.0), 1.0), alignment_at(64, (40.0, 10.0), 1.0));
        let out = paste(&p, &bg, &faces, &[a, b]).unwrap();
        assert_eq!(out.faces, 2);
        let x0 = out.region.0;
        let y = 42 - out.region.1;
        // Deep inside face A (x = 20) and deep inside face B (x = 95): their own values.
        assert!((out.image.double_value(&[0, 0, y, 20 - x0]) - 100.0).abs() < 1e-3);
        assert!((out.image.double_value(&[0, 0, y, 95 - x0]) - 50.0).abs() < 1e-3);
        // Where both are inside their masks, the pixel is one face's value, never a mix.
        let v = out.image.double_value(&[0, 0, y, 60 - x0]);
        assert!((v - 100.0).abs() < 1e-3 || (v - 50.0).abs() < 1e-3, "{v}");
        // A face entirely outside the frame reaches nothing.
        let gone = alignment_at(64, (1000.0, 1000.0), 1.0);
        assert!(paste(&p, &bg, &faces.narrow(0, 0, 1), &[gone]).is_none());
    }

    #[test]
    fn grey_faces_pasted_onto_a_grey_frame_leave_it_exactly_grey() {
        // `color=auto` relies on this: the warp back and the paste do the same arithmetic on
        // every channel, so R = G = B in and R = G = B out, bit for bit, whatever the
        // interpolation and the masks.
        let p = Paster::new(64, Device::Cpu, MaskRegions::GPEN).unwrap();
        let grey = |shape: [i64; 4]| (Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 255.0).repeat([1, 3, 1, 1]);
        let bg = grey([1, 1, 120, 160]).round();
        let faces = grey([2, 1, 64, 64]);
        // Turned, scaled and overlapping faces, one cut by the frame edge; soft random masks.
        let turned = |(x, y): (f64, f64), scale: f64, turn: f64| {
            let lm = template(64).map(|[a, b]| {
                let (a, b) = (a * scale, b * scale);
                [(a * turn.cos() - b * turn.sin() + x) as f32, (a * turn.sin() + b * turn.cos() + y) as f32]
            });
            align::align(&lm, 64).unwrap()
        };
        let alignments = [turned((30.0, 10.0), 1.3, 0.3), turned((100.0, 70.0), 0.8, -0.5)];
        let regions = p.regions(&alignments, (120, 160));
        let maps = Tensor::from_slice(&p.maps(&alignments, &regions)).reshape([2, 3, 2]);
        let masks = Tensor::rand([2, 1, 64, 64], (Kind::Float, Device::Cpu));
        for masks in [None, Some(&masks)] {
            let out = p.paste(&bg, &faces, &regions, &maps, masks).unwrap().unwrap();
            assert_eq!(out.faces, 2);
            let c = |i| out.image.narrow(1, i, 1);
            assert_eq!(max_abs(&(c(0) - c(1))), 0.0);
            assert_eq!(max_abs(&(c(2) - c(1))), 0.0);
            assert!(max_abs(&(out.image - bg.narrow(2, out.region.1, out.region.3).narrow(3, out.region.0, out.region.2))) > 1.0);
        }
    }

    #[test]
    fn finishing_smooths_small_faces_only_and_blends_by_alpha() {
        let p = Paster::new(8, Device::Cpu, MaskRegions::GPEN).unwrap();
        let noisy = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)) * 255.0;
        let crops = Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let out = p.finish(noisy.shallow_clone(), &crops, &[true, false], 1.0).unwrap();
        assert_eq!(max_abs(&(out.narrow(0, 1, 1) - noisy.narrow(0, 1, 1))), 0.0, "a large face is left alone");
        let smoothed_var = out.narrow(0, 0, 1).var(true).double_value(&[]);
        assert!(smoothed_var < 0.6 * noisy.narrow(0, 0, 1).var(true).double_value(&[]), "a small face is smoothed");
        let half = p.finish(noisy.shallow_clone(), &crops, &[false, false], 0.25).unwrap();
        assert!(max_abs(&(half - noisy * 0.25)) < 1e-3);
    }
}
