//! The element's statistics: counters kept from what became of each frame, the `stats`
//! structure and `gpenfilter-stats` message, the QoS message of a dropped frame, and when a
//! policy drop is told as a WARNING.

use std::time::{Duration, Instant};

use crate::memory::{self, Plan};
use crate::restorer::{Flicker, GeneratorCounts, Outcome, VideoCounters};

/// Counters behind the `stats` property (and the `post-messages` element messages).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    /// Dropped by the memory policy.
    pub frames_dropped: u64,
    /// Dropped by QoS because they were late.
    pub frames_late_dropped: u64,
    /// Pushed unprocessed by the memory policy.
    pub frames_passed_through: u64,
    /// In the element when a flushing seek discarded them (GStreamer's flush semantics).
    pub frames_flushed: u64,
    pub frames_without_faces: u64,
    pub faces_detected: u64,
    pub faces_restored: u64,
    /// Faces pasted as their luminance only (`color=auto` on black-and-white faces).
    pub faces_grey: u64,
    /// Faces read from the input's region metas (`faces-from=upstream|both`).
    pub faces_from_metas: u64,
    /// Face metas without landmarks in whose box the detector found no face.
    pub metas_skipped: u64,
    /// Frames the detector ran on (the others' faces were carried by their tracks).
    pub detector_runs: u64,
    pub scene_cuts: u64,
    pub tracks_started: u64,
    /// Frames redone on the next plan after an out-of-memory error.
    pub retries: u64,
    /// Generator forwards (batches of faces) run, the faces in them, their time.
    pub generator_runs: GeneratorCounts,
    /// Frames whose analysis began while the worker ran a generator forward (`overlap`).
    pub frames_overlapped: u64,
    /// Time the streaming thread waited for the worker's batches ahead.
    pub ahead_wait: Duration,
    /// How much pasted faces changed from frame to frame against the input.
    pub flicker: Flicker,
    pub plan: Option<Plan>,
    pub device: Option<tch::Device>,
    pub timed_frames: u64,
    pub total_time: Duration,
    pub worst_time: Duration,
    /// When the last drop warning was posted, and the drops counted then.
    pub drop_warned: Option<(Instant, u64)>,
}

/// Least time between two WARNING messages about policy drops.
pub const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(5);

impl Stats {
    /// Counts what became of a frame that took `took`.
    pub fn record(&mut self, outcome: &Outcome, took: Duration) {
        self.timed_frames += 1;
        self.total_time += took;
        self.worst_time = self.worst_time.max(took);
        match outcome {
            Outcome::NoFaces => self.frames_without_faces += 1,
            Outcome::Restored { faces, retried, .. } => {
                self.faces_restored += *faces as u64;
                self.retries += *retried as u64;
            }
            Outcome::PassedThrough { .. } | Outcome::Unreadable { .. } => self.frames_passed_through += 1,
            // Detect-only: faces described, none restored.
            Outcome::Described { .. } => {}
            Outcome::Dropped { .. } => self.frames_dropped += 1,
        }
    }

    pub fn set_video(&mut self, c: VideoCounters) {
        self.detector_runs = c.detector_runs;
        self.scene_cuts = c.scene_cuts;
        self.tracks_started = c.tracks_started;
        self.metas_skipped = c.given_skipped;
    }

    /// Frames that came in and have not left, when a flush discards whatever is in the element:
    /// counted as flushed, so that in = out + dropped + flushed.
    pub fn flushed(&mut self) {
        let accounted = self.frames_out + self.frames_dropped + self.frames_late_dropped + self.frames_flushed;
        self.frames_flushed += self.frames_in.saturating_sub(accounted);
    }

    /// Mean processing time per frame so far.
    pub fn mean_time(&self) -> Duration {
        if self.timed_frames > 0 {
            self.total_time / self.timed_frames as u32
        } else {
            Duration::ZERO
        }
    }

    /// The `stats` property. `peak-memory-mib` is the device's peak: on CUDA the caching
    /// allocator's, which counts every element of the process on that device; on the CPU the
    /// process's peak resident size.
    pub fn structure(&self) -> gst::Structure {
        let peak = self.device.and_then(|d| memory::figures(d).ok()).map(|f| memory::mib(f.peak)).unwrap_or(0);
        gst::Structure::builder("application/x-gpenfilter-stats")
            .field("frames-in", self.frames_in)
            .field("frames-out", self.frames_out)
            .field("frames-dropped", self.frames_dropped)
            .field("frames-late-dropped", self.frames_late_dropped)
            .field("frames-passed-through", self.frames_passed_through)
            .field("frames-flushed", self.frames_flushed)
            .field("frames-without-faces", self.frames_without_faces)
            .field("faces-detected", self.faces_detected)
            .field("faces-restored", self.faces_restored)
            .field("faces-grey", self.faces_grey)
            .field("faces-from-metas", self.faces_from_metas)
            .field("metas-skipped", self.metas_skipped)
            .field("detector-runs", self.detector_runs)
            .field("scene-cuts", self.scene_cuts)
            .field("tracks-started", self.tracks_started)
            .field("retries", self.retries)
            .field("generator-batches", self.generator_runs.batches)
            .field("generator-faces", self.generator_runs.faces)
            .field("generator-ms", self.generator_runs.time.as_secs_f64() * 1e3)
            .field("frames-overlapped", self.frames_overlapped)
            .field("ahead-wait-ms", self.ahead_wait.as_secs_f64() * 1e3)
            // NaN until a pair of consecutive frames with pasted faces was measured.
            .field("flicker-amplification", self.flicker.amplification().unwrap_or(f64::NAN))
            .field("flicker-pairs", self.flicker.pairs)
            .field("plan", self.plan.map(|p| p.to_string()).unwrap_or_default())
            .field("peak-memory-mib", peak)
            .field("mean-ms", self.mean_time().as_secs_f64() * 1e3)
            .field("worst-ms", self.worst_time.as_secs_f64() * 1e3)
            .build()
    }

    /// The statistics as a `gpenfilter-stats` element message; `last` marks the one sent at EOS.
    pub fn message_structure(&self, last: bool) -> gst::Structure {
        let mut b = gst::Structure::builder("gpenfilter-stats").field("eos", last);
        for (name, value) in self.structure().iter() {
            b = b.field(name.as_str(), value.clone());
        }
        b.build()
    }

    /// The text of a WARNING message for the memory policy's drop of a frame (already counted,
    /// for `reason`), or None while the last one is under [`DROP_WARNING_INTERVAL`] old: the
    /// first drop is told at once, later ones at most every few seconds, with their count.
    pub fn drop_warning(&mut self, reason: &str, now: Instant) -> Option<String> {
        let total = self.frames_dropped;
        let since = match self.drop_warned {
            Some((at, _)) if now.saturating_duration_since(at) < DROP_WARNING_INTERVAL => return None,
            Some((_, then)) => total - then,
            None => total,
        };
        self.drop_warned = Some((now, total));
        Some(format!(
            "{since} frame(s) dropped by the memory policy ({total} in all, of {} in): {reason}; the output has fewer \
             frames than the input. Set a larger vram-budget, a smaller size, fp16=true, or memory-policy=passthrough \
             to keep every frame",
            self.frames_in
        ))
    }

    /// `(processed, dropped)` for a QoS message: late and policy drops together.
    pub fn qos_counts(&self) -> (u64, u64) {
        let dropped = self.frames_dropped + self.frames_late_dropped;
        (self.frames_in.saturating_sub(dropped), dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_once_each() {
        let plan = Plan { size: 512, half: false, face_batch: 4, tile: None, parse: false };
        let mut s = Stats { frames_in: 6, ..Default::default() };
        let ms = Duration::from_millis;
        s.record(&Outcome::NoFaces, ms(10));
        s.record(&Outcome::Restored { faces: 3, plan, retried: false }, ms(30));
        s.record(&Outcome::Restored { faces: 2, plan, retried: true }, ms(50));
        s.record(&Outcome::Dropped { reason: "x".into() }, ms(5));
        s.record(&Outcome::PassedThrough { reason: "y".into() }, ms(5));
        assert_eq!((s.frames_without_faces, s.faces_restored, s.retries, s.frames_dropped, s.frames_passed_through), (1, 5, 1, 1, 1));
        assert_eq!(s.mean_time(), ms(20));
        assert_eq!(s.worst_time, ms(50));
        s.frames_late_dropped = 1;
        assert_eq!(s.qos_counts(), (4, 2));
        // Four frames went out; of the six in, one was dropped by the policy and one late: none
        // is left to count as flushed.
        s.frames_out = 4;
        s.flushed();
        assert_eq!(s.frames_flushed, 0);
        s.frames_in += 2;
        s.flushed();
        assert_eq!(s.frames_flushed, 2);
    }

    #[test]
    fn drops_are_warned_once_then_at_most_every_few_seconds() {
        let t0 = Instant::now();
        let mut s = Stats { frames_in: 10, ..Default::default() };
        let drop = |s: &mut Stats, at: Duration| {
            s.frames_dropped += 1;
            s.drop_warning("no room", t0 + at)
        };
        let first = drop(&mut s, Duration::ZERO).expect("the first drop is told at once");
        assert!(first.starts_with("1 frame(s) dropped") && first.contains("no room"), "{first}");
        assert_eq!(drop(&mut s, Duration::from_secs(1)), None);
        assert_eq!(drop(&mut s, Duration::from_secs(4)), None);
        let later = drop(&mut s, DROP_WARNING_INTERVAL).expect("told again after the interval");
        assert!(later.starts_with("3 frame(s) dropped") && later.contains("4 in all"), "{later}");
        assert_eq!(drop(&mut s, DROP_WARNING_INTERVAL + Duration::from_secs(1)), None);
    }

    #[test]
    fn the_structure_and_message_carry_every_counter() {
        gst::init().unwrap();
        let s = Stats {
            frames_in: 3,
            plan: Some(Plan { size: 256, half: true, face_batch: 2, tile: None, parse: false }),
            device: Some(tch::Device::Cpu),
            ..Default::default()
        };
        let st = s.structure();
        assert_eq!(st.get::<u64>("frames-in").unwrap(), 3);
        assert!(st.get::<f64>("flicker-amplification").unwrap().is_nan(), "not measured yet");
        let s = Stats { flicker: Flicker { output_change: 3.0, input_change: 2.0, weight: 9.0, pairs: 4 }, ..s };
        let st = s.structure();
        assert_eq!((st.get::<f64>("flicker-amplification").unwrap(), st.get::<u64>("flicker-pairs").unwrap()), (1.5, 4));
        assert_eq!(st.get::<String>("plan").unwrap(), "size=256 fp16=true face-batch=2");
        assert!(st.get::<u64>("peak-memory-mib").unwrap() > 0, "the CPU's peak resident size");
        let m = s.message_structure(true);
        assert_eq!(m.name(), "gpenfilter-stats");
        assert!(m.get::<bool>("eos").unwrap());
        assert_eq!(m.n_fields(), st.n_fields() + 1);
    }
}
