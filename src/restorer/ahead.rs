//! The generator's batches ahead: the faces of several frames restored in one batch, so that
//! `face-batch` fills when frames hold fewer faces than a batch. This file holds what a batch
//! is (the job, its forward, its result, where a frame's faces stand with it) and nothing of a
//! stream; [`super::batch`] chooses and attaches batches, [`super::lookahead`] holds frames for
//! them and [`super::worker`] runs them on a thread of their own.
//!
//! Only the generator runs ahead. Everything that depends on the previous frame (blending with
//! a track's last face, parsing masks that follow their track, the flicker meter) still runs
//! when each frame is finished, in order; the generator's output does not depend on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::Error;
use crate::gpen::{Banding, FullGenerator};
#[cfg(feature = "fault-injection")]
use crate::memory;
use crate::memory::Plan;

/// A frame's faces restored ahead: their aligned crops and the generator's output, under the
/// plan of the batch.
pub(super) struct Ahead {
    pub(super) size: i64,
    pub(super) half: bool,
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
    /// Not restored ahead (yet), or in the batch in flight ([`super::lookahead`] knows which).
    #[default]
    Open,
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
    /// The counts so far.
    pub(super) fn counts(&self) -> GeneratorCounts {
        GeneratorCounts {
            batches: self.batches.load(Ordering::Relaxed),
            faces: self.faces.load(Ordering::Relaxed),
            time: Duration::from_nanos(self.nanos.load(Ordering::Relaxed)),
        }
    }

    /// A batch of `faces` that took `took` (on a GPU: to queue, unless synchronised).
    pub(super) fn count(&self, faces: i64, took: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.faces.fetch_add(faces as u64, Ordering::Relaxed);
        self.nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// What the generator ran so far ([`Engine::generator_runs`](super::Engine::generator_runs)).
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
    pub(super) delay_ms: AtomicU64,
    /// Forwards return their input.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(super) skip: std::sync::atomic::AtomicBool,
}

/// The generator's forwards in face batches, with what they need and nothing of the restorer:
/// the shared model, the banding and batch of the plan, and the counters.
pub(super) struct Forward {
    pub(super) model: Arc<FullGenerator>,
    pub(super) banding: Banding,
    pub(super) batch: i64,
    pub(super) runs: Arc<GeneratorRuns>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(super) faults: Arc<Faults>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(super) fail_every: u64,
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
            #[cfg(feature = "fault-injection")]
            if self.faults.skip.load(Ordering::Relaxed) {
                self.runs.count(b.size()[0], started.elapsed());
                out.push(b.f_to_kind(Kind::Float)?);
                continue;
            }
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
pub(super) static JOBS: AtomicU64 = AtomicU64::new(1);

/// A batch ahead, prepared ([`super::batch::prepare`]) and ready to run on any thread.
pub struct AheadJob {
    pub(super) id: u64,
    pub(super) forward: Forward,
    pub(super) plan: Plan,
    /// The faces of every chosen frame, -1..1, in order.
    pub(super) input: Tensor,
    /// Per chosen frame, in order: its crops (0..255), or none when no face of it aligned.
    pub(super) crops: Vec<Option<Tensor>>,
}

/// A batch ahead that ran: to be attached to its frames ([`super::batch::attach`]).
pub struct AheadDone {
    pub(super) id: u64,
    pub(super) plan: Option<Plan>,
    pub(super) crops: Vec<Option<Tensor>>,
    pub(super) restored: Result<Tensor, Error>,
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
