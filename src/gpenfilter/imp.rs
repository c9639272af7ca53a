//! The `gpenfilter` element: the glue between GStreamer and a [`Restorer`]. All the
//! restoration work, and every decision about a frame, lives in the GStreamer-free core; here
//! outcomes become flow returns, statistics and messages.
//!
//! Whole frames are analysed in `before_transform` ([`Restorer::begin`]), on the read-only
//! input: a frame the core leaves unchanged (no faces, or passed through by the memory policy)
//! is then passed through untouched (BaseTransform neither copies nor maps it writable); the
//! others are finished ([`Restorer::finish`]) in `transform_frame_ip`, or in `transform_frame`
//! into a larger output when upscaling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::caps::{packed_layout, scale_caps};
use super::lookahead::{self, Hold};
use super::properties::{self, property_of, Settings};
use super::stats::Stats;
use super::{meta, FacesFrom, Upscale};
use crate::detect::Face;
use crate::memory;
use crate::restorer::{Detections, DeviceSpec, FaceSource, Outcome, Restorer};
use crate::{Error, Setting};

pub(super) static CAT: Lazy<gst::DebugCategory> =
    Lazy::new(|| gst::DebugCategory::new("gpenfilter", gst::DebugColorFlags::empty(), Some("GPEN face restoration")));

/// Exists between `start()` and `stop()`.
pub(super) struct State {
    pub(super) restorer: Restorer,
    pub(super) info: Option<gst_video::VideoInfo>,
    /// The frame between `before_transform` and the transform: analysed, or why it could not be.
    pub(super) pending: Option<Result<Detections, Error>>,
    /// When the work on the current buffer began.
    pub(super) started: Option<Instant>,
    /// Processing time last reported to the latency query.
    reported_latency: Duration,
    last_post: Option<Instant>,
    /// Timestamp of the previous frame, for the time between frames that tracking needs.
    pub(super) last_pts: Option<gst::ClockTime>,
    /// Duration of the last frame that had one, for the latency query without a frame rate.
    pub(super) last_duration: Option<gst::ClockTime>,
    /// The faces of the frame in flight, for the metas of its output.
    pub(super) described: Option<Described>,
    /// Frames a frame waits for before it is restored (`batch-latency`).
    pub(super) batch_latency: usize,
    /// Frames held back for `batch-latency`.
    pub(super) hold: Hold,
}

/// A frame's faces as its output metas describe them.
pub(super) struct Described {
    /// In input pixels.
    pub(super) faces: Vec<Face>,
    pub(super) ids: Vec<u64>,
    pub(super) restored: bool,
    /// The output frame's size.
    pub(super) size: (u32, u32),
}

#[derive(Default)]
pub struct GpenFilter {
    pub(super) settings: Mutex<Settings>,
    /// A live property changed since the settings were last pushed to the restorer.
    pub(super) live_changed: AtomicBool,
    pub(super) state: Mutex<Option<State>>,
    pub(super) stats: Arc<Mutex<Stats>>,
    /// Between a flush's start and stop (and from stopping on): a wait for the generator's
    /// worker gives up.
    pub(super) flushing: AtomicBool,
}

/// The timestamps of a frame, kept for the messages about it.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameTimes {
    pub(super) pts: Option<gst::ClockTime>,
    duration: Option<gst::ClockTime>,
}

impl FrameTimes {
    pub(super) fn of(buffer: &gst::BufferRef) -> Self {
        FrameTimes { pts: buffer.pts(), duration: buffer.duration() }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for GpenFilter {
    const NAME: &'static str = "GstGpenFilter";
    type Type = super::GpenFilter;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for GpenFilter {
    fn constructed(&self) {
        self.parent_constructed();
        // Frames out are counted where they leave, whatever path they took.
        let stats = self.stats.clone();
        self.obj().static_pad("src").expect("src pad").add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            stats.lock().unwrap().frames_out += 1;
            gst::PadProbeReturn::Ok
        });
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: Lazy<Vec<glib::ParamSpec>> = Lazy::new(properties::specs);
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        if properties::refused_while_running(&*self.obj(), pspec) {
            return;
        }
        self.settings.lock().unwrap().set(pspec.name(), value);
        if properties::is_live(pspec.name()) {
            self.live_changed.store(true, Ordering::Release);
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats.lock().unwrap().structure().to_value();
        }
        self.settings.lock().unwrap().get(pspec.name())
    }
}

impl GstObjectImpl for GpenFilter {}

impl ElementImpl for GpenFilter {
    fn change_state(&self, transition: gst::StateChange) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        // The pads deactivate next and wait for the streaming thread, which may be waiting for
        // the generator's worker: it gives up.
        if transition == gst::StateChange::PausedToReady {
            self.flushing.store(true, Ordering::Release);
        }
        self.parent_change_state(transition)
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "GPEN face restoration",
                "Filter/Effect/Video",
                "Restores faces with GPEN (GAN Prior Embedded Network) on libtorch",
                "gst-gpen developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: Lazy<Vec<gst::PadTemplate>> = Lazy::new(|| {
            use gst_video::VideoFormat as F;
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list([F::Rgb, F::Bgr, F::Rgbx, F::Bgrx, F::Xrgb, F::Xbgr, F::Rgba, F::Bgra, F::Argb, F::Abgr])
                .build();
            vec![
                gst::PadTemplate::new("src", gst::PadDirection::Src, gst::PadPresence::Always, &caps).unwrap(),
                gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &caps).unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

/// A set-up failure as a GStreamer error: the domain that fits, worded with the property to
/// change where a setting is at fault.
fn start_error(e: &Error) -> gst::ErrorMessage {
    use crate::checkpoint::CheckpointError as C;
    let named = |setting: Setting| format!("{setting} (property {})", property_of(setting));
    if e.is_out_of_memory() && !matches!(e, Error::OutOfMemory(_)) {
        return gst::error_msg!(
            gst::ResourceError::NoSpaceLeft,
            ("Out of memory while loading the models: {}", e),
            ["set a smaller size, fp16=true, or free device memory; {}", named(Setting::Budget)]
        );
    }
    match e {
        Error::InvalidSetting { setting, problem, hint } => {
            gst::error_msg!(gst::LibraryError::Settings, ("{}: {}; {}", named(*setting), problem, hint))
        }
        Error::FileNotFound { setting, path, problem, hint } => {
            gst::error_msg!(gst::ResourceError::NotFound, ("{}: {}: {}; {}", named(*setting), path.display(), problem, hint))
        }
        Error::Device { device, problem, hint } => {
            gst::error_msg!(gst::ResourceError::NotFound, ("{}: `{}`: {}; {}", named(Setting::Device), device, problem, hint))
        }
        Error::Checkpoint(C::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            gst::error_msg!(gst::ResourceError::NotFound, ("{}", e))
        }
        Error::Checkpoint(C::Io { .. }) => gst::error_msg!(gst::ResourceError::OpenRead, ("{}", e)),
        Error::Checkpoint(_) | Error::ModelMismatch { .. } | Error::UnsafeCheckpoint { .. } => {
            gst::error_msg!(gst::ResourceError::Read, ("{}", e))
        }
        Error::Torch(_) | Error::Accelerator(_) | Error::Frame(_) => gst::error_msg!(gst::LibraryError::Init, ("{}", e)),
        Error::OutOfMemory(_) => gst::error_msg!(gst::ResourceError::NoSpaceLeft, ("{}", e), ["{}", named(Setting::Budget)]),
    }
}

impl BaseTransformImpl for GpenFilter {
    const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::Both;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        // Live changes from here on are pushed with the first frame (the load takes seconds).
        self.live_changed.store(false, Ordering::Release);
        let settings = self.settings.lock().unwrap().clone();
        if !settings.restore && settings.upscale != Upscale::X1 {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ("restore=false passes frames through untouched, so they cannot be upscaled"),
                ["set upscale=1, or restore=true"]
            ));
        }
        let fail_every = fail_every(&self.obj().name());
        let core = settings.to_restorer(fail_every).map_err(|e| start_error(&e))?;
        let started = Instant::now();
        let restorer = Restorer::new(&core).map_err(|e| start_error(&e))?;
        let model = restorer.model();
        gst::info!(
            CAT,
            imp = self,
            "loaded {} from {} on {:?} ({:?}), detector {:?}, in {:.2?}",
            model.config().describe(),
            restorer.model_path().display(),
            model.device(),
            model.kind(),
            restorer.detector(),
            started.elapsed()
        );
        if !core.aligned {
            match restorer.parse_model() {
                Some(p) => gst::info!(CAT, imp = self, "faces are pasted through face-parsing masks ({})", p.display()),
                None => gst::info!(CAT, imp = self, "faces are pasted through GPEN's soft rectangle (mask {:?})", core.faces.mask.mode),
            }
        }
        if fail_every > 0 {
            gst::warning!(CAT, imp = self, "fault injection: every {fail_every}th generator forward fails as out of memory");
        }
        #[cfg(feature = "fault-injection")]
        match memory::slow_forward_from_env(&self.obj().name()) {
            0 => {}
            ms => {
                gst::warning!(CAT, imp = self, "fault injection: every generator forward takes {ms} ms more");
                restorer.slow_forwards(ms);
            }
        }
        // device=auto on a machine with an NVIDIA driver, yet on the CPU: say why, loudly (bf16 on
        // the CPU takes seconds a frame where the user expected a GPU).
        if core.device == DeviceSpec::Auto && restorer.device() == tch::Device::Cpu {
            if let Some(reason) = crate::sys::cuda_unusable_reason() {
                gst::element_imp_warning!(
                    self,
                    gst::LibraryError::Init,
                    ("An NVIDIA driver is installed but CUDA cannot be used, so the models run on the CPU: {}", reason),
                    ["update the NVIDIA driver for this libtorch's CUDA, or set device=cpu to silence this warning"]
                );
            }
        }
        *self.stats.lock().unwrap() = Stats { plan: Some(restorer.plan()), device: Some(restorer.device()), ..Stats::default() };
        gst::info!(CAT, imp = self, "memory budget {} MiB, plan {}", memory::mib(restorer.budget()), restorer.plan());
        *self.state.lock().unwrap() = Some(State {
            restorer,
            info: None,
            pending: None,
            started: None,
            reported_latency: Duration::ZERO,
            last_post: None,
            last_pts: None,
            last_duration: None,
            described: None,
            batch_latency: settings.batch_latency as usize,
            hold: match settings.overlap && settings.batch_latency > 0 {
                true => Hold::with_worker(|e| gst::warning!(CAT, imp = self, "batches ahead run on the streaming thread: {e}")),
                false => Hold::default(),
            },
        });
        self.flushing.store(false, Ordering::Release);
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        // Held frames go out before what follows them in the stream (EOS, caps, a segment).
        if lookahead::drains(&event) {
            self.drain();
        }
        match event.view() {
            // The streaming thread may be waiting for the generator's worker: it gives up.
            gst::EventView::FlushStart(_) => self.flushing.store(true, Ordering::Release),
            // Every frame before EOS has been pushed: these are the final figures.
            gst::EventView::Eos(_) if self.settings.lock().unwrap().post_messages => self.post_stats(true),
            // A seek or a new stream: the next frame does not follow the last one.
            gst::EventView::FlushStop(_) | gst::EventView::StreamStart(_) => {
                if matches!(event.view(), gst::EventView::FlushStop(_)) {
                    // The streaming thread has stopped: a frame that came in and did not go out
                    // (held ones too) was discarded by the flush.
                    self.drop_held("flush");
                    self.stats.lock().unwrap().flushed();
                    self.flushing.store(false, Ordering::Release);
                }
                if let Some(state) = self.state.lock().unwrap().as_mut() {
                    state.restorer.reset_tracks();
                    state.last_pts = None;
                }
            }
            _ => {}
        }
        self.parent_sink_event(event)
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Dropping the state frees the models and their device memory; the heap kept what the
        // forwards freed (sys::keep_heap) and gives it back now. Held frames are dropped; the
        // generator's worker ends once its batch in flight, if any, is done.
        self.drop_held("stopped");
        let state = self.state.lock().unwrap().take();
        drop(state);
        crate::sys::release_heap();
        Ok(())
    }

    fn submit_input_buffer(&self, is_discont: bool, inbuf: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.stats.lock().unwrap().frames_in += 1;
        if self.batch_latency() > 0 {
            return self.hold(is_discont, inbuf);
        }
        let result = self.parent_submit_input_buffer(is_discont, inbuf);
        if result == Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED) {
            // Late: BaseTransform's QoS dropped it (and posted its QoS message).
            self.stats.lock().unwrap().frames_late_dropped += 1;
        }
        result
    }

    fn before_transform(&self, inbuf: &gst::BufferRef) {
        // With batch-latency, frames are analysed as they are held and routed as they leave.
        if self.batch_latency() == 0 {
            if let Some(analysis) = self.analyse(inbuf) {
                self.route(FrameTimes::of(inbuf), analysis);
            }
        }
    }

    fn generate_output(&self) -> Result<gst_base::subclass::base_transform::GenerateOutputSuccess, gst::FlowError> {
        if self.batch_latency() > 0 {
            return self.release(false);
        }
        self.output()
    }

    fn transform_meta<'a>(&self, outbuf: &mut gst::BufferRef, meta: gst::MetaRef<'a, gst::Meta>, inbuf: &'a gst::BufferRef) -> bool {
        // Region metas go to an upscaled output too (BaseTransform leaves out metas tagged with
        // the frame's size); `describe` then scales them.
        meta.downcast_ref::<gst_video::VideoRegionOfInterestMeta>().is_some() || self.parent_transform_meta(outbuf, meta, inbuf)
    }

    fn transform_caps(&self, direction: gst::PadDirection, caps: &gst::Caps, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let factor = self.settings.lock().unwrap().upscale as i32;
        let caps = if factor == 1 { caps.clone() } else { scale_caps(caps, factor, direction == gst::PadDirection::Sink) };
        Some(match filter {
            Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn query(&self, direction: gst::PadDirection, query: &mut gst::QueryRef) -> bool {
        if direction != gst::PadDirection::Src || !matches!(query.view(), gst::QueryView::Latency(_)) {
            return BaseTransformImplExt::parent_query(self, direction, query);
        }
        if !BaseTransformImplExt::parent_query(self, direction, query) {
            return false;
        }
        // Upstream's latency plus our measured processing time per frame, plus the frames held
        // for batch-latency.
        let ours = self.measured_latency() + self.hold_latency();
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let (live, min, max) = q.result();
            q.set(live, min + ours, max.map(|m| m + ours));
            gst::debug!(CAT, imp = self, "latency: upstream {min} + ours {ours}");
        }
        true
    }
}

impl VideoFilterImpl for GpenFilter {
    fn set_info(
        &self,
        _incaps: &gst::Caps,
        in_info: &gst_video::VideoInfo,
        _outcaps: &gst::Caps,
        out_info: &gst_video::VideoInfo,
    ) -> Result<(), gst::LoggableError> {
        // Same size in and out: frames are restored in place; upscaled: into a new buffer.
        self.obj().set_in_place(in_info.width() == out_info.width() && in_info.height() == out_info.height());
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.info = Some(in_info.clone());
            state.pending = None;
            // A new size or format: nothing carries over from the old frames.
            state.restorer.reset_tracks();
            state.last_pts = None;
        }
        Ok(())
    }

    fn transform_frame(
        &self,
        in_frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
        out_frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.transform(FrameTimes::of(in_frame.buffer()), out_frame)
    }

    fn transform_frame_ip(&self, frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.transform(FrameTimes::of(frame.buffer()), frame)
    }
}

impl GpenFilter {
    /// Frames a frame waits for before it is restored (0 before `start()`).
    fn batch_latency(&self) -> usize {
        self.state.lock().unwrap().as_ref().map_or(0, |s| s.batch_latency)
    }

    /// The submitted frame through BaseTransform's output path (`before_transform` and the
    /// transform run in there), with its faces described in metas after.
    pub(super) fn output(&self) -> Result<gst_base::subclass::base_transform::GenerateOutputSuccess, gst::FlowError> {
        use gst_base::subclass::base_transform::GenerateOutputSuccess as G;
        let out = self.parent_generate_output()?;
        let described = self.state.lock().unwrap().as_mut().and_then(|s| s.described.take());
        match out {
            G::Buffer(mut buffer) => {
                self.describe(&mut buffer, described);
                Ok(G::Buffer(buffer))
            }
            other => Ok(other),
        }
    }

    /// The one transform of both paths: the frame analysed in `before_transform` finished into
    /// `out` (the input itself in place, or the larger output when upscaling).
    fn transform(
        &self,
        times: FrameTimes,
        out: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Frame received before the model was loaded"));
            return Err(gst::FlowError::Flushing);
        };
        let started = state.started.take().unwrap_or_else(Instant::now);
        let outcome = match state.pending.take() {
            None => Err(Error::Frame("a frame reached the transform without being analysed".into())),
            Some(Err(e)) => Err(e),
            Some(Ok(d)) => {
                let layout = packed_layout(out);
                match out.plane_data_mut(0) {
                    Ok(data) => state.restorer.finish(d, Some((data, &layout))),
                    Err(e) => Err(Error::Frame(format!("cannot map the output frame: {e}"))),
                }
            }
        };
        if let (Ok(Outcome::Restored { .. }), Some(d)) = (&outcome, state.described.as_mut()) {
            d.restored = true;
        }
        let plan = state.restorer.plan();
        self.stats.lock().unwrap().generator_runs = state.restorer.generator_runs();
        // A pasted frame may add a pair to the flicker figure (a read of three sums: the frame
        // was just read back anyway).
        if matches!(outcome, Ok(Outcome::Restored { .. })) {
            match state.restorer.flicker() {
                Ok(f) => self.stats.lock().unwrap().flicker = f,
                Err(e) => gst::warning!(CAT, imp = self, "flicker figure not read: {e}"),
            }
        }
        drop(guard);
        self.conclude(outcome, plan, times, started)
    }

    /// Where the faces of `buffer` (a `size` frame) come from, by `faces-from`.
    pub(super) fn face_source(&self, faces_from: FacesFrom, buffer: &gst::BufferRef, size: (u32, u32)) -> FaceSource {
        let given = || {
            let given = meta::given_faces(buffer, size);
            self.stats.lock().unwrap().faces_from_metas += given.len() as u64;
            given
        };
        match faces_from {
            FacesFrom::Detector => FaceSource::Detector,
            FacesFrom::Upstream => FaceSource::Given(given()),
            FacesFrom::Both => FaceSource::Both(given()),
        }
    }

    /// The output's region metas: those copied from a smaller input scaled, an earlier
    /// gpenfilter's replaced by one per face of this frame (`face-metas`).
    fn describe(&self, buffer: &mut gst::Buffer, described: Option<Described>) {
        let (on, factor) = {
            let s = self.settings.lock().unwrap();
            (s.face_metas, s.upscale as u32)
        };
        let scale_theirs = factor > 1 && buffer.iter_meta::<gst_video::VideoRegionOfInterestMeta>().next().is_some();
        let ours = described.filter(|d| on && !d.faces.is_empty());
        let replace = ours.is_some() || (on && meta::has_ours(buffer));
        if !scale_theirs && !replace {
            return;
        }
        // Metas need a writable buffer, which costs no pixel copy: a buffer held only here (in
        // place, upscaled, or passed through) is not copied at all, and one still held elsewhere
        // gets a new header that shares its memory.
        let b = buffer.make_mut();
        if scale_theirs {
            meta::scale_all(b, factor);
        }
        if on {
            meta::remove_ours(b);
        }
        if let Some(d) = ours {
            let faces: Vec<Face> = d.faces.iter().map(|f| meta::upscaled(f, factor)).collect();
            meta::attach(b, &faces, &d.ids, d.restored, d.size);
        }
    }

    /// What became of a frame, told to the pipeline: statistics, messages and the flow return.
    pub(super) fn conclude(
        &self,
        outcome: Result<Outcome, Error>,
        plan: crate::memory::Plan,
        times: FrameTimes,
        started: Instant,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let outcome = match outcome {
            Ok(o) => o,
            Err(e @ Error::OutOfMemory(_)) => {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::NoSpaceLeft,
                    ("Out of memory, and memory-policy=error: {}", e),
                    ["set a larger vram-budget, a smaller size, fp16=true, a smaller tile-size, or memory-policy=degrade"]
                );
                return Err(gst::FlowError::Error);
            }
            Err(e) => {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("Restoring a frame failed: {}", e));
                return Err(gst::FlowError::Error);
            }
        };
        {
            let mut stats = self.stats.lock().unwrap();
            stats.record(&outcome, started.elapsed());
            if stats.plan != Some(plan) {
                gst::info!(CAT, imp = self, "plan now {plan} (was {:?})", stats.plan.map(|p| p.to_string()));
                stats.plan = Some(plan);
            }
        }
        let flow = match &outcome {
            Outcome::Dropped { reason } => {
                gst::warning!(CAT, imp = self, "dropped frame {:?}: {reason}", times.pts);
                let warning = self.stats.lock().unwrap().drop_warning(reason, Instant::now());
                if let Some(text) = warning {
                    gst::element_imp_warning!(self, gst::StreamError::Failed, ("{}", text));
                }
                self.post_drop(times);
                gst_base::BASE_TRANSFORM_FLOW_DROPPED
            }
            Outcome::PassedThrough { reason } => {
                gst::warning!(CAT, imp = self, "frame {:?} passed through unprocessed: {reason}", times.pts);
                gst::FlowSuccess::Ok
            }
            Outcome::Restored { retried: true, plan, .. } => {
                gst::warning!(CAT, imp = self, "out of memory: frame {:?} redone with {plan}", times.pts);
                gst::FlowSuccess::Ok
            }
            _ => gst::FlowSuccess::Ok,
        };
        self.after_frame();
        Ok(flow)
    }

    /// Mean processing time per frame so far, as a clock time.
    fn measured_latency(&self) -> gst::ClockTime {
        gst::ClockTime::from_nseconds(self.stats.lock().unwrap().mean_time().as_nanos() as u64)
    }

    /// Bookkeeping after each frame: a latency message when the processing time moved, the
    /// statistics message when asked for.
    fn after_frame(&self) {
        let post_messages = self.settings.lock().unwrap().post_messages;
        let latency = Duration::from_nanos(self.measured_latency().nseconds());
        let (repost_latency, post_stats) = {
            let mut guard = self.state.lock().unwrap();
            let Some(state) = guard.as_mut() else { return };
            let last = state.reported_latency;
            let moved = latency > last + last / 4 || latency + latency / 4 < last;
            if moved {
                state.reported_latency = latency;
            }
            let due = post_messages && state.last_post.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                state.last_post = Some(Instant::now());
            }
            (moved, due)
        };
        if repost_latency {
            let _ = self.obj().post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
        if post_stats {
            self.post_stats(false);
        }
    }

    /// The statistics as a `gpenfilter-stats` element message; `last` marks the one sent at EOS.
    fn post_stats(&self, last: bool) {
        let s = self.stats.lock().unwrap().message_structure(last);
        let _ = self.obj().post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    /// The faces of a frame, as aligned, in a `gpenfilter-faces` element message.
    pub(super) fn post_faces(&self, buffer: &gst::BufferRef, detections: &Detections) {
        let faces = detections.faces.iter().enumerate().map(|(i, f)| {
            gst::Structure::builder("face")
                .field("id", detections.ids.get(i).copied().unwrap_or(0))
                .field("score", f.score as f64)
                .field("box", gst::Array::new(f.bbox.map(|v| v as f64)))
                .field("landmarks", gst::Array::new(f.landmarks.as_flattened().iter().map(|&v| v as f64)))
                .build()
                .to_send_value()
        });
        let segment = self.obj().segment();
        let running = segment.downcast_ref::<gst::ClockTime>().and_then(|seg| buffer.pts().and_then(|p| seg.to_running_time(p)));
        let s = gst::Structure::builder("gpenfilter-faces")
            .field("timestamp", buffer.pts())
            .field("running-time", running)
            .field("detected", detections.detected)
            .field("scene-cut", detections.scene_cut)
            .field("faces", gst::Array::from_values(faces))
            .build();
        let _ = self.obj().post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    /// A QoS message for a frame the memory policy dropped.
    fn post_drop(&self, times: FrameTimes) {
        let (processed, dropped) = self.stats.lock().unwrap().qos_counts();
        let segment = self.obj().segment();
        let (running, stream) = match segment.downcast_ref::<gst::ClockTime>() {
            Some(seg) => (times.pts.and_then(|p| seg.to_running_time(p)), times.pts.and_then(|p| seg.to_stream_time(p))),
            None => (None, None),
        };
        let msg = gst::message::Qos::builder(false)
            .running_time(running)
            .stream_time(stream)
            .timestamp(times.pts)
            .duration(times.duration)
            .values(0, 1.0, 0)
            .stats(gst::format::Buffers::from_u64(processed), gst::format::Buffers::from_u64(dropped))
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
    }
}

/// The testing switch's value for the element `name` (feature `fault-injection`; 0 without it).
fn fail_every(name: &str) -> u64 {
    #[cfg(feature = "fault-injection")]
    return memory::fail_every_from_env(name);
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = name;
        0
    }
}
