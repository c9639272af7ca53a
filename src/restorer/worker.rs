//! The generator's batches ahead on a thread of their own, so that the caller goes on beginning
//! (uploading, detecting, aligning) the next frames while a batch runs. The thread runs the
//! jobs it is given, one after the other; its caller ([`Lookahead`](super::Lookahead)) gives it
//! one at a time and keeps what is in flight.
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

use super::ahead::{AheadDone, AheadJob};
use crate::error::Error;

/// How often a wait looks whether it was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(10);

/// A thread that runs batches ahead.
pub struct AheadWorker {
    jobs: Option<SyncSender<AheadJob>>,
    done: Receiver<AheadDone>,
    thread: Option<JoinHandle<()>>,
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
                    let result =
                        catch_unwind(AssertUnwindSafe(|| job.run())).unwrap_or_else(|_| AheadDone::failed(id, Error::ForwardPanicked));
                    busy.store(false, Ordering::Release);
                    if results.send(result).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::WorkerLost(format!("cannot be started: {e}")))?;
        Ok(AheadWorker { jobs: Some(jobs), done, thread: Some(thread), running })
    }

    /// Whether the thread is running a forward at this moment.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Hands `job` to the thread, whose last result was taken; gives it back when the thread is
    /// gone (the caller then runs it itself).
    pub fn submit(&self, job: AheadJob) -> Result<(), Box<AheadJob>> {
        let Some(jobs) = self.jobs.as_ref() else { return Err(Box::new(job)) };
        jobs.send(job).map_err(|e| Box::new(e.0))
    }

    /// The batch submitted, if it is back (`Some(Err)`: the thread is gone).
    pub fn poll(&self) -> Option<Result<AheadDone, Error>> {
        match self.done.try_recv() {
            Ok(done) => Some(Ok(done)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(gone())),
        }
    }

    /// Waits for the batch submitted, looking every few milliseconds whether `cancelled` says
    /// to stop waiting (a flush): then `None`, the batch still in flight.
    pub fn wait(&self, cancelled: &dyn Fn() -> bool) -> Option<Result<AheadDone, Error>> {
        loop {
            match self.done.recv_timeout(CANCEL_CHECK) {
                Ok(done) => return Some(Ok(done)),
                Err(RecvTimeoutError::Timeout) if cancelled() => return None,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Some(Err(gone())),
            }
        }
    }
}

fn gone() -> Error {
    Error::WorkerLost("is gone".into())
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
