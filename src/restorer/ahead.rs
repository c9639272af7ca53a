//! Generator batches across frames: the faces of a frame about to be finished, and of the
//! frames begun after it, restored in one batch, so that `face-batch` fills when frames hold
//! fewer faces than a batch.
//!
//! Only the generator runs ahead. Everything that depends on the previous frame (blending with
//! a track's last face, parsing masks that follow their track, the flicker meter) still runs
//! when each frame is finished, in order; the generator's output does not depend on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tch::Tensor;

use super::work::to_unit;
use super::{Detections, FrameOutput, Mode, Restorer};
use crate::memory::{self, Plan};
use crate::Error;

/// A frame's faces restored ahead: their aligned crops and the generator's output, under the
/// plan of the batch.
pub(super) struct Ahead {
    size: i64,
    half: bool,
    /// `N x 3 x S x S`, 0..255, as the frame's finish would cut them.
    pub(super) crops: Tensor,
    /// `N x 3 x S x S`, -1..1, float.
    pub(super) restored: Tensor,
}

impl Ahead {
    /// Whether the faces were restored as `plan` restores them (a plan changed since, to
    /// another size or precision, restores them again).
    pub(super) fn fits(&self, plan: &Plan) -> bool {
        plan.size == self.size && plan.half == self.half
    }
}

/// Generator batches run so far, the faces in them and their wall time.
#[derive(Debug, Default)]
pub(super) struct GeneratorRuns {
    batches: AtomicU64,
    faces: AtomicU64,
    nanos: AtomicU64,
}

impl GeneratorRuns {
    /// A batch of `faces` that took `took` (on a GPU: to queue, unless synchronised).
    pub(super) fn count(&self, faces: i64, took: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.faces.fetch_add(faces as u64, Ordering::Relaxed);
        self.nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// What the generator ran so far ([`Restorer::generator_runs`]).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct GeneratorCounts {
    pub batches: u64,
    pub faces: u64,
    /// Wall time of the forwards.
    pub time: Duration,
}

impl Detections {
    /// A frame with no faces (yet), `decided` or not, numbered `serial` in its stream.
    pub(super) fn empty(frame: Tensor, decided: Option<super::Outcome>, serial: Option<u64>) -> Self {
        Detections { faces: Vec::new(), ids: Vec::new(), detected: false, scene_cut: false, frame, decided, serial, ahead: None }
    }

    /// Whether the frame's faces were restored ahead, in a batch with other frames' faces.
    pub fn restored_ahead(&self) -> bool {
        self.ahead.is_some()
    }
}

impl Restorer {
    /// Generator batches run so far, the faces in them and their time.
    pub fn generator_runs(&self) -> GeneratorCounts {
        let r = &self.runs;
        GeneratorCounts {
            batches: r.batches.load(Ordering::Relaxed),
            faces: r.faces.load(Ordering::Relaxed),
            time: Duration::from_nanos(r.nanos.load(Ordering::Relaxed)),
        }
    }

    /// Before a frame is finished: its tracks' state is the one its predecessor left, and a
    /// scene cut starts the flicker figure afresh.
    pub(super) fn take_up(&mut self, d: &Detections) {
        if let (Mode::Faces(stage) | Mode::Upscaled(stage, _), Some(serial)) = (&mut self.mode, d.serial) {
            stage.tracks.get_mut().serial = serial;
            if d.scene_cut {
                stage.flicker.get_mut().forget();
            }
        }
    }

    /// The faces the generator would restore for `d` when it is finished, if they can be
    /// restored ahead (whole frames, not upscaled, to be written, not restored ahead yet).
    fn faces_ahead(&self, d: &Detections) -> usize {
        let eligible = matches!(self.mode, Mode::Faces(_)) && d.ahead.is_none() && d.decided.is_none();
        if eligible && self.output_of(d) == FrameOutput::Written {
            d.faces.len()
        } else {
            0
        }
    }

    /// Restores ahead the faces of the first of `frames` (the next to be finished, in stream
    /// order) in batches of the plan's `face-batch`, filling its last batch with the faces of
    /// the frames that follow (whole frames, in order). Their finish then uses these faces
    /// instead of running the generator. Returns the faces restored ahead: 0 when the first
    /// frame needs no restoration, when no other frame fits its batches (it is then finished
    /// alone, as without look-ahead), or when the batch does not fit the memory budget or runs
    /// out of memory (each frame then goes through the memory policy on its own).
    pub fn restore_ahead<'a>(&self, frames: impl IntoIterator<Item = &'a mut Detections>) -> Result<usize, Error> {
        let Mode::Faces(stage) = &self.mode else { return Ok(0) };
        let plan = self.ladder.plan();
        let batch = plan.face_batch.max(1);
        let mut frames = frames.into_iter();
        let Some(first) = frames.next() else { return Ok(0) };
        let n0 = self.faces_ahead(first);
        if n0 == 0 {
            return Ok(0);
        }
        let room = n0.div_ceil(batch) * batch;
        let mut chosen = vec![first];
        let mut total = n0;
        for d in frames {
            let n = self.faces_ahead(d);
            if total + n > room {
                break;
            }
            if n > 0 {
                total += n;
                chosen.push(d);
            }
        }
        let (h, w) = (chosen[0].frame.size()[2], chosen[0].frame.size()[3]);
        if chosen.len() == 1 || self.estimate(&plan, total, (w, h)) > self.budget {
            return Ok(0);
        }
        let _guard = tch::no_grad_guard();
        let mut crops = Vec::with_capacity(chosen.len());
        for d in &chosen {
            crops.push(self.crops_of(stage, &d.frame, &d.faces)?);
        }
        let present: Vec<&Tensor> = crops.iter().flatten().collect();
        if present.is_empty() {
            return Ok(0);
        }
        let restored = match Tensor::f_cat(&present, 0).map_err(Error::from).and_then(|x| self.forward_batches(&to_unit(&x)?)) {
            Ok(r) => r,
            Err(e) if e.is_out_of_memory() => {
                memory::release_cached();
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let mut at = 0;
        for (d, c) in chosen.into_iter().zip(crops) {
            let Some(c) = c else { continue };
            let n = c.size()[0];
            d.ahead = Some(Ahead { size: plan.size, half: plan.half, crops: c, restored: restored.f_narrow(0, at, n)? });
            at += n;
        }
        Ok(at as usize)
    }
}
