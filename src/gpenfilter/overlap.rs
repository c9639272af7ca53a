//! `overlap` (on by default): with frames held for `batch-latency`, the generator's batches
//! ahead run on a worker thread of the element ([`AheadWorker`], in the core) while the
//! streaming thread returns and goes on receiving and analysing the next frames (upload,
//! detection, tracking, crops). A batch starts as soon as it is full, or when its first frame
//! must leave; one batch at a time is in flight. A frame that must leave while its faces are in
//! flight waits for them; a flush stops that wait (the batch finishes on the worker and is
//! dropped when it comes back: its frames were flushed), and stopping the element waits for the
//! batch in flight, which libtorch cannot interrupt.
//!
//! The worker lives in the core, which stays GStreamer-free: the element only decides when a
//! batch starts and when to wait, and the core's tests and benchmarks can use it as they are.

use std::time::{Duration, Instant};

use super::lookahead::Hold;
use crate::restorer::worker::AheadWorker;
use crate::restorer::{AheadDone, Detections, Restorer};
use crate::Error;

impl Hold {
    /// Held frames whose batches ahead run on a worker thread; on the streaming thread when
    /// the thread cannot be started (said through `warn`).
    pub fn with_worker(warn: impl FnOnce(Error)) -> Hold {
        match AheadWorker::spawn() {
            Ok(w) => Hold { worker: Some(w), ..Hold::default() },
            Err(e) => {
                warn(e);
                Hold::default()
            }
        }
    }

    /// Whether batches ahead run on a worker thread.
    pub fn overlaps(&self) -> bool {
        self.worker.is_some()
    }

    /// Whether the worker is running a forward at this moment.
    pub fn forward_running(&self) -> bool {
        self.worker.as_ref().is_some_and(AheadWorker::running)
    }

    fn detections(&mut self) -> impl Iterator<Item = &mut Detections> {
        self.frames.iter_mut().filter_map(|h| h.analysis.analysed.as_mut().and_then(|a| a.as_mut().ok()))
    }

    /// Gives a batch that came back its frames (none when they were flushed).
    fn attach(&mut self, restorer: &Restorer, done: AheadDone, warn: &mut dyn FnMut(Error)) {
        if let Err(e) = restorer.attach_ahead(self.detections(), done) {
            // Its frames are then restored one by one, which reports the error if it recurs.
            warn(e);
        }
    }

    /// Takes back the batch in flight if it is done.
    pub fn collect(&mut self, restorer: &Restorer, warn: &mut dyn FnMut(Error)) {
        if let Some(done) = self.worker.as_mut().and_then(AheadWorker::poll) {
            self.attach(restorer, done, warn);
        }
    }

    /// Starts the next batch ahead on the worker, if none is in flight and one is ready: full,
    /// or its first frame has `latency` frames behind it (it must leave next), or `now`.
    /// Returns whether a batch started (or, the worker being gone, ran here).
    pub fn dispatch(&mut self, restorer: &Restorer, latency: usize, now: bool, warn: &mut dyn FnMut(Error)) -> bool {
        if self.worker.as_ref().is_none_or(|w| w.in_flight().is_some()) {
            return false;
        }
        let first = self.frames.iter().position(|h| matches!(&h.analysis.analysed, Some(Ok(d)) if restorer.awaits_ahead(d)));
        let Some(first) = first else { return false };
        let now = now || self.frames.len() - 1 - first >= latency;
        let job = match restorer.prepare_ahead(self.detections(), now, true) {
            Ok(Some(job)) => job,
            Ok(None) => return false,
            Err(e) => {
                warn(e);
                return false;
            }
        };
        let Some(worker) = self.worker.as_mut() else { return false };
        if let Err(job) = worker.submit(job) {
            self.attach(restorer, job.run(), warn);
        }
        true
    }

    /// Before the oldest frame leaves: its faces back from the worker, or their batch started
    /// and waited for when they await one. Returns the time waited, or `None` when `cancelled`
    /// (a flush) stopped the wait.
    pub fn settle_oldest(&mut self, restorer: &Restorer, cancelled: &dyn Fn() -> bool, warn: &mut dyn FnMut(Error)) -> Option<Duration> {
        let mut waited = Duration::ZERO;
        loop {
            let front = self.frames.front().and_then(|h| h.analysis.analysed.as_ref()).and_then(|a| a.as_ref().ok());
            let Some((in_flight, awaits)) = front.map(|d| (d.ahead_in_flight(), restorer.awaits_ahead(d))) else { return Some(waited) };
            let Some(busy) = self.worker.as_ref().map(AheadWorker::in_flight) else { return Some(waited) };
            match (in_flight, busy) {
                (None, _) if !awaits => return Some(waited),
                // Its batch goes now (or it is finished alone, when the batch cannot be made).
                (None, None) if !self.dispatch(restorer, 0, true, warn) => return Some(waited),
                (None, None) => {}
                // A batch that is not the worker's (cannot happen): its frames are restored alone.
                (Some(id), None) => self.attach(restorer, AheadDone::failed(id, Error::Frame("batch ahead lost".into())), warn),
                // Its batch, or one before it (dropped by a flush), is on the worker.
                (_, Some(_)) => {
                    let started = Instant::now();
                    let done = self.worker.as_mut().and_then(|w| w.wait(cancelled));
                    waited += started.elapsed();
                    self.attach(restorer, done?, warn);
                }
            }
        }
    }
}
