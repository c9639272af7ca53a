//! The `gpenfilter` element: the glue between GStreamer's base transform and the core. Frames
//! are begun ([`Stream::begin_from`]) on the read-only input, in `before_transform` or, with
//! `batch-latency`, as they come into the core's [`Lookahead`] (then re-submitted in order); a
//! frame the core leaves unchanged passes through untouched (BaseTransform neither copies nor
//! maps it writable), the others are finished ([`Stream::finish`]) in `transform_frame_ip`, or
//! in `transform_frame` into a larger output when upscaling. Every decision about a frame is
//! the core's; [`report`](super::report) tells it to the pipeline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::base_transform::GenerateOutputSuccess as G;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::caps::{self, frame_interval, scale_caps};
use super::frames::{self, Arrival, Described, Frame, FrameTimes, Lines};
use super::properties::{self, Settings};
use super::report::{self, start_error, CAT};
use super::stats::Stats;
use crate::detect::Face;
use crate::error::Error;
use crate::memory;
use crate::restorer::{
    fields, outcome, Detections, DeviceSpec, Engine, FrameLayout, FrameOutput, Held, Lookahead, Outcome, PlanesMut, Release, Stream,
};

glib::wrapper! {
    pub struct GpenFilter(ObjectSubclass<GpenFilterImp>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

/// Exists between `start()` and `stop()`.
struct State {
    engine: Engine,
    stream: Stream,
    /// Frames held for `batch-latency` (`None` at 0: each frame is finished as it comes).
    lookahead: Option<Lookahead<Arrival>>,
    info: Option<gst_video::VideoInfo>,
    /// The frame going through BaseTransform's output path now, from its begin to its output:
    /// its pictures (the frame, or its fields).
    current: Vec<Frame>,
    /// Processing time last reported to the latency query.
    reported_latency: Duration,
    last_post: Option<Instant>,
    /// Timestamp of the previous frame, for the time between frames that tracking needs.
    last_pts: Option<gst::ClockTime>,
    /// Duration of the last frame that had one, for the latency query without a frame rate.
    last_duration: Option<gst::ClockTime>,
}

impl State {
    /// A new stream's frames do not follow the last ones (a seek, new caps).
    fn restart(&mut self) {
        self.stream.reset();
        self.last_pts = None;
    }
}

#[derive(Default)]
pub struct GpenFilterImp {
    settings: Mutex<Settings>,
    /// A live property changed since the settings were last pushed to the stream.
    live_changed: AtomicBool,
    state: Mutex<Option<State>>,
    stats: Arc<Mutex<Stats>>,
    /// Between a flush's start and stop (and from stopping on): a wait for the generator's
    /// worker gives up.
    flushing: AtomicBool,
    /// The refusal of one-field-per-buffer caps was posted (once per element).
    told_alternate: AtomicBool,
}

#[glib::object_subclass]
impl ObjectSubclass for GpenFilterImp {
    const NAME: &'static str = "GstGpenFilter";
    type Type = GpenFilter;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for GpenFilterImp {
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

impl GstObjectImpl for GpenFilterImp {}

impl ElementImpl for GpenFilterImp {
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
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(caps::FORMATS)
                // Interlaced frames are restored field by field; one field per buffer
                // (alternate) is refused in accept_caps, saying what to do.
                .field("interlace-mode", gst::List::new(["progressive", "interleaved", "mixed"]))
                .build();
            vec![
                gst::PadTemplate::new("src", gst::PadDirection::Src, gst::PadPresence::Always, &caps).unwrap(),
                gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &caps).unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for GpenFilterImp {
    const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::Both;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        // Live changes from here on are pushed with the first frame (the load takes seconds).
        self.live_changed.store(false, Ordering::Release);
        let settings = self.settings.lock().unwrap().clone();
        let fail_every = fail_every(&self.obj().name());
        let core = settings.to_restorer(fail_every).map_err(|e| start_error(&e))?;
        let started = Instant::now();
        let engine = Engine::new(&core).map_err(|e| start_error(&e))?;
        let stream = Stream::new(&engine, &core).map_err(|e| start_error(&e))?;
        let model = engine.model();
        gst::info!(
            CAT,
            imp = self,
            "loaded {} from {} on {:?} ({:?}), detector {:?}, in {:.2?}",
            model.config().describe(),
            engine.model_path().display(),
            model.device(),
            model.kind(),
            engine.detector(),
            started.elapsed()
        );
        if !core.aligned {
            match engine.parse_model() {
                Some(p) => gst::info!(CAT, imp = self, "faces are pasted through face-parsing masks ({})", p.display()),
                None => gst::info!(CAT, imp = self, "faces are pasted through GPEN's soft rectangle (mask {:?})", core.faces.mask.mode),
            }
        }
        if settings.upscaler_model.is_some() && settings.upscale as u32 == 1 {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                ("upscaler-model is set but upscale=1, so the background is not upscaled and the model is not loaded"),
                ["set upscale=2 or upscale=4 to upscale with it, or leave upscaler-model unset"]
            );
        }
        if fail_every > 0 {
            gst::warning!(CAT, imp = self, "fault injection: every {fail_every}th generator forward fails as out of memory");
        }
        #[cfg(feature = "fault-injection")]
        if memory::skip_forward_from_env(&self.obj().name()) {
            gst::warning!(CAT, imp = self, "fault injection: generator forwards return their input");
            engine.skip_forwards();
        }
        #[cfg(feature = "fault-injection")]
        match memory::slow_forward_from_env(&self.obj().name()) {
            0 => {}
            ms => {
                gst::warning!(CAT, imp = self, "fault injection: every generator forward takes {ms} ms more");
                engine.slow_forwards(ms);
            }
        }
        // device=auto on a machine with an NVIDIA driver, yet on the CPU: say why, loudly (bf16 on
        // the CPU takes seconds a frame where the user expected a GPU).
        if core.device == DeviceSpec::Auto && engine.device() == tch::Device::Cpu {
            if let Some(reason) = crate::sys::cuda_unusable_reason() {
                gst::element_imp_warning!(
                    self,
                    gst::LibraryError::Init,
                    ("An NVIDIA driver is installed but CUDA cannot be used, so the models run on the CPU: {}", reason),
                    ["update the NVIDIA driver for this libtorch's CUDA, or set device=cpu to silence this warning"]
                );
            }
        }
        *self.stats.lock().unwrap() = Stats { plan: Some(engine.plan()), device: Some(engine.device()), ..Stats::default() };
        gst::info!(CAT, imp = self, "memory budget {} MiB, plan {}", memory::mib(engine.budget()), engine.plan());
        let lookahead = match settings.batch_latency {
            0 => None,
            n => {
                let (lookahead, error) = Lookahead::new(n as usize, settings.overlap);
                if let Some(e) = error {
                    gst::warning!(CAT, imp = self, "batches ahead run on the streaming thread: {e}");
                }
                Some(lookahead)
            }
        };
        *self.state.lock().unwrap() = Some(State {
            engine,
            stream,
            lookahead,
            info: None,
            current: Vec::new(),
            reported_latency: Duration::ZERO,
            last_post: None,
            last_pts: None,
            last_duration: None,
        });
        self.flushing.store(false, Ordering::Release);
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        // Held frames go out before what follows them in the stream (EOS, caps, a segment).
        if frames::drains(&event) {
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
                    state.restart();
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
        if self.holds() {
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
        // Held frames were begun as they came, and are routed as they leave.
        if !self.holds() {
            if let Some(frame) = self.begin(inbuf) {
                self.route(frame);
            }
        }
    }

    fn generate_output(&self) -> Result<G, gst::FlowError> {
        if self.holds() {
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

    fn accept_caps(&self, direction: gst::PadDirection, caps: &gst::Caps) -> bool {
        let alternate = caps.iter().any(|s| s.get::<&str>("interlace-mode").ok() == Some("alternate"))
            || caps.features(0).is_some_and(|f| f.contains("format:Interlaced"));
        if alternate {
            if !self.told_alternate.swap(true, Ordering::AcqRel) {
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Format,
                    ("gpenfilter does not take interlace-mode=alternate (one field per buffer): it restores the fields of whole interlaced frames"),
                    [
                        "ask the decoder or capture element for interleaved frames, or put deinterlace before gpenfilter to \
                         restore progressive frames"
                    ]
                );
            }
            return false;
        }
        self.parent_accept_caps(direction, caps)
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
        let held = {
            let guard = self.state.lock().unwrap();
            guard.as_ref().map_or(gst::ClockTime::ZERO, |s| {
                let latency = s.lookahead.as_ref().map_or(0, Lookahead::latency);
                frames::hold_latency(latency, s.info.as_ref(), s.last_duration)
            })
        };
        let ours = self.measured_latency() + held;
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let (live, min, max) = q.result();
            q.set(live, min + ours, max.map(|m| m + ours));
            gst::debug!(CAT, imp = self, "latency: upstream {min} + ours {ours}");
        }
        true
    }
}

impl VideoFilterImpl for GpenFilterImp {
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
            state.current.clear();
            state.stream.set_pixel_aspect(in_info.par().numer() as f64 / in_info.par().denom() as f64);
            // A new size or format: nothing carries over from the old frames.
            state.restart();
        }
        Ok(())
    }

    fn transform_frame(
        &self,
        _in_frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
        out_frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.transform(out_frame)
    }

    fn transform_frame_ip(&self, frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.transform(frame)
    }
}

impl GpenFilterImp {
    /// Whether frames are held for batches ahead (`batch-latency` > 0, after `start()`).
    fn holds(&self) -> bool {
        self.state.lock().unwrap().as_ref().is_some_and(|s| s.lookahead.is_some())
    }

    /// The frame `inbuf` begun as the pictures it holds ([`frames::pictures`]: the frame, or
    /// its fields in temporal order): live settings taken up, faces found (or given) and
    /// followed, described in the statistics and messages. `None` before `start()`.
    fn begin(&self, inbuf: &gst::BufferRef) -> Option<Vec<Frame>> {
        let started = Instant::now();
        let (post_faces, live, faces_from, factor, fields) = {
            let s = self.settings.lock().unwrap();
            (s.post_faces, self.live_changed.swap(false, Ordering::AcqRel).then_some(s.live), s.faces_from, s.upscale as u32, s.fields)
        };
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut()?;
        if let Some(live) = live {
            // The ranges of the properties keep these valid; a failure would leave the old ones.
            if let Err(e) = state.stream.set_live(live) {
                gst::warning!(CAT, imp = self, "live settings not applied: {e}");
            }
        }
        let dt = frame_interval(state.last_pts, inbuf.pts(), state.info.as_ref());
        state.last_pts = inbuf.pts();
        if let Some(d) = inbuf.duration() {
            state.last_duration = Some(d);
        }
        let unreadable =
            |state: &State, info: &gst_video::VideoInfo| vec![(Lines::Frame, Ok(state.stream.unreadable(inbuf.size(), info.size())))];
        let begun: Vec<(Lines, Result<Detections, Error>)> = match state.info.clone() {
            None => vec![(Lines::Frame, Err(Error::NotNegotiated))],
            Some(info) => match gst_video::VideoFrameRef::from_buffer_ref_readable(inbuf, &info) {
                // A buffer that does not hold the frame its caps describe (too small: a wrong
                // size or stride upstream).
                Err(_) => unreadable(state, &info),
                Ok(frame) => match caps::frame_layout(&frame) {
                    Some(layout) => {
                        let source = frames::face_source(faces_from, inbuf, (info.width(), info.height()), &mut self.stats.lock().unwrap());
                        let pictures = frames::pictures(&layout, frame.flags(), info.field_order(), fields);
                        frames::begin_pictures(&state.engine, &mut state.stream, pictures, caps::planes(&frame), &layout, dt, &source)
                    }
                    None => vec![(Lines::Frame, Err(Error::NotNegotiated))],
                },
            },
        };
        let size = state.info.as_ref().map_or((0, 0), |i| (i.width() * factor, i.height() * factor));
        let counters = state.stream.video_counters();
        drop(guard);
        let mut frames = Vec::with_capacity(begun.len());
        for (lines, begun) in begun {
            let field = match lines {
                Lines::Field { top } => Some(top),
                Lines::Frame => None,
            };
            let mut described = None;
            if let Some(d) = begun.as_ref().ok().filter(|d| !matches!(d.decided(), Some(Outcome::Unreadable { .. }))) {
                gst::log!(CAT, imp = self, "{} face(s) in {:?} ({lines:?})", d.faces.len(), inbuf.pts());
                // Faces are told in the frame's pixels, a field's too.
                let faces: Vec<Face> = d.faces.iter().map(|f| field.map_or(*f, |top| fields::face_in_frame(top, f))).collect();
                let mut stats = self.stats.lock().unwrap();
                stats.faces_detected += d.faces.len() as u64;
                stats.set_video(counters);
                drop(stats);
                if post_faces {
                    let segment = self.obj().segment();
                    let running = segment.downcast_ref::<gst::ClockTime>().and_then(|seg| inbuf.pts().and_then(|p| seg.to_running_time(p)));
                    let s = frames::faces_message(inbuf, d, &faces, running, field);
                    let _ = self.obj().post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
                }
                described = Some(Described { faces, ids: d.ids.clone(), restored: false, size });
            }
            let arrival = Arrival { buffer: None, discont: false, times: FrameTimes::of(inbuf), described, lines };
            frames.push(Held::new(arrival, begun, Duration::ZERO));
        }
        // The begin's time is the frame's, counted once.
        if let Some(last) = frames.last_mut() {
            last.took = started.elapsed();
        }
        Some(frames)
    }

    /// Where a begun frame goes: a frame the core leaves unchanged (every picture of it) is
    /// finished here and passed through, neither copied nor written; the others (and errors, to
    /// be reported) go to the transform.
    fn route(&self, mut frames: Vec<Frame>) {
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else { return };
        let unchanged = frames.iter().all(|f| f.begun().map(|d| state.stream.output_of(d)) == Some(FrameOutput::Unchanged));
        self.obj().set_passthrough(unchanged);
        let took: Duration = frames.iter().map(|f| f.took).sum();
        let started = Instant::now().checked_sub(took).unwrap_or_else(Instant::now);
        if unchanged {
            let mut outcome: Option<Result<Outcome, Error>> = None;
            for frame in &mut frames {
                let Some(Ok(d)) = frame.frame.take() else { continue };
                let o = state.stream.finish(&mut state.engine, d, None::<(PlanesMut, FrameLayout)>);
                outcome = Some(outcome::and_next(outcome, o));
            }
            let plan = state.engine.plan();
            let times = frames.last().map(|f| f.payload.times);
            state.current = frames;
            drop(guard);
            // Nothing is written, so nothing can fail; an error is still reported if it does.
            if let (Some(outcome), Some(times)) = (outcome, times) {
                let _ = self.conclude(outcome, plan, times, started);
            }
            return;
        }
        if let Some(last) = frames.last_mut() {
            last.took = started.elapsed();
        }
        state.current = frames;
    }

    /// The frame routed to the transform finished into `out` (the input itself in place, or the
    /// larger output when upscaling): each of its pictures into its lines.
    fn transform(&self, out: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Frame received before the model was loaded"));
            return Err(gst::FlowError::Flushing);
        };
        let mut frames = std::mem::take(&mut state.current);
        let took: Duration = frames.iter().map(|f| f.took).sum();
        let started = Instant::now().checked_sub(took).unwrap_or_else(Instant::now);
        let times = frames.last().map_or_else(|| FrameTimes::of(out.buffer()), |f| f.payload.times);
        let Some(layout) = caps::frame_layout(out) else {
            let plan = state.engine.plan();
            drop(guard);
            return self.conclude(Err(Error::NotNegotiated), plan, times, started);
        };
        let mut outcome: Option<Result<Outcome, Error>> = None;
        for frame in &mut frames {
            let o = match frame.frame.take() {
                None => Err(Error::Internal("a frame reached the transform without being begun".into())),
                Some(Err(e)) => Err(e),
                Some(Ok(d)) => {
                    let planes = PlanesMut(out.planes_data_mut());
                    match frame.payload.lines {
                        Lines::Frame => state.stream.finish(&mut state.engine, d, Some((planes, layout))),
                        Lines::Field { top } => match fields::field(&layout, top) {
                            Some(f) => state.stream.finish(&mut state.engine, d, Some((f.of_mut(planes), f.layout))),
                            None => Err(Error::OutputMismatch(format!("a {}-line output has no field {top}", layout.height()))),
                        },
                    }
                }
            };
            if let (Ok(Outcome::Restored { .. }), Some(d)) = (&o, frame.payload.described.as_mut()) {
                d.restored = true;
            }
            outcome = Some(outcome::and_next(outcome, o));
            if matches!(outcome, Some(Err(_))) {
                break;
            }
        }
        let outcome = outcome.unwrap_or_else(|| Err(Error::Internal("a frame reached the transform without being begun".into())));
        state.current = frames;
        let plan = state.engine.plan();
        self.stats.lock().unwrap().generator_runs = state.engine.generator_runs();
        // A pasted frame may add a pair to the flicker figure and grey faces (reads of three
        // sums and a count: the frame was just read back anyway).
        if matches!(outcome, Ok(Outcome::Restored { .. })) {
            match state.stream.flicker() {
                Ok(f) => self.stats.lock().unwrap().flicker = f,
                Err(e) => gst::warning!(CAT, imp = self, "flicker figure not read: {e}"),
            }
            match state.stream.faces_grey() {
                Ok(n) => self.stats.lock().unwrap().faces_grey = n,
                Err(e) => gst::warning!(CAT, imp = self, "grey faces not counted: {e}"),
            }
        }
        drop(guard);
        self.conclude(outcome, plan, times, started)
    }

    /// The submitted frame through BaseTransform's output path (`before_transform` and the
    /// transform run in there), with its faces described in metas after.
    fn output(&self) -> Result<G, gst::FlowError> {
        let out = self.parent_generate_output()?;
        let current = self.state.lock().unwrap().as_mut().map(|s| std::mem::take(&mut s.current)).unwrap_or_default();
        let described = Described::of_fields(current.into_iter().map(|f| f.payload.described));
        match out {
            G::Buffer(mut buffer) => {
                let (on, factor) = {
                    let s = self.settings.lock().unwrap();
                    (s.face_metas, s.upscale as u32)
                };
                frames::describe(&mut buffer, described, on, factor);
                Ok(G::Buffer(buffer))
            }
            other => Ok(other),
        }
    }

    /// `batch-latency` > 0: the frame is begun now and held in the core's look-ahead (a field
    /// at a time; the buffer goes with the frame's last picture).
    fn hold(&self, discont: bool, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let overlapped = self.state.lock().unwrap().as_ref().is_some_and(|s| s.lookahead.as_ref().is_some_and(Lookahead::forward_running));
        let Some(mut frames) = self.begin(&buffer) else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Frame received before the model was loaded"));
            return Err(gst::FlowError::Flushing);
        };
        if let Some(last) = frames.last_mut() {
            last.payload.buffer = Some(buffer);
            last.payload.discont = discont;
        }
        if overlapped {
            self.stats.lock().unwrap().frames_overlapped += 1;
        }
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            if let Some(lookahead) = state.lookahead.as_mut() {
                for frame in frames {
                    lookahead.push(&state.engine, &state.stream, frame, &mut |e| {
                        gst::warning!(CAT, imp = self, "faces not restored ahead: {e}")
                    });
                }
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// The oldest held frame out, when the core's look-ahead gives it back (or any, when
    /// `drain`): re-submitted to BaseTransform (QoS may drop it) and transformed. A frame's
    /// fields leave together. A flush that comes while it waits for the worker: `Flushing`, the
    /// frame still held (the flush drops it).
    fn release(&self, drain: bool) -> Result<G, gst::FlowError> {
        let mut frames: Vec<Frame> = Vec::with_capacity(2);
        loop {
            let released = {
                let mut guard = self.state.lock().unwrap();
                let Some(state) = guard.as_mut() else { return Ok(G::NoOutput) };
                let Some(lookahead) = state.lookahead.as_mut() else { return Ok(G::NoOutput) };
                let cancelled = || self.flushing.load(Ordering::Acquire);
                let warn = &mut |e| gst::warning!(CAT, imp = self, "faces not restored ahead: {e}");
                // The pictures after a frame's first are behind it: they are let out with it.
                let released = lookahead.release(&state.engine, &state.stream, drain || !frames.is_empty(), &cancelled, warn);
                self.stats.lock().unwrap().ahead_wait = lookahead.waited();
                released
            };
            match released {
                Release::Ready(frame) => {
                    let whole = frame.payload.buffer.is_some();
                    frames.push(frame);
                    if whole {
                        break;
                    }
                }
                // Once a frame's first field is out, the drain lets the rest out: nothing is
                // held back when none is held.
                Release::NotYet => return Ok(G::NoOutput),
                Release::Cancelled => {
                    gst::debug!(CAT, imp = self, "flushing while waiting for the generator's worker");
                    return Err(gst::FlowError::Flushing);
                }
            }
        }
        let Some(last) = frames.last_mut() else { return Ok(G::NoOutput) };
        let Some(buffer) = last.payload.buffer.take() else { return Ok(G::NoOutput) };
        let discont = last.payload.discont;
        gst::log!(CAT, imp = self, "releasing {:?}", last.payload.times.pts);
        match self.parent_submit_input_buffer(discont, buffer) {
            Ok(gst::FlowSuccess::Ok) => {
                self.route(frames);
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
    fn drain(&self) {
        let held = self.state.lock().unwrap().as_ref().and_then(|s| s.lookahead.as_ref()).map_or(0, Lookahead::len);
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
    fn drop_held(&self, why: &str) {
        let dropped = self.state.lock().unwrap().as_mut().and_then(|s| s.lookahead.as_mut()).map_or(0, Lookahead::flush);
        if dropped > 0 {
            gst::info!(CAT, imp = self, "{why}: {dropped} held frame(s) dropped");
            self.stats.lock().unwrap().flushed();
        }
    }

    /// What the core decided of a frame, told to the pipeline, then the bookkeeping after it.
    fn conclude(
        &self,
        outcome: Result<Outcome, Error>,
        plan: crate::memory::Plan,
        times: FrameTimes,
        started: Instant,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let flow = report::conclude(self.obj().upcast_ref(), &self.stats, outcome, plan, times, started)?;
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
