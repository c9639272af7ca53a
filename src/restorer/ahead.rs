//! Generator batches across frames: the faces of a frame about to be finished, and of the
//! frames begun after it, restored in one batch, so that `face-batch` fills when frames hold
//! fewer faces than a batch.
//!
//! Only the generator runs ahead. Everything that depends on the previous frame (blending with
//! a track's last face, parsing masks that follow their track, the flicker meter) still runs
//! when each frame is finished, in order; the generator's output does not depend on it.
//!
//! A batch ahead is made in three steps, so that its forward may run on another thread
//! ([`worker`](super::worker)) while the caller goes on beginning frames:
//! [`Restorer::prepare_ahead`] chooses the frames and cuts their crops (it needs the restorer),
//! [`AheadJob::run`] runs the generator (it needs only the shared model), and
//! [`Restorer::attach_ahead`] gives each frame its faces. [`Restorer::restore_ahead`] does all
//! three at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::work::to_unit;
use super::{Detections, FrameOutput, Mode, Restorer};
use crate::gpen::{Banding, FullGenerator};
#[cfg(feature = "fault-injection")]
use crate::memory;
use crate::memory::Plan;
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

/// Where a frame's faces stand with the generator ahead.
#[derive(Default)]
pub(super) enum AheadSlot {
    /// Not restored ahead (yet).
    #[default]
    Open,
    /// In the batch ahead numbered so, not back yet.
    InFlight(u64),
    Restored(Ahead),
    /// Restored when the frame is finished, on its own under the memory policy (its batch ahead
    /// ran out of memory or failed).
    Alone,
}

impl AheadSlot {
    pub(super) fn restored(&self) -> Option<&Ahead> {
        match self {
            AheadSlot::Restored(a) => Some(a),
            _ => None,
        }
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

/// The testing switches' state (feature `fault-injection`): the forwards counted, and the time
/// added to each.
#[derive(Debug, Default)]
pub(super) struct Faults {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    forwards: AtomicU64,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    delay_ms: AtomicU64,
}

/// The generator's forwards in face batches, with what they need and nothing of the restorer:
/// the shared model, the banding and batch of the plan, and the counters.
pub(super) struct Forward {
    model: Arc<FullGenerator>,
    banding: Banding,
    batch: i64,
    runs: Arc<GeneratorRuns>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    faults: Arc<Faults>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    fail_every: u64,
}

impl Forward {
    /// The generator on `x` (`N x 3 x size x size`, -1..1) in face batches, as float.
    pub(super) fn run(&self, x: &Tensor) -> Result<Tensor, Error> {
        let _guard = tch::no_grad_guard();
        let n = x.size()[0];
        let mut out = Vec::with_capacity(((n + self.batch - 1) / self.batch) as usize);
        for start in (0..n).step_by(self.batch as usize) {
            let b = x.f_narrow(0, start, self.batch.min(n - start))?;
            let started = Instant::now();
            // Counted, and failed or slowed down when the testing switches (feature
            // `fault-injection`) say so.
            #[cfg(feature = "fault-injection")]
            {
                memory::injected_fault(&self.faults.forwards, self.fail_every)?;
                std::thread::sleep(Duration::from_millis(self.faults.delay_ms.load(Ordering::Relaxed)));
            }
            // A non-finite value (float16 overflow) would spoil the whole pasted rectangle, the
            // background included: it becomes 0 (then black, not garbage).
            let y = if self.model.device() == Device::Cpu && b.size()[0] > 1 {
                // On the CPU a batch runs face by face: a forward of one face is already wide
                // enough for every core, and larger maps only cost cache and memory (GPEN-512
                // fp32 on 2 cores: 1.8 s a face alone, 2.7 s a face in a batch of 2, more in 4).
                let faces = (0..b.size()[0])
                    .map(|i| self.model.forward_with(&b.f_narrow(0, i, 1)?, self.banding))
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::f_cat(&faces, 0)?
            } else {
                self.model.forward_with(&b, self.banding)?
            };
            let y = y.f_nan_to_num(0.0, None, None)?;
            self.runs.count(b.size()[0], started.elapsed());
            out.push(y.f_to_kind(Kind::Float)?);
        }
        Ok(Tensor::f_cat(&out, 0)?)
    }
}

/// Numbers batches ahead, so that a result finds its frames (and a stale one none).
static JOBS: AtomicU64 = AtomicU64::new(1);

/// A batch ahead, prepared ([`Restorer::prepare_ahead`]) and ready to run on any thread.
pub struct AheadJob {
    id: u64,
    forward: Forward,
    plan: Plan,
    /// The faces of every chosen frame, -1..1, in order.
    input: Tensor,
    /// Per chosen frame, in order: its crops (0..255), or none when no face of it aligned.
    crops: Vec<Option<Tensor>>,
}

/// A batch ahead that ran: to be attached to its frames ([`Restorer::attach_ahead`]).
pub struct AheadDone {
    id: u64,
    plan: Option<Plan>,
    crops: Vec<Option<Tensor>>,
    restored: Result<Tensor, Error>,
}

impl AheadJob {
    /// The generator on the batch. Needs only the shared model: any thread may run it.
    pub fn run(self) -> AheadDone {
        let restored = self.forward.run(&self.input);
        AheadDone { id: self.id, plan: Some(self.plan), crops: self.crops, restored }
    }

    /// Faces in the batch.
    pub fn faces(&self) -> i64 {
        self.input.size()[0]
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

impl AheadDone {
    /// The batch `id` that could not run (its worker is gone): its frames are restored alone.
    pub fn failed(id: u64, error: Error) -> Self {
        AheadDone { id, plan: None, crops: Vec::new(), restored: Err(error) }
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Detections {
    /// A frame with no faces (yet), `decided` or not, numbered `serial` in its stream.
    pub(super) fn empty(frame: Tensor, decided: Option<super::Outcome>, serial: Option<u64>) -> Self {
        Detections {
            faces: Vec::new(),
            ids: Vec::new(),
            detected: false,
            scene_cut: false,
            frame,
            decided,
            serial,
            ahead: AheadSlot::Open,
            registration: std::time::Duration::ZERO,
            thumbs: Vec::new(),
        }
    }

    /// Whether the frame's faces were restored ahead, in a batch with other frames' faces.
    pub fn restored_ahead(&self) -> bool {
        matches!(self.ahead, AheadSlot::Restored(_))
    }

    /// The batch ahead the frame's faces are in and that is not back yet.
    pub fn ahead_in_flight(&self) -> Option<u64> {
        match self.ahead {
            AheadSlot::InFlight(id) => Some(id),
            _ => None,
        }
    }
}

/// The frames chosen for a batch ahead.
struct Chosen<'a> {
    frames: Vec<&'a mut Detections>,
    faces: usize,
    /// No later frame can join: the batch is full, or the next frame's faces do not fit.
    closed: bool,
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

    /// The generator's forwards as the current plan runs them.
    pub(super) fn generator_forward(&self) -> Forward {
        Forward {
            model: self.model.clone(),
            banding: self.banding,
            batch: self.ladder.plan().face_batch.max(1) as i64,
            runs: self.runs.clone(),
            faults: self.faults.clone(),
            fail_every: self.fail_every,
        }
    }

    /// Every generator forward from now on takes `ms` milliseconds more (a testing switch).
    #[cfg(feature = "fault-injection")]
    pub fn slow_forwards(&self, ms: u64) {
        self.faults.delay_ms.store(ms, Ordering::Relaxed);
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
        let eligible = matches!(self.mode, Mode::Faces(_)) && matches!(d.ahead, AheadSlot::Open) && d.decided.is_none();
        if eligible && self.output_of(d) == FrameOutput::Written {
            d.faces.len()
        } else {
            0
        }
    }

    /// Whether `d`'s faces may still be restored ahead (none of it is yet, nor in flight).
    pub fn awaits_ahead(&self, d: &Detections) -> bool {
        self.faces_ahead(d) > 0
    }

    /// The first frame of `frames` whose faces await a batch ahead, and the whole frames after
    /// it that fit its last batch of the plan's `face-batch`.
    fn choose<'a>(&self, frames: impl IntoIterator<Item = &'a mut Detections>) -> Option<Chosen<'a>> {
        let batch = self.ladder.plan().face_batch.max(1);
        let mut frames = frames.into_iter().skip_while(|d| self.faces_ahead(d) == 0);
        let first = frames.next()?;
        let n0 = self.faces_ahead(first);
        let room = n0.div_ceil(batch) * batch;
        let mut chosen = Chosen { frames: vec![first], faces: n0, closed: n0 == room };
        for d in frames {
            let n = self.faces_ahead(d);
            if chosen.faces + n > room {
                chosen.closed = true;
                break;
            }
            if n > 0 {
                chosen.faces += n;
                chosen.frames.push(d);
                chosen.closed = chosen.faces == room;
            }
        }
        Some(chosen)
    }

    /// Restores ahead the faces of the first of `frames` (the next to be finished, in stream
    /// order) in batches of the plan's `face-batch`, filling its last batch with the faces of
    /// the frames that follow (whole frames, in order). Their finish then uses these faces
    /// instead of running the generator. Returns the faces restored ahead: 0 when the first
    /// frame needs no restoration, when no other frame fits its batches (it is then finished
    /// alone, as without look-ahead), or when the batch does not fit the memory budget or runs
    /// out of memory (each frame then goes through the memory policy on its own).
    pub fn restore_ahead<'a>(&self, frames: impl IntoIterator<Item = &'a mut Detections>) -> Result<usize, Error> {
        let mut frames: Vec<&'a mut Detections> = frames.into_iter().collect();
        if frames.first().is_none_or(|d| self.faces_ahead(d) == 0) {
            return Ok(0);
        }
        let Some(job) = self.prepare_ahead(frames.iter_mut().map(|d| &mut **d), true, false)? else { return Ok(0) };
        self.attach_ahead(frames, job.run())
    }

    /// A batch ahead, as [`restore_ahead`](Self::restore_ahead) chooses it from the first frame
    /// of `frames` whose faces await one: crops cut, frames marked as in flight, the forward
    /// left to [`AheadJob::run`]. `None` when there is nothing to restore ahead, when the batch
    /// does not fit the budget (its frames are then finished alone), when it holds one frame
    /// and `alone` is false, or when more frames could join it and it need not go yet
    /// (`now` false).
    pub fn prepare_ahead<'a>(
        &self,
        frames: impl IntoIterator<Item = &'a mut Detections>,
        now: bool,
        alone: bool,
    ) -> Result<Option<AheadJob>, Error> {
        let Mode::Faces(stage) = &self.mode else { return Ok(None) };
        let Some(Chosen { frames: chosen, faces, closed }) = self.choose(frames) else { return Ok(None) };
        if !(now || closed) || (chosen.len() == 1 && !alone) {
            return Ok(None);
        }
        let plan = self.ladder.plan();
        let (h, w) = (chosen[0].frame.size()[2], chosen[0].frame.size()[3]);
        if self.estimate(&plan, faces, (w, h)) > self.budget {
            return Ok(None);
        }
        let _guard = tch::no_grad_guard();
        let mut crops = Vec::with_capacity(chosen.len());
        for d in &chosen {
            crops.push(self.crops_of(stage, &d.frame, &d.faces)?);
        }
        let present: Vec<&Tensor> = crops.iter().flatten().collect();
        if present.is_empty() {
            return Ok(None);
        }
        let input = to_unit(&Tensor::f_cat(&present, 0)?)?;
        let id = JOBS.fetch_add(1, Ordering::Relaxed);
        for d in chosen {
            d.ahead = AheadSlot::InFlight(id);
        }
        Ok(Some(AheadJob { id, forward: self.generator_forward(), plan, input, crops }))
    }

    /// Gives the frames of `frames` in the batch `done` their restored faces; returns how many.
    /// A batch that ran out of memory leaves each of its frames to the memory policy on its own
    /// (0 restored); another error is returned, its frames restored alone all the same. A batch
    /// whose frames are gone (flushed) is dropped.
    pub fn attach_ahead<'a>(&self, frames: impl IntoIterator<Item = &'a mut Detections>, done: AheadDone) -> Result<usize, Error> {
        let mine: Vec<&mut Detections> = frames.into_iter().filter(|d| d.ahead_in_flight() == Some(done.id)).collect();
        let (restored, plan) = match (done.restored, done.plan) {
            (Ok(r), Some(plan)) if mine.len() == done.crops.len() => (r, plan),
            (result, _) => {
                for d in mine {
                    d.ahead = AheadSlot::Alone;
                }
                return match result {
                    Err(e) if e.is_out_of_memory() => {
                        crate::memory::release_cached();
                        Ok(0)
                    }
                    Err(e) => Err(e),
                    Ok(_) => Ok(0),
                };
            }
        };
        // Every frame leaves the batch here, restored or alone: none stays in flight.
        let (mut at, mut failed) = (0, None);
        for (d, c) in mine.into_iter().zip(done.crops) {
            let n = c.as_ref().map_or(0, |c| c.size()[0]);
            d.ahead = match c.map(|crops| restored.f_narrow(0, at, n).map(|r| (crops, r))) {
                Some(Ok((crops, restored))) => AheadSlot::Restored(Ahead { size: plan.size, half: plan.half, crops, restored }),
                Some(Err(e)) => {
                    failed.get_or_insert(e);
                    AheadSlot::Alone
                }
                None => AheadSlot::Alone,
            };
            at += n;
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(at as usize),
        }
    }
}
