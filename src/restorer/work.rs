//! The work of one try at a frame, under the engine's current plan: the generator in face
//! batches, face parsing and its per-track masks, the crops and paste of whole frames, aligned
//! faces. Functions of the engine (read only) and of the stream's faces (their state updated
//! once the frame is written).

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::ahead::Ahead;
use super::color;
use super::engine::Engine;
use super::faces::FaceStream;
use super::frame;
use super::layout::{FrameLayout, PlanesMut};
use super::paste;
use super::settings::ColorMode;
use super::temporal::{self, TrackState};
use crate::align::{self, Alignment, Border, Stretch};
use crate::detect::Face;
use crate::error::Error;
use crate::transfer;

/// What a written frame changes in its tracks' state.
#[derive(Default)]
pub(super) struct TrackUpdate {
    /// Per face: its track and what the track keeps (untracked faces keep nothing).
    states: Vec<Option<(u64, TrackState)>>,
    mask_change: Option<(Tensor, Tensor, u64)>,
}

/// What a tracked face carries over from the previous frame: its restored face and masks, and
/// how still each part of it is (per cell, 1 = still).
struct Prior {
    face: Option<Tensor>,
    mask: Option<(Tensor, Tensor)>,
    stillness: Tensor,
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

/// What [`Stream::restore_faces`](super::Stream::restore_faces) did to a frame.
#[derive(Debug)]
pub struct PasteReport {
    /// Faces pasted back.
    pub restored: usize,
    /// The frame rectangle `(x0, y0, width, height)` that was written, if any.
    pub region: Option<(i64, i64, i64, i64)>,
    /// The combined paste mask over `region` (`1 x 1 x height x width`, 0..1): pixels where it
    /// is 0 kept their value.
    pub mask: Option<Tensor>,
    /// Wall time of the steps, for benchmarks (asynchronous on CUDA unless synchronised).
    pub timings: PasteTimings,
}

/// Where the time of [`Stream::restore_faces`](super::Stream::restore_faces) went.
#[derive(Debug, Default, Clone, Copy)]
pub struct PasteTimings {
    /// Alignment and cropping of all faces.
    pub crop: Duration,
    /// The generator forwards (and face parsing).
    pub generator: Duration,
    /// Blending each tracked face with its previous restoration.
    pub temporal: Duration,
    /// Registering the faces' crops as the frame began ([`Detections::registration`](super::Detections::registration)).
    pub registration: Duration,
    /// Smoothing, blending, warping back and writing the frame.
    pub paste: Duration,
}

/// The generator on `x` (`N x 3 x size x size`, -1..1) in batches of the plan's face batch, as
/// float.
fn forward_batches(engine: &Engine, x: &Tensor) -> Result<Tensor, Error> {
    engine.generator_forward().run(x)
}

/// Parsing masks follow their track: each is blended in aligned space with the track's
/// previous mask by `temporal-smoothing`, where the face is still (the parser's argmax flips
/// classes from frame to frame where they are nearly tied; a still face keeps its mask
/// exactly). Returns the masks to paste; the masks and their change go into `update`, applied
/// by [`keep_tracks`](Self::keep_tracks) once the frame is written (a retry must not blend a
/// frame with itself).
fn smooth_masks(strength: f64, masks: Tensor, priors: &[Option<Prior>], update: &mut TrackUpdate) -> Result<Tensor, Error> {
    let mut out = Vec::with_capacity(priors.len());
    for (i, prior) in priors.iter().enumerate() {
        let raw = masks.f_narrow(0, i as i64, 1)?;
        let pasted = match prior.as_ref().and_then(|p| p.mask.as_ref().map(|m| (m, p))) {
            Some(((last_raw, last_pasted), prior)) => {
                let pasted = temporal::blend(&raw, last_pasted, &prior.stillness, strength, false)?;
                // Frame-to-frame change as parsed and as pasted, summed on the device: nothing
                // is read back per frame.
                let change = |a: &Tensor, b: &Tensor| a.f_sub(b)?.f_abs()?.f_mean(Kind::Float);
                let (r, p) = (change(&raw, last_raw)?, change(&pasted, last_pasted)?);
                update.mask_change = Some(match update.mask_change.take() {
                    Some((rs, ps, n)) => (rs.f_add(&r)?, ps.f_add(&p)?, n + 1),
                    None => (r, p, 1),
                });
                pasted
            }
            None => raw.shallow_clone(),
        };
        if let Some(Some((_, state))) = update.states.get_mut(i) {
            state.mask = Some((raw, pasted.shallow_clone()));
        }
        out.push(pasted);
    }
    Ok(Tensor::f_cat(&out, 0)?)
}

/// What each face's track carries over from the previous frame, and the update of the
/// tracks' state with this frame's thumbnails (the faces and masks are added as they are
/// made). `faces`: whether restored faces are blended (and so kept); `masks`: whether
/// parsing masks are (they are kept only then). With neither, only the thumbnails are kept:
/// the registered ones, else those of `crops`.
fn priors(
    stage: &FaceStream,
    crops: &Tensor,
    (tracks, registered): (&[Option<u64>], &[Option<&Tensor>]),
    faces: bool,
    masks: bool,
) -> Result<(Vec<Option<Prior>>, TrackUpdate), Error> {
    let memory = &stage.tracks;
    let unregistered = tracks.iter().zip(registered).any(|(t, r)| t.is_some() && r.is_none());
    let thumbs = if unregistered { Some(temporal::thumbnails(crops)?) } else { None };
    let mut priors = Vec::with_capacity(tracks.len());
    let mut update = TrackUpdate { states: Vec::with_capacity(tracks.len()), mask_change: None };
    for (i, track) in tracks.iter().enumerate() {
        let Some(id) = *track else {
            priors.push(None);
            update.states.push(None);
            continue;
        };
        let thumb = match (registered.get(i).copied().flatten(), &thumbs) {
            (Some(t), _) => t.shallow_clone(),
            (None, Some(all)) => all.f_narrow(0, i as i64, 1)?,
            (None, None) => return Err(Error::Internal("a tracked face without a thumbnail".into())),
        };
        priors.push(match memory.previous(id).filter(|_| faces || masks) {
            // With blending the crops are registered onto each other ([`super::lock`]): the
            // previous face and masks lie where this frame's do, and what differs is change.
            Some(last) => Some(Prior {
                face: last.face.as_ref().filter(|_| faces).map(Tensor::shallow_clone),
                mask: last.mask.as_ref().map(|(raw, pasted)| (raw.shallow_clone(), pasted.shallow_clone())),
                stillness: temporal::stillness(&thumb, &last.thumb)?,
            }),
            None => None,
        });
        update.states.push(Some((id, TrackState { serial: memory.serial, thumb, face: None, mask: None })));
    }
    Ok((priors, update))
}

/// Keeps the state of a written frame's tracks; tracks that are gone are forgotten.
fn keep_tracks(stage: &mut FaceStream, update: TrackUpdate) -> Result<(), Error> {
    stage.tracks.keep(update.states.into_iter().flatten().collect());
    if let Some((r, p, n)) = update.mask_change {
        let change = &mut stage.mask_change;
        *change = Some(match change.take() {
            Some((rs, ps, m)) => (rs.f_add(&r)?, ps.f_add(&p)?, m + n),
            None => (r, p, n),
        });
    }
    Ok(())
}

/// `f` on `x` in batches of the plan's face batch, concatenated as float.
fn in_batches(engine: &Engine, x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor, Error>) -> Result<Tensor, Error> {
    let n = x.size()[0];
    let batch = engine.plan().face_batch.max(1) as i64;
    let mut out = Vec::with_capacity(((n + batch - 1) / batch) as usize);
    for start in (0..n).step_by(batch as usize) {
        out.push(f(&x.f_narrow(0, start, batch.min(n - start))?)?.f_to_kind(Kind::Float)?);
    }
    Ok(Tensor::f_cat(&out, 0)?)
}

/// The aligned crops (`N x 3 x S x S`, 0..255) of the `faces` of `frame` that align, in
/// order, as [`restore_onto`] cuts them; `None` when none aligns.
pub(super) fn crops_of(engine: &Engine, frame: &Tensor, faces: &[Face], stretch: Stretch) -> Result<Option<Tensor>, Error> {
    let _guard = tch::no_grad_guard();
    let size = engine.face_models()?.paster.size();
    let alignments: Vec<Alignment> = faces.iter().filter_map(|f| align::align_stretched(&f.landmarks, size, stretch)).collect();
    if alignments.is_empty() {
        return Ok(None);
    }
    let n = alignments.len() as i64;
    let matrices = transfer::upload(&Tensor::f_from_slice(&align::crop_matrices(&alignments))?, engine.device)?.f_reshape([n, 6])?;
    Ok(Some(align::crop_faces_cv(frame, &matrices, size, Border::Replicate)?))
}

/// Restores `faces` cropped from `crops_from` and pastes them onto `background`, writing
/// the pasted region into `data`. Pixels outside the pasted masks keep their value.
/// With `out`, the pasted region is written into the frame's memory; without, it is
/// composed into `background` on the device (which the caller writes whole). `ahead`: the
/// faces' crops and generator outputs, made in a batch with other frames' faces. `faces`:
/// the faces, their tracks (none for a still image), their registered thumbnails (none
/// without blending) and how the frame's pixels are displayed.
pub(super) fn restore_onto(
    engine: &Engine,
    stage: &mut FaceStream,
    crops_from: &Tensor,
    background: &Tensor,
    (faces, ids, thumbs, stretch): (&[Face], &[u64], &[Option<Tensor>], Stretch),
    ahead: Option<&Ahead>,
    out: Option<(PlanesMut<'_>, &FrameLayout)>,
) -> Result<PasteReport, Error> {
    let mut report = PasteReport { restored: 0, region: None, mask: None, timings: PasteTimings::default() };
    let t0 = Instant::now();
    let _guard = tch::no_grad_guard();
    stage.follow_plan(engine);
    let models = engine.face_models()?;
    let paster = &models.paster;
    let plan = engine.plan();
    let size = paster.size();
    let (h, w) = (background.size()[2], background.size()[3]);
    if let Some((_, layout)) = &out {
        if layout.size() != (w, h) {
            return Err(Error::OutputMismatch(format!(
                "faces of a {w}x{h} frame pasted into a {}x{} one",
                layout.width(),
                layout.height()
            )));
        }
    }
    // Each face with its track (none for still images), its alignment and its thumbnail.
    let mut aligned = Vec::with_capacity(faces.len());
    for (i, f) in faces.iter().enumerate() {
        if let Some(a) = align::align_stretched(&f.landmarks, size, stretch) {
            aligned.push((f, ids.get(i).copied(), a, thumbs.get(i).and_then(Option::as_ref)));
        }
    }
    let faces: Vec<&Face> = aligned.iter().map(|x| x.0).collect();
    let tracks: Vec<Option<u64>> = aligned.iter().map(|x| x.1).collect();
    let alignments: Vec<Alignment> = aligned.iter().map(|x| x.2).collect();
    let thumbs: Vec<Option<&Tensor>> = aligned.iter().map(|x| x.3).collect();
    if faces.is_empty() {
        return Ok(report);
    }
    // Every face's crop matrix and paste map go to the device in one copy (f64: the crops
    // round coordinates as OpenCV does, which needs the matrices exact), from page-locked
    // memory: a plain copy would wait for the device to finish the frame's work so far.
    let n = alignments.len() as i64;
    let regions = paster.regions(&alignments, (h, w));
    let mut table = align::crop_matrices(&alignments);
    table.extend(paster.maps(&alignments, &regions).into_iter().map(f64::from));
    let table = transfer::upload_pinned(&Tensor::f_from_slice(&table)?, engine.device)?;
    let crop_matrices = table.f_narrow(0, 0, 6 * n)?.f_reshape([n, 6])?;
    let paste_maps = table.f_narrow(0, 6 * n, 6 * n)?.f_to_kind(Kind::Float)?.f_reshape([n, 3, 2])?;
    // GPEN's crops are cv2.warpAffine on the 8-bit frame; faces cut by the frame edge get the
    // edge replicated instead of GPEN's black band, which the generator would otherwise
    // carry into the pasted face.
    let crops = match ahead {
        Some(a) => a.crops.shallow_clone(),
        None => align::crop_faces_cv(crops_from, &crop_matrices, size, Border::Replicate)?,
    };
    report.timings.crop = t0.elapsed();
    let t1 = Instant::now();
    // With face parsing the heap is given back after both networks, not between them.
    let _pause = (plan.parse && engine.device == Device::Cpu).then(crate::sys::TrimPause::new);
    let restored = match ahead {
        Some(a) => from_unit(&a.restored)?,
        None => from_unit(&forward_batches(engine, &to_unit(&crops)?)?)?,
    };
    report.timings.generator = t1.elapsed();
    let t2 = Instant::now();
    let live = stage.settings.live;
    // The previous frame matters to blending and to parsing masks only.
    let parse = models.parser.is_some() && plan.parse;
    let (priors, mut update) = match live.consistency > 0.0 || parse {
        true => priors(stage, &crops, (&tracks, &thumbs), live.consistency > 0.0, parse)?,
        // Nothing carries over: no thumbnails to make, no state to keep.
        false => (tracks.iter().map(|_| None).collect(), TrackUpdate::default()),
    };
    // Each tracked face takes its previous restoration where the face is still.
    for (i, prior) in priors.iter().enumerate() {
        if let Some(Prior { face: Some(face), stillness, .. }) = prior {
            // In place on the face's part of the batch.
            let _ = temporal::blend(&restored.f_narrow(0, i as i64, 1)?, face, stillness, live.consistency, true)?;
        }
    }
    if live.consistency > 0.0 {
        for (i, state) in update.states.iter_mut().enumerate() {
            if let Some((_, s)) = state {
                s.face = Some(restored.f_narrow(0, i as i64, 1)?);
            }
        }
    }
    report.timings.temporal = t2.elapsed();
    // GPEN parses the restored faces before smoothing and blending them.
    let t3 = Instant::now();
    let masks = match (&models.parser, plan.parse) {
        (Some(net), true) => {
            // The classes per face batch: the 19-class logits of every face never exist at once.
            let classes = |x: &Tensor| in_batches(engine, x, |b| Ok(net.forward(b)?.f_argmax(1, false)?));
            Some(smooth_masks(live.smoothing, paster.parse_masks(&restored, classes)?, &priors, &mut update)?)
        }
        _ => None,
    };
    drop(_pause);
    report.timings.generator += t3.elapsed();
    let t4 = Instant::now();
    let small: Vec<bool> = faces.iter().map(|f| f.width().min(f.height()) < paste::SMALL_FACE).collect();
    let restored = paster.finish(restored, &crops, &small, live.alpha)?;
    // The colour (`color`) comes after temporal blending, smoothing and alpha, so the faces kept
    // for blending stay GPEN's (blending never mixes two colour treatments, and a change of
    // `color` while playing shows at once) and alpha's mix with the crop is coloured as a whole.
    // Black-and-white faces (`auto`) are made grey per face in aligned space, just before the
    // warp back, which with the paste does the same arithmetic on each channel: a grey face
    // lands grey on a grey frame, exactly.
    let (restored, grey) = color::grey_faces(live.color, restored, &crops)?;
    let Some(mut pasted) = paster.paste(background, &restored, &regions, &paste_maps, masks.as_ref())? else {
        return Ok(report);
    };
    let (x0, y0, rw, rh) = pasted.region;
    if live.color == ColorMode::Source {
        // The source's chroma is kept in the frame, after the paste, at the frame's resolution
        // (in aligned space it would be resampled into the crop and back): where the mask is 0
        // the composed luma is the background's, and the frame is left exactly as it was.
        let under = background.f_narrow(2, y0, rh)?.f_narrow(3, x0, rw)?;
        pasted.image = color::with_source_chroma(&pasted.image, &under)?;
    }
    // The region as written, and the input under it (whole levels already: the frame's
    // bytes, or their rounded upscale), for the flicker figure, taken before `background`,
    // which may be `crops_from`, is written.
    let output = frame::quantize(&pasted.image)?;
    let input = crops_from.f_narrow(2, y0, rh)?.f_narrow(3, x0, rw)?.f_to_kind(Kind::Uint8)?;
    let serial = stage.tracks.serial;
    stage.flicker.observe(serial, pasted.region, input, output.shallow_clone(), &pasted.mask)?;
    let under = background.f_narrow(2, y0, rh)?.f_narrow(3, x0, rw)?;
    match out {
        Some((data, layout)) => frame::write_pasted((&output, &pasted.image, &under), (x0, y0), data, layout)?,
        None => under.shallow_clone().f_copy_(&pasted.image)?,
    }
    keep_tracks(stage, update)?;
    if let Some(grey) = grey {
        // Counted once the frame is written (a retry must not count it twice), faces that
        // missed the frame left out.
        let reached: Vec<bool> = regions.iter().map(Option::is_some).collect();
        let n = color::count(&grey, &reached)?;
        stage.faces_grey = Some(match stage.faces_grey.take() {
            Some(total) => total.f_add(&n)?,
            None => n,
        });
    }
    report.timings.paste = t4.elapsed();
    Ok(PasteReport { restored: pasted.faces, region: Some((x0, y0, rw, rh)), mask: Some(pasted.mask), timings: report.timings })
}

/// Restores a frame that is one aligned face: resized to the model's size when it differs,
/// restored, and resized back. Channels other than R, G, B are left untouched.
pub(super) fn restore_aligned(engine: &Engine, frame: &Tensor, data: PlanesMut<'_>, layout: &FrameLayout) -> Result<(), Error> {
    let _guard = tch::no_grad_guard();
    let (h, w) = (frame.size()[2], frame.size()[3]);
    let size = engine.model.config().size;
    let resized = (h, w) != (size, size);
    let x = to_unit(frame)?;
    let x = if resized { x.f_upsample_bilinear2d([size, size], false, None, None)? } else { x };
    let y = forward_batches(engine, &x)?;
    let y = if resized { y.f_upsample_bilinear2d([h, w], false, None, None)? } else { y };
    // GPEN truncates to uint8; rounding halves the error and matches the reference PNGs.
    match layout {
        FrameLayout::Rgb(l) => frame::write_rgb(&frame::to_bytes(&from_unit(&y)?)?, (0, 0), data.0[0], l, false),
        FrameLayout::Yuv(_) => frame::write_frame(&from_unit(&y)?, data, layout),
    }
}

/// 0..255 pixel values to the generator's -1..1.
pub(super) fn to_unit(x: &Tensor) -> Result<Tensor, Error> {
    Ok(x.f_div_scalar(255.0)?.f_sub_scalar(0.5)?.f_div_scalar(0.5)?)
}

/// The generator's -1..1 back to 0..255, clamped.
fn from_unit(y: &Tensor) -> Result<Tensor, Error> {
    Ok(y.f_mul_scalar(0.5)?.f_add_scalar(0.5)?.f_clamp(0.0, 1.0)?.f_mul_scalar(255.0)?)
}
