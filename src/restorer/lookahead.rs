//! Frames held back so that the generator batches the faces of several: each frame is begun as
//! it comes (its faces found and followed, in stream order) and held with its caller's payload
//! (an element's buffer, a command's or a test's own values) until `latency` frames came after
//! it. Then the faces of the oldest are restored in one batch with those of the frames behind
//! it, and it is given back, in order, to be finished. A drain gives back every frame; a flush
//! drops them.
//!
//! With `overlap`, the batches run on a worker thread ([`AheadWorker`]) while the caller goes on
//! beginning frames: a batch starts as soon as it is full, or when its first frame must leave.
//! One batch at a time is in flight, and only [`Lookahead`] knows which frames are in it. A
//! frame that must leave while its faces are in flight waits for them; a cancelled wait (a
//! flush) leaves the frame held, and a batch whose frames were dropped is discarded when it
//! comes back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::ahead::AheadDone;
use super::batch;
use super::detections::Detections;
use super::engine::Engine;
use super::stream::Stream;
use super::worker::AheadWorker;
use crate::error::Error;

/// A frame in flight from its arrival to its output: the caller's payload, the frame as begun
/// (or why it could not be) until it is finished, and the time spent on it so far.
pub struct Held<P> {
    pub payload: P,
    pub frame: Option<Result<Detections, Error>>,
    /// Its begin, and the batches ahead it started or waited for.
    pub took: Duration,
    /// Numbered as it came into the look-ahead.
    number: u64,
}

impl<P> Held<P> {
    /// A frame begun in `took`, not held (yet).
    pub fn new(payload: P, frame: Result<Detections, Error>, took: Duration) -> Self {
        Held { payload, frame: Some(frame), took, number: 0 }
    }

    /// The frame as begun, when it began and is not finished yet.
    pub fn begun(&self) -> Option<&Detections> {
        self.frame.as_ref().and_then(|f| f.as_ref().ok())
    }

    fn begun_mut(&mut self) -> Option<&mut Detections> {
        self.frame.as_mut().and_then(|f| f.as_mut().ok())
    }

    fn number_and_begun(&mut self) -> Option<(u64, &mut Detections)> {
        let number = self.number;
        self.begun_mut().map(|d| (number, d))
    }
}

/// The batch ahead on the worker: its job and the frames in it.
struct Flight {
    id: u64,
    frames: Vec<u64>,
}

/// What [`Lookahead::release`] gives back.
// Given back once per frame and matched at once: boxing the held frame would cost an allocation
// per frame for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Release<P> {
    /// The oldest frame, its faces restored ahead where they could be: finish it next.
    Ready(Held<P>),
    /// Nothing to give back yet (fewer than `latency` frames behind the oldest).
    NotYet,
    /// The wait for the worker was cancelled; the oldest frame is still held.
    Cancelled,
}

/// The frames of a stream held for batches ahead.
pub struct Lookahead<P> {
    frames: VecDeque<Held<P>>,
    latency: usize,
    worker: Option<AheadWorker>,
    flight: Option<Flight>,
    arrived: u64,
    /// Time spent waiting for the worker's batches.
    waited: Duration,
}

impl<P> Lookahead<P> {
    /// Holds each frame until `latency` frames came after it; with `overlap`, batches run on a
    /// worker thread, or, when it cannot be started (the error says why), here.
    pub fn new(latency: usize, overlap: bool) -> (Self, Option<Error>) {
        let (worker, error) = match overlap.then(AheadWorker::spawn) {
            Some(Ok(w)) => (Some(w), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        (Lookahead { frames: VecDeque::new(), latency, worker, flight: None, arrived: 0, waited: Duration::ZERO }, error)
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn latency(&self) -> usize {
        self.latency
    }

    /// Whether batches run on a worker thread.
    pub fn overlaps(&self) -> bool {
        self.worker.is_some()
    }

    /// Whether the worker is running a forward at this moment.
    pub fn forward_running(&self) -> bool {
        self.worker.as_ref().is_some_and(AheadWorker::running)
    }

    /// Time spent waiting for the worker's batches so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Holds `held`. With overlap, a batch back from the worker is attached, and the next one
    /// starts if it is ready. A batch that could not be made or attached is said to `warn`
    /// (its frames are then restored one by one, which reports the error if it recurs).
    pub fn push(&mut self, engine: &Engine, stream: &Stream, mut held: Held<P>, warn: &mut dyn FnMut(Error)) {
        self.arrived += 1;
        held.number = self.arrived;
        self.frames.push_back(held);
        if self.overlaps() {
            self.collect(warn);
            self.dispatch(engine, stream, false, warn);
        }
    }

    /// The oldest frame, when more than `latency` frames are held (or any, when `drain`): its
    /// faces restored ahead with those behind it if not yet (with overlap: back from the worker,
    /// waited for unless `cancelled` says to stop).
    pub fn release(
        &mut self,
        engine: &Engine,
        stream: &Stream,
        drain: bool,
        cancelled: &dyn Fn() -> bool,
        warn: &mut dyn FnMut(Error),
    ) -> Release<P> {
        if self.frames.is_empty() || (!drain && self.frames.len() <= self.latency) {
            return Release::NotYet;
        }
        let started = Instant::now();
        if self.overlaps() {
            if !self.settle_oldest(engine, stream, cancelled, warn) {
                return Release::Cancelled;
            }
        } else {
            let frames = self.frames.iter_mut().filter_map(Held::begun_mut);
            if let Err(e) = batch::restore_ahead(engine, stream, frames) {
                warn(e);
            }
        }
        let Some(mut held) = self.frames.pop_front() else { return Release::NotYet };
        held.took += started.elapsed();
        // The next batch runs on the worker while this frame is finished.
        if self.overlaps() {
            self.dispatch(engine, stream, drain, warn);
        }
        Release::Ready(held)
    }

    /// Drops every held frame (a flush, a stop); returns how many. A batch in flight is
    /// discarded when it comes back.
    pub fn flush(&mut self) -> usize {
        let n = self.frames.len();
        self.frames.clear();
        n
    }

    /// Starts the next batch ahead on the worker, if none is in flight and one is ready: full,
    /// or its first frame has `latency` frames behind it (it must leave next), or `now`.
    /// Returns whether a batch started (or, the worker being gone, ran here).
    fn dispatch(&mut self, engine: &Engine, stream: &Stream, now: bool, warn: &mut dyn FnMut(Error)) -> bool {
        if self.flight.is_some() || self.worker.is_none() {
            return false;
        }
        let Some(first) = self.frames.iter().position(|h| h.begun().is_some_and(|d| stream.awaits_ahead(d))) else { return false };
        let now = now || self.frames.len() - 1 - first >= self.latency;
        let mut open: Vec<(u64, &mut Detections)> = self.frames.iter_mut().filter_map(|h| h.number_and_begun()).collect();
        let (job, members) = match batch::prepare(engine, stream, open.iter_mut().map(|(_, d)| &mut **d), now, true) {
            Ok(Some(prepared)) => prepared,
            Ok(None) => return false,
            Err(e) => {
                warn(e);
                return false;
            }
        };
        let frames = members.iter().map(|&i| open[i].0).collect();
        drop(open);
        self.flight = Some(Flight { id: job.id(), frames });
        let Some(worker) = self.worker.as_ref() else { return false };
        if let Err(job) = worker.submit(job) {
            let done = job.run();
            self.attach(done, warn);
        }
        true
    }

    /// Takes back the batch in flight if it is done.
    fn collect(&mut self, warn: &mut dyn FnMut(Error)) {
        if self.flight.is_none() {
            return;
        }
        if let Some(back) = self.worker.as_ref().and_then(AheadWorker::poll) {
            self.land(back, warn);
        }
    }

    /// Waits for the batch in flight; false when `cancelled` stopped the wait.
    fn wait(&mut self, cancelled: &dyn Fn() -> bool, warn: &mut dyn FnMut(Error)) -> bool {
        let started = Instant::now();
        let back = self.worker.as_ref().and_then(|w| w.wait(cancelled));
        self.waited += started.elapsed();
        match back {
            Some(back) => {
                self.land(back, warn);
                true
            }
            None => false,
        }
    }

    /// A batch back from the worker, or the worker's loss, given to its frames.
    fn land(&mut self, back: Result<AheadDone, Error>, warn: &mut dyn FnMut(Error)) {
        let Some(flight) = self.flight.as_ref() else { return };
        let done = back.unwrap_or_else(|e| AheadDone::failed(flight.id, e));
        self.attach(done, warn);
    }

    /// Gives the batch in flight its frames (none when they were dropped) and ends the flight.
    fn attach(&mut self, done: AheadDone, warn: &mut dyn FnMut(Error)) {
        let Some(flight) = self.flight.take() else { return };
        let mine = self.frames.iter_mut().filter(|h| flight.frames.contains(&h.number)).filter_map(Held::begun_mut);
        if let Err(e) = batch::attach(mine, done) {
            warn(e);
        }
    }

    /// Before the oldest frame leaves: its faces back from the worker, or their batch started
    /// and waited for when they await one. False when `cancelled` stopped a wait.
    fn settle_oldest(&mut self, engine: &Engine, stream: &Stream, cancelled: &dyn Fn() -> bool, warn: &mut dyn FnMut(Error)) -> bool {
        loop {
            let Some(front) = self.frames.front() else { return true };
            let awaits = front.begun().is_some_and(|d| stream.awaits_ahead(d));
            match &self.flight {
                // Its batch is on the worker, or, when it awaits one, an older batch (of frames
                // a flush dropped) that holds the worker.
                Some(f) if f.frames.contains(&front.number) || awaits => {
                    if !self.wait(cancelled, warn) {
                        return false;
                    }
                }
                _ if !awaits => return true,
                // Its batch goes now (or it is finished alone, when the batch cannot be made).
                _ => {
                    if !self.dispatch(engine, stream, true, warn) {
                        return true;
                    }
                }
            }
        }
    }
}
