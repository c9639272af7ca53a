//! What becomes of a frame: the fates the core decides, and what a frame's memory needs for it.

use crate::error::Error;
use crate::memory::Plan;

/// What became of a frame. The core alone decides it; callers map it to their own terms (the
/// element: a flow return, statistics and messages).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No face in the frame; nothing was written (upscaling: the upscaled frame was).
    NoFaces,
    /// Faces restored and pasted (whole frames), or the aligned face restored.
    Restored {
        faces: usize,
        plan: Plan,
        /// An out-of-memory error was caught and the frame redone with the next plan.
        retried: bool,
    },
    /// Detect-only mode: faces found, followed and described, none restored; nothing written.
    Described { faces: usize },
    /// The policy dropped the frame (nothing was written).
    Dropped { reason: String },
    /// The policy left the frame as it was (upscaling: upscaled bicubically, faces untouched).
    PassedThrough { reason: String },
    /// The frame's memory does not hold the frame its format describes (`have` bytes of the
    /// `need`ed): it passes through as it came, nothing read or written.
    Unreadable { have: usize, need: usize },
}

impl Outcome {
    /// The frame's outcome from those of its two fields (`self` the earlier): a drop drops the
    /// frame; a field left as it was leaves the frame reported as passed through; faces add up.
    pub fn and(self, later: Outcome) -> Outcome {
        use Outcome::*;
        match (self, later) {
            (d @ Dropped { .. }, _) | (_, d @ Dropped { .. }) => d,
            (u @ Unreadable { .. }, _) | (_, u @ Unreadable { .. }) => u,
            (p @ PassedThrough { .. }, _) | (_, p @ PassedThrough { .. }) => p,
            (Restored { faces: a, retried: r, .. }, Restored { faces: b, plan, retried: s }) => {
                Restored { faces: a + b, plan, retried: r || s }
            }
            (r @ Restored { .. }, _) | (_, r @ Restored { .. }) => r,
            (Described { faces: a }, Described { faces: b }) => Described { faces: a + b },
            (d @ Described { .. }, NoFaces) | (NoFaces, d @ Described { .. }) => d,
            (NoFaces, NoFaces) => NoFaces,
        }
    }
}

/// The outcome of a frame's pictures so far (`None` before the first) with the next picture's:
/// [`Outcome::and`], or the first error.
pub fn and_next(so_far: Option<Result<Outcome, Error>>, next: Result<Outcome, Error>) -> Result<Outcome, Error> {
    match (so_far, next) {
        (None, o) => o,
        (Some(Ok(a)), Ok(b)) => Ok(a.and(b)),
        (Some(Err(e)), _) | (_, Err(e)) => Err(e),
    }
}

/// What becomes of a frame's memory when it is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOutput {
    /// The output frame is written (faces pasted in place, or the whole upscaled frame).
    Written,
    /// The input is left as it is (no faces, detect-only, or passed through by the policy):
    /// nothing to copy.
    Unchanged,
    /// The policy drops the frame.
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frames_fields_give_one_outcome() {
        let plan = Plan { size: 512, half: false, face_batch: 4, tile: None, parse: false };
        let restored = |faces| Outcome::Restored { faces, plan, retried: false };
        let dropped = Outcome::Dropped { reason: "budget".into() };
        assert_eq!(restored(1).and(restored(2)), restored(3));
        assert_eq!(Outcome::NoFaces.and(restored(2)), restored(2));
        assert_eq!(restored(2).and(dropped.clone()), dropped);
        assert_eq!(Outcome::PassedThrough { reason: "x".into() }.and(restored(1)), Outcome::PassedThrough { reason: "x".into() });
        assert_eq!(Outcome::Described { faces: 1 }.and(Outcome::NoFaces), Outcome::Described { faces: 1 });
        assert_eq!(and_next(None, Ok(Outcome::NoFaces)).unwrap(), Outcome::NoFaces);
        assert!(and_next(Some(Ok(restored(1))), Err(Error::NotNegotiated)).is_err());
        assert!(and_next(Some(Err(Error::NotNegotiated)), Ok(restored(1))).is_err());
    }
}
