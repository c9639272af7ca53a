//! The memory ladder: the plan frames are processed with, the rungs below it (half precision,
//! smaller face batches, smaller upscaler tiles, smaller face sizes), and when to climb back.
//! Pure: it decides; the restorer estimates, loads models and runs.

use crate::error::Error;
use crate::memory::{MemoryPolicy, Plan};

use super::outcome::Outcome;

/// Consecutive frames that must succeed on a degraded plan before the better plan is tried again.
pub const RECOVER_AFTER: u32 = 100;

/// Smallest upscaler tile the ladder steps down to, whatever the overlap.
const MIN_TILE: i64 = 64;

#[derive(Debug, Clone)]
pub struct Ladder {
    plan: Plan,
    /// The better plans left behind, most recent last.
    degraded_from: Vec<Plan>,
    ok_streak: u32,
    policy: MemoryPolicy,
    tile_overlap: i64,
    /// Face sizes below the start plan's whose checkpoints are at hand, largest first.
    smaller_sizes: Vec<i64>,
}

impl Ladder {
    pub fn new(plan: Plan, policy: MemoryPolicy, tile_overlap: i64, mut smaller_sizes: Vec<i64>) -> Self {
        smaller_sizes.sort_unstable_by(|a, b| b.cmp(a));
        Ladder { plan, degraded_from: Vec::new(), ok_streak: 0, policy, tile_overlap, smaller_sizes }
    }

    pub fn plan(&self) -> Plan {
        self.plan
    }

    pub fn policy(&self) -> MemoryPolicy {
        self.policy
    }

    /// Whether the policy lets the ladder step down.
    pub fn degrades(&self) -> bool {
        self.policy == MemoryPolicy::Degrade
    }

    /// The next rung below the current plan, if any: half precision, then halved face batches,
    /// then smaller upscaler tiles (from the whole frame to 512, then halves, while a tile keeps
    /// more than its overlap), then the rectangle mask instead of face parsing, then the next
    /// smaller face size.
    pub fn next_rung(&self) -> Option<Plan> {
        let p = self.plan;
        if !p.half {
            return Some(Plan { half: true, ..p });
        }
        self.lighter(p).or_else(|| self.smaller_sizes.iter().find(|&&s| s < p.size).map(|&size| Plan { size, ..p }))
    }

    /// The next rung that keeps the current model (size and precision): for when loading the
    /// next rung's model itself runs out of memory.
    pub fn next_rung_keeping_model(&self) -> Option<Plan> {
        self.lighter(self.plan)
    }

    /// The rungs that need no other model: halved face batches, smaller upscaler tiles, the
    /// rectangle mask.
    fn lighter(&self, p: Plan) -> Option<Plan> {
        if p.face_batch > 1 {
            return Some(Plan { face_batch: p.face_batch / 2, ..p });
        }
        if let Some(t) = p.tile {
            let next = if t == 0 { 512 } else { t / 2 };
            if next >= (2 * self.tile_overlap).max(MIN_TILE) {
                return Some(Plan { tile: Some(next), ..p });
            }
        }
        if p.parse {
            return Some(Plan { parse: false, ..p });
        }
        None
    }

    /// The plan is now `to`, one rung below.
    pub fn stepped_down(&mut self, to: Plan) {
        self.degraded_from.push(self.plan);
        self.plan = to;
        self.ok_streak = 0;
    }

    /// A frame succeeded; after [`RECOVER_AFTER`] of them on a degraded plan, the plan to try
    /// climbing back to (call [`recovered`](Self::recovered) if it fits, else
    /// [`stay`](Self::stay)).
    pub fn succeeded(&mut self) -> Option<Plan> {
        self.ok_streak += 1;
        if self.ok_streak < RECOVER_AFTER {
            return None;
        }
        self.ok_streak = 0;
        self.degraded_from.last().copied()
    }

    /// Back on the better plan [`succeeded`](Self::succeeded) offered.
    pub fn recovered(&mut self) {
        if let Some(better) = self.degraded_from.pop() {
            self.plan = better;
        }
    }

    /// What the policy does with a frame that cannot be processed in memory.
    pub fn give_up(&self, reason: String) -> Result<Outcome, Error> {
        match self.policy {
            MemoryPolicy::Degrade | MemoryPolicy::Drop => Ok(Outcome::Dropped { reason }),
            MemoryPolicy::Passthrough => Ok(Outcome::PassedThrough { reason }),
            MemoryPolicy::Error => Err(Error::OutOfMemory(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(size: i64, half: bool, face_batch: usize, tile: Option<i64>) -> Plan {
        Plan { size, half, face_batch, tile, parse: false }
    }

    fn walk(mut l: Ladder) -> Vec<Plan> {
        let mut seen = vec![l.plan()];
        while let Some(next) = l.next_rung() {
            l.stepped_down(next);
            seen.push(next);
        }
        seen
    }

    #[test]
    fn rungs_go_half_then_batch_then_tiles_then_size() {
        let l = Ladder::new(plan(1024, false, 4, Some(0)), MemoryPolicy::Degrade, 32, vec![256, 512]);
        let got = walk(l);
        let want = [
            plan(1024, false, 4, Some(0)),
            plan(1024, true, 4, Some(0)),
            plan(1024, true, 2, Some(0)),
            plan(1024, true, 1, Some(0)),
            plan(1024, true, 1, Some(512)),
            plan(1024, true, 1, Some(256)),
            plan(1024, true, 1, Some(128)),
            plan(1024, true, 1, Some(64)),
            plan(512, true, 1, Some(64)),
            plan(256, true, 1, Some(64)),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn rungs_that_keep_the_model_skip_precision_and_size() {
        let start = Plan { parse: true, ..plan(512, false, 4, Some(0)) };
        let l = Ladder::new(start, MemoryPolicy::Degrade, 32, vec![256]);
        assert_eq!(l.next_rung(), Some(Plan { half: true, ..start }));
        assert_eq!(l.next_rung_keeping_model(), Some(Plan { face_batch: 2, ..start }));
        let last = Ladder::new(plan(512, false, 1, None), MemoryPolicy::Degrade, 32, vec![256]);
        assert_eq!(last.next_rung_keeping_model(), None);
    }

    #[test]
    fn the_rectangle_mask_comes_before_smaller_sizes() {
        let start = Plan { parse: true, ..plan(512, true, 1, None) };
        let got = walk(Ladder::new(start, MemoryPolicy::Degrade, 32, vec![256]));
        assert_eq!(got, [start, plan(512, true, 1, None), plan(256, true, 1, None)]);
    }

    #[test]
    fn tiles_stop_above_twice_the_overlap_and_sizes_need_their_files() {
        let l = Ladder::new(plan(512, true, 1, Some(0)), MemoryPolicy::Degrade, 100, vec![]);
        assert_eq!(walk(l).last(), Some(&plan(512, true, 1, Some(256))));
        let l = Ladder::new(plan(512, true, 1, None), MemoryPolicy::Degrade, 32, vec![]);
        assert_eq!(l.next_rung(), None);
        // Sizes above the current one are never rungs.
        let l = Ladder::new(plan(256, true, 1, None), MemoryPolicy::Degrade, 32, vec![512, 1024]);
        assert_eq!(l.next_rung(), None);
    }

    #[test]
    fn recovery_climbs_back_one_rung_after_a_streak() {
        let start = plan(512, false, 2, None);
        let mut l = Ladder::new(start, MemoryPolicy::Degrade, 32, vec![]);
        l.stepped_down(l.next_rung().unwrap());
        l.stepped_down(l.next_rung().unwrap());
        assert_eq!(l.plan(), plan(512, true, 1, None));
        for _ in 1..RECOVER_AFTER {
            assert_eq!(l.succeeded(), None);
        }
        assert_eq!(l.succeeded(), Some(plan(512, true, 2, None)));
        // It did not fit: the streak starts over on the same plan.
        assert_eq!(l.plan(), plan(512, true, 1, None));
        for _ in 1..RECOVER_AFTER {
            assert_eq!(l.succeeded(), None);
        }
        assert!(l.succeeded().is_some());
        l.recovered();
        assert_eq!(l.plan(), plan(512, true, 2, None));
        for _ in 0..RECOVER_AFTER {
            l.succeeded();
        }
        l.recovered();
        assert_eq!(l.plan(), start);
        // On the start plan there is nothing to climb to.
        for _ in 0..2 * RECOVER_AFTER {
            assert_eq!(l.succeeded(), None);
        }
    }

    #[test]
    fn the_policy_decides_a_frame_that_does_not_fit() {
        let give_up = |policy| Ladder::new(plan(512, false, 1, None), policy, 32, vec![]).give_up("too big".into());
        assert_eq!(give_up(MemoryPolicy::Degrade).unwrap(), Outcome::Dropped { reason: "too big".into() });
        assert_eq!(give_up(MemoryPolicy::Drop).unwrap(), Outcome::Dropped { reason: "too big".into() });
        assert_eq!(give_up(MemoryPolicy::Passthrough).unwrap(), Outcome::PassedThrough { reason: "too big".into() });
        assert!(matches!(give_up(MemoryPolicy::Error), Err(Error::OutOfMemory(r)) if r == "too big"));
        assert!(!Ladder::new(plan(512, false, 1, None), MemoryPolicy::Drop, 32, vec![]).degrades());
    }
}
