//! The generator's batches ahead on a thread of their own, so that the caller goes on beginning
//! (uploading, detecting, aligning) the next frames while a batch runs. One batch at a time:
//! [`AheadWorker::submit`] takes a job ([`Restorer::prepare_ahead`](super::Restorer::prepare_ahead))
//! only when none is in flight, and its result waits, in a channel of one, until it is taken
//! ([`poll`](AheadWorker::poll), [`wait`](AheadWorker::wait)) and attached
//! ([`Restorer::attach_ahead`](super::Restorer::attach_ahead)).
//!
//! The job holds everything its forward needs (the model is shared through an `Arc`, so a plan
//! that changes meanwhile does not free it under the forward); errors, out of memory included,
//! come back in the result. Dropping the worker waits for the batch in flight, if any: libtorch
//! cannot stop a forward half-way.
//!
//! CUDA: the thread runs on the device of the job's tensors (libtorch's operators set it from
//! their inputs). libtorch's current stream is per thread; nothing here sets one, so both threads
//! use the device's default stream, on which the worker's forward is ordered after the caller's
//! uploads and crops, and the caller's paste after the forward. Whoever sets a stream on the
//! caller's thread must set the same one here.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{AheadDone, AheadJob};
use crate::Error;

/// How often a wait looks whether it was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(10);

/// A thread that runs batches ahead, one at a time.
pub struct AheadWorker {
    jobs: Option<SyncSender<AheadJob>>,
    done: Receiver<AheadDone>,
    thread: Option<JoinHandle<()>>,
    /// The batch submitted and not taken back yet.
    in_flight: Option<u64>,
    /// Whether the thread is running a forward now.
    running: Arc<AtomicBool>,
}

impl AheadWorker {
    /// Starts the thread. It runs forwards with as many intra-op threads as the caller's.
    pub fn spawn() -> Result<Self, Error> {
        let (jobs, queue) = sync_channel::<AheadJob>(1);
        let (results, done) = sync_channel::<AheadDone>(1);
        let running = Arc::new(AtomicBool::new(false));
        let threads = tch::get_num_threads();
        let busy = running.clone();
        let thread = std::thread::Builder::new()
            .name("gpen-ahead".into())
            .spawn(move || {
                if threads > 0 {
                    tch::set_num_threads(threads);
                }
                for job in queue {
                    let id = job.id();
                    busy.store(true, Ordering::Release);
                    let result = catch_unwind(AssertUnwindSafe(|| job.run()))
                        .unwrap_or_else(|_| AheadDone::failed(id, Error::Frame("the generator's forward panicked".into())));
                    busy.store(false, Ordering::Release);
                    if results.send(result).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Frame(format!("cannot start the generator's worker thread: {e}")))?;
        Ok(AheadWorker { jobs: Some(jobs), done, thread: Some(thread), in_flight: None, running })
    }

    /// The batch submitted and not taken back yet, if any.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight
    }

    /// Whether the thread is running a forward at this moment.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Hands `job` to the thread; gives it back when a batch is in flight already, or when the
    /// thread is gone (the caller then runs it itself).
    pub fn submit(&mut self, job: AheadJob) -> Result<(), Box<AheadJob>> {
        let Some(jobs) = self.jobs.as_ref().filter(|_| self.in_flight.is_none()) else { return Err(Box::new(job)) };
        let id = job.id();
        // The thread is idle (its last result was taken): the queue of one has room.
        jobs.send(job).map_err(|e| Box::new(e.0))?;
        self.in_flight = Some(id);
        Ok(())
    }

    /// The batch in flight, if it is back.
    pub fn poll(&mut self) -> Option<AheadDone> {
        let id = self.in_flight?;
        match self.done.try_recv() {
            Ok(done) => self.took(done),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => self.took(AheadDone::failed(id, gone())),
        }
    }

    /// Waits for the batch in flight (`None` when there is none), looking every few
    /// milliseconds whether `cancelled` says to stop waiting (a flush): then `None`, the batch
    /// still in flight.
    pub fn wait(&mut self, cancelled: &dyn Fn() -> bool) -> Option<AheadDone> {
        let id = self.in_flight?;
        loop {
            match self.done.recv_timeout(CANCEL_CHECK) {
                Ok(done) => return self.took(done),
                Err(RecvTimeoutError::Timeout) if cancelled() => return None,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.took(AheadDone::failed(id, gone())),
            }
        }
    }

    fn took(&mut self, done: AheadDone) -> Option<AheadDone> {
        self.in_flight = None;
        Some(done)
    }
}

fn gone() -> Error {
    Error::Frame("the generator's worker thread is gone".into())
}

impl Drop for AheadWorker {
    /// Ends the thread once the batch in flight, if any, is done.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
