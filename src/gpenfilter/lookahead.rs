//! Frames held back for `batch-latency`: each frame is analysed as it comes in (its faces
//! found and followed along tracks, in stream order) and waits until `batch-latency` frames came
//! after it; then the generator restores its faces in one batch with the faces of the frames
//! behind it ([`Restorer::restore_ahead`]), and it goes through BaseTransform's usual path
//! (QoS, output buffer, transform, metas) as if it had just arrived.
//!
//! A serialized event (EOS, new caps, a new segment, a gap) first lets every held frame out; a
//! flush drops them (counted as flushed). With `batch-latency=0` nothing is held: a frame is
//! analysed in `before_transform` and finished at once, as it always was.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_transform::GenerateOutputSuccess as G;
use gst_base::subclass::prelude::*;

use super::caps::{frame_interval, packed_layout};
use super::imp::{Described, FrameTimes, GpenFilter, CAT};
use crate::restorer::worker::AheadWorker;
use crate::restorer::{Detections, FrameOutput, Outcome, Restorer};
use crate::Error;

/// A frame analysed, waiting for its transform.
pub struct Analysis {
    /// The frame's faces, or why they could not be found; `None` when the buffer does not hold
    /// the frame its caps describe (it passes through, counted and said).
    pub(super) analysed: Option<Result<Detections, Error>>,
    described: Option<Described>,
    /// Time spent on the frame so far (analysis, and the batch it started or waited for).
    pub(super) took: Duration,
}

/// A frame held back, as it came in.
pub struct Held {
    buffer: gst::Buffer,
    discont: bool,
    pub(super) analysis: Analysis,
}

/// The held frames of a stream.
#[derive(Default)]
pub struct Hold {
    pub(super) frames: VecDeque<Held>,
    /// Runs the generator's batches ahead while frames are analysed (`overlap`, see
    /// [`overlap`](super::overlap)); without it they run here, when a frame leaves.
    pub(super) worker: Option<AheadWorker>,
}

impl Hold {
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops every held frame (a flush); returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.frames.len();
        self.frames.clear();
        n
    }

    /// Restores ahead the faces of the oldest frame with those of the frames behind it; the
    /// time it took goes to the oldest frame.
    fn restore_ahead(&mut self, restorer: &Restorer) -> Result<usize, Error> {
        let started = Instant::now();
        let detections = self.frames.iter_mut().filter_map(|h| h.analysis.analysed.as_mut().and_then(|a| a.as_mut().ok()));
        let faces = restorer.restore_ahead(detections)?;
        if let Some(first) = self.frames.front_mut() {
            first.analysis.took += started.elapsed();
        }
        Ok(faces)
    }
}

impl GpenFilter {
    /// The frame `inbuf` analysed: live settings taken up, its faces found (or given) and
    /// followed, described in the statistics and messages. `None` before `start()`.
    pub(super) fn analyse(&self, inbuf: &gst::BufferRef) -> Option<Analysis> {
        let started = Instant::now();
        let (post_faces, live, faces_from, factor) = {
            let s = self.settings.lock().unwrap();
            (s.post_faces, self.live_changed.swap(false, Ordering::AcqRel).then_some(s.live), s.faces_from, s.upscale as u32)
        };
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut()?;
        if let Some(live) = live {
            // The ranges of the properties keep these valid; a failure would leave the old ones.
            if let Err(e) = state.restorer.set_live(live) {
                gst::warning!(CAT, imp = self, "live settings not applied: {e}");
            }
        }
        let dt = frame_interval(state.last_pts, inbuf.pts(), state.info.as_ref());
        state.last_pts = inbuf.pts();
        if let Some(d) = inbuf.duration() {
            state.last_duration = Some(d);
        }
        let analysed = match state.info.as_ref() {
            None => Err(Error::Frame("no caps were negotiated before the first frame".into())),
            Some(info) => match gst_video::VideoFrameRef::from_buffer_ref_readable(inbuf, info) {
                Err(_) => {
                    // A buffer that does not hold the frame its caps describe (too small: a
                    // wrong size or stride upstream) goes out as it came, counted and said.
                    let (width, height, need) = (info.width(), info.height(), info.size());
                    drop(guard);
                    self.stats.lock().unwrap().frames_passed_through += 1;
                    gst::element_imp_warning!(
                        self,
                        gst::StreamError::Format,
                        (
                            "Frame {:?} passed through unrestored: its buffer has {} bytes, but a {width}x{height} frame \
                             as the caps describe needs {need}",
                            inbuf.pts(),
                            inbuf.size()
                        ),
                        ["the element upstream must send buffers laid out as its caps say (rows padded to 4 bytes for RGB); \
                          a videoconvert before gpenfilter repacks them"]
                    );
                    return Some(Analysis { analysed: None, described: None, took: started.elapsed() });
                }
                Ok(frame) => match frame.plane_data(0) {
                    Ok(data) => {
                        let source = self.face_source(faces_from, inbuf, (info.width(), info.height()));
                        state.restorer.begin_from(data, &packed_layout(&frame), dt, source)
                    }
                    Err(e) => Err(Error::Frame(e.to_string())),
                },
            },
        };
        let mut described = None;
        if let Ok(d) = &analysed {
            gst::log!(CAT, imp = self, "{} face(s) in {:?}", d.faces.len(), inbuf.pts());
            let mut stats = self.stats.lock().unwrap();
            stats.faces_detected += d.faces.len() as u64;
            stats.set_video(state.restorer.video_counters());
            drop(stats);
            if post_faces {
                self.post_faces(inbuf, d);
            }
            let size = state.info.as_ref().map_or((0, 0), |i| (i.width() * factor, i.height() * factor));
            described = Some(Described { faces: d.faces.clone(), ids: d.ids.clone(), restored: false, size });
        }
        Some(Analysis { analysed: Some(analysed), described, took: started.elapsed() })
    }

    /// Where an analysed frame goes: a frame left unchanged is finished here and passed through,
    /// neither copied nor written; the others (and errors, to be reported) go to the transform.
    /// With restore=false every frame the policy does not drop is left unchanged.
    pub(super) fn route(&self, times: FrameTimes, analysis: Analysis) {
        let restore = self.settings.lock().unwrap().restore;
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else { return };
        let Some(analysed) = analysis.analysed else {
            state.described = None;
            self.obj().set_passthrough(true);
            return;
        };
        state.started = Some(Instant::now().checked_sub(analysis.took).unwrap_or_else(Instant::now));
        state.described = analysis.described;
        let output = analysed.as_ref().ok().map(|d| state.restorer.output_of(d));
        let unchanged = output == Some(FrameOutput::Unchanged) || (!restore && output == Some(FrameOutput::Written));
        self.obj().set_passthrough(unchanged);
        match analysed {
            Ok(d) if unchanged => {
                let started = state.started.take().unwrap_or_else(Instant::now);
                let outcome = match output {
                    // restore=false: faces found and described, none restored.
                    Some(FrameOutput::Written) if d.faces.is_empty() => Ok(Outcome::NoFaces),
                    Some(FrameOutput::Written) => Ok(Outcome::Restored { faces: 0, plan: state.restorer.plan(), retried: false }),
                    _ => state.restorer.finish(d, None),
                };
                let plan = state.restorer.plan();
                drop(guard);
                // Nothing is written, so nothing can fail; an error is still reported if it does.
                let _ = self.conclude(outcome, plan, times, started);
            }
            analysed => state.pending = Some(analysed),
        }
    }

    /// `batch-latency` > 0: the frame is analysed now and held. With `overlap`, a batch ahead
    /// that is ready then starts on the worker.
    pub(super) fn hold(&self, discont: bool, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let overlapped = self.state.lock().unwrap().as_ref().is_some_and(|s| s.hold.forward_running());
        let Some(analysis) = self.analyse(&buffer) else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Frame received before the model was loaded"));
            return Err(gst::FlowError::Flushing);
        };
        if overlapped {
            self.stats.lock().unwrap().frames_overlapped += 1;
        }
        let restore = self.settings.lock().unwrap().restore;
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.hold.frames.push_back(Held { buffer, discont, analysis });
            if restore && state.hold.overlaps() {
                let warn = &mut |e| gst::warning!(CAT, imp = self, "faces not restored ahead: {e}");
                state.hold.collect(&state.restorer, warn);
                state.hold.dispatch(&state.restorer, state.batch_latency, false, warn);
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// The oldest held frame out, when more than `batch-latency` frames are held (or any, when
    /// `drain`): its faces restored ahead with those behind it if not yet (with `overlap`: back
    /// from the worker, waited for), then submitted to BaseTransform (QoS may drop it) and
    /// transformed. A flush that comes while it waits for the worker: `Flushing`, the frame
    /// still held (the flush drops it).
    pub(super) fn release(&self, drain: bool) -> Result<G, gst::FlowError> {
        let restore = self.settings.lock().unwrap().restore;
        let held = {
            let mut guard = self.state.lock().unwrap();
            let Some(state) = guard.as_mut() else { return Ok(G::NoOutput) };
            if state.hold.is_empty() || (!drain && state.hold.len() <= state.batch_latency) {
                return Ok(G::NoOutput);
            }
            let warn = &mut |e| gst::warning!(CAT, imp = self, "faces not restored ahead: {e}");
            if restore && state.hold.overlaps() {
                let cancelled = || self.flushing.load(Ordering::Acquire);
                let Some(waited) = state.hold.settle_oldest(&state.restorer, &cancelled, warn) else {
                    gst::debug!(CAT, imp = self, "flushing while waiting for the generator's worker");
                    return Err(gst::FlowError::Flushing);
                };
                if let Some(first) = state.hold.frames.front_mut() {
                    first.analysis.took += waited;
                }
                self.stats.lock().unwrap().ahead_wait += waited;
            } else if restore {
                if let Err(e) = state.hold.restore_ahead(&state.restorer) {
                    // The frames are then restored one by one, which reports the error if it recurs.
                    warn(e);
                }
            }
            let Some(held) = state.hold.frames.pop_front() else { return Ok(G::NoOutput) };
            // The next batch runs on the worker while this frame is finished.
            if restore && state.hold.overlaps() {
                state.hold.dispatch(&state.restorer, state.batch_latency, drain, warn);
            }
            held
        };
        let Held { buffer, discont, analysis } = held;
        let times = FrameTimes::of(&buffer);
        gst::log!(CAT, imp = self, "releasing {:?}", times.pts);
        match self.parent_submit_input_buffer(discont, buffer) {
            Ok(gst::FlowSuccess::Ok) => {
                self.route(times, analysis);
                self.output()
            }
            Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED) => {
                // Late: BaseTransform's QoS dropped it (and posted its QoS message).
                self.stats.lock().unwrap().frames_late_dropped += 1;
                Ok(G::Dropped)
            }
            Ok(_) => Ok(G::NoOutput),
            Err(e) => Err(e),
        }
    }

    /// Every held frame out, in order, before a serialized event goes downstream.
    pub(super) fn drain(&self) {
        let held = self.state.lock().unwrap().as_ref().map_or(0, |s| s.hold.len());
        if held == 0 {
            return;
        }
        gst::debug!(CAT, imp = self, "draining {held} held frame(s)");
        loop {
            match self.release(true) {
                Ok(G::Buffer(b)) => {
                    if let Err(e) = self.obj().src_pad().push(b) {
                        gst::debug!(CAT, imp = self, "held frames not drained: {e:?}");
                        break;
                    }
                }
                Ok(G::Dropped) => {}
                Ok(G::NoOutput) => return,
                Err(e) => {
                    gst::debug!(CAT, imp = self, "held frames not drained: {e:?}");
                    break;
                }
            }
        }
        // Downstream refused: what is left cannot go out, and counts as flushed.
        self.drop_held("drain stopped");
    }

    /// Drops every held frame (a flush, a stop), counted as flushed.
    pub(super) fn drop_held(&self, why: &str) {
        let dropped = self.state.lock().unwrap().as_mut().map_or(0, |s| s.hold.clear());
        if dropped > 0 {
            gst::info!(CAT, imp = self, "{why}: {dropped} held frame(s) dropped");
            self.stats.lock().unwrap().flushed();
        }
    }

    /// The added latency of held frames: `batch-latency` frame durations.
    pub(super) fn hold_latency(&self) -> gst::ClockTime {
        let guard = self.state.lock().unwrap();
        let Some(state) = guard.as_ref() else { return gst::ClockTime::ZERO };
        let n = state.batch_latency as u64;
        let rate = state.info.as_ref().map(|i| i.fps()).filter(|f| f.numer() > 0 && f.denom() > 0);
        let frame = match (rate, state.last_duration) {
            (Some(f), _) => gst::ClockTime::SECOND.mul_div_floor(f.denom() as u64, f.numer() as u64).unwrap_or(gst::ClockTime::ZERO),
            (None, Some(d)) => d,
            (None, None) => gst::ClockTime::ZERO,
        };
        frame * n
    }
}

/// Whether `event` must let held frames out first: a serialized event other than a flush (which
/// drops them) and tags (which may pass the frames they came with).
pub fn drains(event: &gst::Event) -> bool {
    event.is_serialized() && !matches!(event.type_(), gst::EventType::FlushStop | gst::EventType::Tag)
}
