//! The memory policy: a piece of work run under the engine's plan, fitted to the budget first
//! and retried once on the next rung when it runs out of memory, and the frame's fate when
//! nothing fits ([`Ladder`](super::ladder::Ladder) decides the rungs; this runs them).

use super::engine::Engine;
use super::outcome::Outcome;
use super::paste::Paster;
use super::settings::{compute_kind, resolve_model_path};
use crate::error::Error;
use crate::gpen::Banding;
use crate::memory::{self, Plan};
use crate::registry;

impl Engine {
    /// What becomes of a frame of `faces` faces and size `frame` when `work` (which returns the
    /// faces restored) runs under the policy. With `degrade`, the plan first steps down until
    /// its estimate fits the budget; an out-of-memory error releases the cache and retries once
    /// on the next rung (or, for whole maps, banded). Otherwise, or when nothing is left, the
    /// policy decides: drop, pass through, or error. `work` gets the engine as it stands for
    /// each try; whatever it changes of its own (a stream's state) is its to keep consistent.
    pub fn run(
        &mut self,
        faces: usize,
        frame: (i64, i64),
        work: &mut dyn FnMut(&Engine) -> Result<usize, Error>,
    ) -> Result<Outcome, Error> {
        if let Some(decided) = self.fit_to_budget(faces, frame)? {
            return Ok(decided);
        }
        let (mut retried, mut stepped) = (false, false);
        loop {
            match work(self) {
                Ok(n) => {
                    let outcome = Outcome::Restored { faces: n, plan: self.ladder.plan(), retried };
                    // The frame is written: a better plan that cannot be loaded now is no error.
                    let _ = self.maybe_recover(faces, frame);
                    return Ok(outcome);
                }
                Err(e) if e.is_out_of_memory() => {
                    memory::release_cached();
                    let reason = format!("out of memory with {}: {e}", self.ladder.plan());
                    // Whole maps were chosen because the estimate fitted: band them first (the
                    // estimate is then off, so the next frames band too until the plan changes).
                    if self.banding == Banding::Off {
                        self.banding = Banding::Default;
                        self.whole_maps_failed = true;
                        retried = true;
                        continue;
                    }
                    if stepped {
                        return self.give_up(reason);
                    }
                    (retried, stepped) = (true, true);
                    if !self.step_down()? {
                        return self.give_up(reason);
                    }
                    self.banding = self.banding_for(&self.ladder.plan(), faces, frame);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The fate of a frame that cannot be processed in memory (`reason` says why).
    pub fn give_up(&self, reason: String) -> Result<Outcome, Error> {
        self.ladder.give_up(reason)
    }

    /// Steps the plan down until the estimate fits the budget (policy `degrade`); `Some` when
    /// the policy decided the frame's fate instead.
    fn fit_to_budget(&mut self, faces: usize, frame: (i64, i64)) -> Result<Option<Outcome>, Error> {
        loop {
            let plan = self.ladder.plan();
            let banding = self.banding_for(&plan, faces, frame);
            let need = self.estimate_with(&plan, faces, frame, banding);
            if need <= self.budget {
                self.banding = banding;
                return Ok(None);
            }
            let reason = format!(
                "{plan} needs about {} MiB for {faces} face(s), over the budget of {} MiB",
                memory::mib(need),
                memory::mib(self.budget)
            );
            if !self.step_down()? {
                return self.give_up(reason).map(Some);
            }
        }
    }

    /// Steps down one rung (policy `degrade`); false when there is none, or when loading the
    /// rung's model itself ran out of memory (the plan then stays).
    fn step_down(&mut self) -> Result<bool, Error> {
        let Some(next) = self.ladder.degrades().then(|| self.ladder.next_rung()).flatten() else { return Ok(false) };
        match self.switch_to(next) {
            Ok(()) => {
                self.ladder.stepped_down(next);
                Ok(true)
            }
            Err(e) if e.is_out_of_memory() => {
                memory::release_cached();
                // No room for the rung's model: a lighter plan on the model in hand, if any.
                let Some(alt) = self.ladder.next_rung_keeping_model() else { return Ok(false) };
                match self.switch_to(alt) {
                    Ok(()) => {
                        self.ladder.stepped_down(alt);
                        Ok(true)
                    }
                    Err(e) if e.is_out_of_memory() => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// After a run of good frames on a degraded plan, goes back up one rung if it fits.
    fn maybe_recover(&mut self, faces: usize, frame: (i64, i64)) -> Result<(), Error> {
        let Some(better) = self.ladder.succeeded() else { return Ok(()) };
        if self.estimate(&better, faces, frame) <= self.budget {
            match self.switch_to(better) {
                Ok(()) => self.ladder.recovered(),
                Err(e) if e.is_out_of_memory() => memory::release_cached(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Loads (or shares) the model of `plan`; the old one goes, unless another engine holds it,
    /// as soon as the new one is here.
    fn switch_to(&mut self, plan: Plan) -> Result<(), Error> {
        let current = self.ladder.plan();
        let path =
            if plan.size == current.size { self.model_path.clone() } else { resolve_model_path(self.model_source.as_deref(), plan.size) };
        let kind = compute_kind(plan.half, self.device);
        // Everything the plan needs is loaded before anything is replaced, so that a load that
        // runs out of memory leaves the current plan whole.
        let model = registry::generator(&path, self.model_key.as_deref(), self.device, kind)?;
        if let Some(faces) = &mut self.faces {
            // The parser goes with the rectangle rung and comes back in the plan's precision.
            let parser = match (&faces.parse_path, plan.parse) {
                (Some(p), true) => Some(registry::parser(p, self.device, kind)?),
                _ => None,
            };
            if plan.size != current.size {
                faces.paster = Paster::new(model.config().size, self.device, faces.regions)?;
            }
            faces.parser = parser;
        }
        // Faces and masks the streams kept are of the old plan's size and precision.
        self.epoch += 1;
        self.model = model;
        self.model_path = path;
        self.whole_maps_failed = false;
        memory::release_cached();
        Ok(())
    }
}
