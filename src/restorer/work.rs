//! The work of one try at a frame, under the current plan: the generator in face batches,
//! face parsing and its per-track masks, the crops and paste of whole frames, aligned faces.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::paste;
use super::{frame, FaceStage, PackedLayout, PasteReport, PasteTimings, Restorer};
use crate::align::{self, Alignment, Border};
use crate::detect::Face;
#[cfg(feature = "fault-injection")]
use crate::memory;
use crate::{transfer, Error};

/// What a written frame changes in its tracks' masks.
#[derive(Default)]
pub(super) struct MaskUpdate {
    masks: Vec<(u64, (Tensor, Tensor))>,
    change: Option<(Tensor, Tensor, u64)>,
}

/// How much the parsing masks of tracked faces change from frame to frame (mean absolute change
/// in aligned space, 0..1), as the parser gives them and as pasted.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct MaskChange {
    pub raw: f64,
    pub pasted: f64,
    /// Pairs of consecutive frames of one track measured.
    pub pairs: u64,
}

impl Restorer {
    /// Counts a generator forward, failing it when the testing switch (feature
    /// `fault-injection`) says so.
    pub(super) fn before_forward(&self) -> Result<(), Error> {
        #[cfg(feature = "fault-injection")]
        memory::injected_fault(&self.forwards, self.fail_every)?;
        Ok(())
    }

    /// The generator on `x` (`N x 3 x size x size`, -1..1) in batches of the plan's face
    /// batch, as float.
    pub(super) fn forward_batches(&self, x: &Tensor) -> Result<Tensor, Error> {
        self.in_batches(x, |b| {
            self.before_forward()?;
            // A non-finite value (float16 overflow) would spoil the whole pasted rectangle, the
            // background included: it becomes 0 (then black, not garbage).
            Ok(self.model.forward_with(b, self.banding)?.f_nan_to_num(0.0, None, None)?)
        })
    }

    /// Parsing masks follow their track: each is blended in aligned space with the track's
    /// previous mask by `temporal-smoothing` (the parser's argmax flips classes from frame to
    /// frame where they are nearly tied; a still face keeps its mask exactly). Returns the masks
    /// to paste and the update of the tracks' state, applied by [`keep_masks`](Self::keep_masks)
    /// once the frame is written (a retry must not blend a frame with itself).
    pub(super) fn smooth_masks(&self, stage: &FaceStage, masks: Tensor, tracks: &[Option<u64>]) -> Result<(Tensor, MaskUpdate), Error> {
        let strength = stage.settings.live.smoothing;
        let kept = stage.track_masks.borrow();
        let mut update = MaskUpdate::default();
        let mut out = Vec::with_capacity(tracks.len());
        for (i, track) in tracks.iter().enumerate() {
            let raw = masks.f_narrow(0, i as i64, 1)?;
            let Some(id) = track else {
                out.push(raw);
                continue;
            };
            let pasted = match kept.get(id) {
                Some((last_raw, last_pasted)) => {
                    let pasted = raw.f_sub(last_pasted)?.f_mul_scalar(1.0 - strength)?.f_add(last_pasted)?;
                    // Frame-to-frame change as parsed and as pasted, summed on the device: nothing
                    // is read back per frame.
                    let change = |a: &Tensor, b: &Tensor| a.f_sub(b)?.f_abs()?.f_mean(Kind::Float);
                    let (r, p) = (change(&raw, last_raw)?, change(&pasted, last_pasted)?);
                    update.change = Some(match update.change.take() {
                        Some((rs, ps, n)) => (rs.f_add(&r)?, ps.f_add(&p)?, n + 1),
                        None => (r, p, 1),
                    });
                    pasted
                }
                None => raw.shallow_clone(),
            };
            update.masks.push((*id, (raw, pasted.shallow_clone())));
            out.push(pasted);
        }
        Ok((Tensor::f_cat(&out, 0)?, update))
    }

    /// Keeps the masks of a written frame as its tracks' last ones; tracks that are gone are
    /// forgotten.
    pub(super) fn keep_masks(&self, stage: &FaceStage, update: MaskUpdate) -> Result<(), Error> {
        let mut kept = stage.track_masks.borrow_mut();
        kept.retain(|id, _| update.masks.iter().any(|(i, _)| i == id));
        kept.extend(update.masks);
        if let Some((r, p, n)) = update.change {
            let mut change = stage.mask_change.borrow_mut();
            *change = Some(match change.take() {
                Some((rs, ps, m)) => (rs.f_add(&r)?, ps.f_add(&p)?, m + n),
                None => (r, p, n),
            });
        }
        Ok(())
    }

    /// How much parsing masks changed between consecutive frames of a track so far (one read
    /// from the device).
    pub fn mask_change(&self) -> Result<MaskChange, Error> {
        let Ok(stage) = self.face_stage() else { return Ok(MaskChange::default()) };
        let change = stage.mask_change.borrow();
        let Some((raw, pasted, n)) = change.as_ref() else { return Ok(MaskChange::default()) };
        let v = transfer::download_f32(&[raw, pasted])?;
        Ok(MaskChange { raw: v[0][0] as f64 / *n as f64, pasted: v[1][0] as f64 / *n as f64, pairs: *n })
    }

    /// `f` on `x` in batches of the plan's face batch, concatenated as float.
    pub(super) fn in_batches(&self, x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor, Error>) -> Result<Tensor, Error> {
        let n = x.size()[0];
        let batch = self.ladder.plan().face_batch.max(1) as i64;
        let mut out = Vec::with_capacity(((n + batch - 1) / batch) as usize);
        for start in (0..n).step_by(batch as usize) {
            out.push(f(&x.f_narrow(0, start, batch.min(n - start))?)?.f_to_kind(Kind::Float)?);
        }
        Ok(Tensor::f_cat(&out, 0)?)
    }

    /// Restores `faces` cropped from `crops_from` and pastes them onto `background`, writing
    /// the pasted region into `data`. Pixels outside the pasted masks keep their value.
    /// With `out`, the pasted region is written into the frame's memory; without, it is
    /// composed into `background` on the device (which the caller writes whole).
    pub(super) fn restore_onto(
        &self,
        stage: &FaceStage,
        crops_from: &Tensor,
        background: &Tensor,
        faces: &[Face],
        ids: &[u64],
        out: Option<(&mut [u8], &PackedLayout)>,
    ) -> Result<PasteReport, Error> {
        let mut report = PasteReport { restored: 0, region: None, mask: None, timings: PasteTimings::default() };
        let t0 = Instant::now();
        let _guard = tch::no_grad_guard();
        let size = stage.paster.size();
        let (h, w) = (background.size()[2], background.size()[3]);
        if let Some((_, layout)) = &out {
            if layout.size() != (w, h) {
                return Err(Error::Frame(format!("faces of a {w}x{h} frame pasted into a {}x{} one", layout.width, layout.height)));
            }
        }
        // Each face with its track (none for still images) and its alignment.
        let mut aligned = Vec::with_capacity(faces.len());
        for (i, f) in faces.iter().enumerate() {
            if let Some(a) = align::align(&f.landmarks, size) {
                aligned.push((f, ids.get(i).copied(), a));
            }
        }
        let faces: Vec<&Face> = aligned.iter().map(|x| x.0).collect();
        let tracks: Vec<Option<u64>> = aligned.iter().map(|x| x.1).collect();
        let alignments: Vec<Alignment> = aligned.iter().map(|x| x.2).collect();
        if faces.is_empty() {
            return Ok(report);
        }
        // Every face's crop matrix and paste map go to the device in one copy (f64: the crops
        // round coordinates as OpenCV does, which needs the matrices exact).
        let n = alignments.len() as i64;
        let regions = stage.paster.regions(&alignments, (h, w));
        let mut table = align::crop_matrices(&alignments);
        table.extend(stage.paster.maps(&alignments, &regions).into_iter().map(f64::from));
        let table = transfer::upload(&Tensor::f_from_slice(&table)?, self.device)?;
        let crop_matrices = table.f_narrow(0, 0, 6 * n)?.f_reshape([n, 6])?;
        let paste_maps = table.f_narrow(0, 6 * n, 6 * n)?.f_to_kind(Kind::Float)?.f_reshape([n, 3, 2])?;
        // GPEN's crops are cv2.warpAffine on the 8-bit frame; faces cut by the frame edge get the
        // edge replicated instead of GPEN's black band, which the generator would otherwise
        // carry into the pasted face.
        let crops = align::crop_faces_cv(crops_from, &crop_matrices, size, Border::Replicate)?;
        report.timings.crop = t0.elapsed();
        let t1 = Instant::now();
        // With face parsing the heap is given back after both networks, not between them.
        let _pause = (self.ladder.plan().parse && self.device == Device::Cpu).then(crate::sys::TrimPause::new);
        let restored = from_unit(&self.forward_batches(&to_unit(&crops)?)?)?;
        // GPEN parses the restored faces before smoothing and blending them.
        let (masks, update) = match (&stage.parser, self.ladder.plan().parse) {
            (Some(net), true) => {
                // The classes per face batch: the 19-class logits of every face never exist at once.
                let classes = |x: &Tensor| self.in_batches(x, |b| Ok(net.forward(b)?.f_argmax(1, false)?));
                let (masks, update) = self.smooth_masks(stage, stage.paster.parse_masks(&restored, classes)?, &tracks)?;
                (Some(masks), Some(update))
            }
            _ => (None, None),
        };
        drop(_pause);
        report.timings.generator = t1.elapsed();
        let t2 = Instant::now();
        let small: Vec<bool> = faces.iter().map(|f| f.width().min(f.height()) < paste::SMALL_FACE).collect();
        let restored = stage.paster.finish(restored, &crops, &small, stage.settings.live.alpha)?;
        let Some(pasted) = stage.paster.paste(background, &restored, &regions, &paste_maps, masks.as_ref())? else {
            return Ok(report);
        };
        let (x0, y0, rw, rh) = pasted.region;
        match out {
            Some((data, layout)) => frame::write_rgb(&frame::to_bytes(&pasted.image)?, (x0, y0), data, layout, false)?,
            None => background.f_narrow(2, y0, rh)?.f_narrow(3, x0, rw)?.f_copy_(&pasted.image)?,
        }
        if let Some(update) = update {
            self.keep_masks(stage, update)?;
        }
        report.timings.paste = t2.elapsed();
        Ok(PasteReport { restored: pasted.faces, region: Some((x0, y0, rw, rh)), mask: Some(pasted.mask), timings: report.timings })
    }

    /// Restores a frame that is one aligned face: resized to the model's size when it differs,
    /// restored, and resized back. Channels other than R, G, B are left untouched.
    pub(super) fn restore_aligned(&self, frame: &Tensor, data: &mut [u8], layout: &PackedLayout) -> Result<(), Error> {
        let _guard = tch::no_grad_guard();
        let (h, w) = (frame.size()[2], frame.size()[3]);
        let size = self.model.config().size;
        let resized = (h, w) != (size, size);
        let x = to_unit(frame)?;
        let x = if resized { x.f_upsample_bilinear2d([size, size], false, None, None)? } else { x };
        let y = self.forward_batches(&x)?;
        let y = if resized { y.f_upsample_bilinear2d([h, w], false, None, None)? } else { y };
        // GPEN truncates to uint8; rounding halves the error and matches the reference PNGs.
        frame::write_rgb(&frame::to_bytes(&from_unit(&y)?)?, (0, 0), data, layout, false)
    }
}

/// 0..255 pixel values to the generator's -1..1.
fn to_unit(x: &Tensor) -> Result<Tensor, Error> {
    Ok(x.f_div_scalar(255.0)?.f_sub_scalar(0.5)?.f_div_scalar(0.5)?)
}

/// The generator's -1..1 back to 0..255, clamped.
fn from_unit(y: &Tensor) -> Result<Tensor, Error> {
    Ok(y.f_mul_scalar(0.5)?.f_add_scalar(0.5)?.f_clamp(0.0, 1.0)?.f_mul_scalar(255.0)?)
}
