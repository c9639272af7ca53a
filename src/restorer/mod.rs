//! The restoration core: frames in memory in, restored frames out. It knows nothing of
//! GStreamer, so tests, examples and benchmarks drive it directly.
//!
//! One frame takes two stages, so that a caller can pass a frame without faces through
//! untouched: [`Restorer::begin`] uploads it and finds its faces ([`video`], the detector), and
//! [`Restorer::finish`] restores them under the memory policy ([`ladder`]) and writes the result
//! ([`paste`], [`frame`]). [`Restorer::process`] does both in place.

mod ahead;
pub mod frame;
mod given;
pub mod ladder;
mod lock;
pub mod paste;
pub mod settings;
pub mod temporal;
pub mod video;
mod work;
pub mod worker;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::detect::{detect_at_scales_with, DetectorVariant, Face, RetinaFace};
use crate::gpen::{Banding, FullGenerator, GpenConfig};
use crate::memory::{self, Estimator, Plan};
use crate::parse::ParseNet;
use crate::upscale::Upscaler;
use crate::{registry, Error, Setting};

use ahead::{Ahead, AheadSlot, Faults, GeneratorRuns};
pub use ahead::{AheadDone, AheadJob, GeneratorCounts};
pub use frame::PackedLayout;
pub use given::{FaceSource, GivenFace};
use ladder::Ladder;
pub use ladder::RECOVER_AFTER;
use lock::Lock;
use paste::Paster;
pub use settings::*;
pub use temporal::Flicker;
use temporal::{FlickerMeter, TrackMemory};
use video::VideoFaces;
pub use video::{SceneChange, Supplied, TrackedFaces, VideoCounters, SCENE_CUT};
pub use work::MaskChange;

/// What became of a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No face in the frame; nothing was written (upscaling: the upscaled frame was).
    NoFaces,
    /// Faces restored and pasted (whole frames), or the aligned face restored.
    Restored {
        faces: usize,
        plan: Plan,
        /// An out-of-memory error was caught and the frame redone with the next plan.
        retried: bool,
    },
    /// The policy dropped the frame (nothing was written).
    Dropped { reason: String },
    /// The policy left the frame as it was (upscaling: upscaled bicubically, faces untouched).
    PassedThrough { reason: String },
}

/// What becomes of a frame's memory in [`Restorer::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOutput {
    /// The output frame is written (faces pasted in place, or the whole upscaled frame).
    Written,
    /// The input is left as it is (no faces, or passed through by the policy): nothing to copy.
    Unchanged,
    /// The policy drops the frame.
    Dropped,
}

/// Long side of the extra reduced-scale pass of small-anchor detectors, which miss faces that
/// fill the frame.
const REDUCED_PASS: f64 = 320.0;

/// A frame between [`Restorer::begin`] and [`Restorer::finish`]: the frame on the device and
/// its faces.
pub struct Detections {
    /// The faces to restore, best first (video: followed along tracks).
    pub faces: Vec<Face>,
    /// The track of each face; empty for a still image.
    pub ids: Vec<u64>,
    /// Whether the detector ran on this frame (else the faces were carried by their tracks).
    pub detected: bool,
    /// Whether this frame began a new scene (every track was ended before it).
    pub scene_cut: bool,
    /// The frame, `1 x 3 x H x W` float 0..255 on the device.
    frame: Tensor,
    /// Decided before restoration (the detector ran out of memory).
    decided: Option<Outcome>,
    /// The frame's number in its stream (video), for the state its tracks carry to the next.
    serial: Option<u64>,
    /// The faces restored ahead in a batch with other frames' ([`Restorer::restore_ahead`]).
    ahead: AheadSlot,
    /// Wall time of registering the tracked faces' crops onto the previous frame's.
    pub registration: Duration,
    /// Each face's thumbnail as registered (empty when nothing was registered).
    thumbs: Vec<Option<Tensor>>,
}

impl std::fmt::Debug for Detections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detections")
            .field("faces", &self.faces)
            .field("ids", &self.ids)
            .field("detected", &self.detected)
            .field("scene_cut", &self.scene_cut)
            .field("decided", &self.decided)
            .field("serial", &self.serial)
            .field("restored_ahead", &self.restored_ahead())
            .finish()
    }
}

/// What [`Restorer::restore_faces`] did to a frame.
#[derive(Debug)]
pub struct PasteReport {
    /// Faces pasted back.
    pub restored: usize,
    /// The frame rectangle `(x0, y0, width, height)` that was written, if any.
    pub region: Option<(i64, i64, i64, i64)>,
    /// The combined paste mask over `region` (`1 x 1 x height x width`, 0..1): pixels where it
    /// is 0 kept their value.
    pub mask: Option<Tensor>,
    /// Wall time of the steps, for benchmarks (asynchronous on CUDA unless synchronised).
    pub timings: PasteTimings,
}

/// Where the time of [`Restorer::restore_faces`] went.
#[derive(Debug, Default, Clone, Copy)]
pub struct PasteTimings {
    /// Alignment and cropping of all faces.
    pub crop: Duration,
    /// The generator forwards (and face parsing).
    pub generator: Duration,
    /// Blending each tracked face with its previous restoration.
    pub temporal: Duration,
    /// Registering the faces' crops as the frame began ([`Detections::registration`]).
    pub registration: Duration,
    /// Smoothing, blending, warping back and writing the frame.
    pub paste: Duration,
}

/// Whole-frame faces: the detector, the paste constants and masks, the stream's tracks.
#[derive(Debug)]
struct FaceStage {
    detector: Arc<RetinaFace>,
    detector_path: PathBuf,
    paster: Paster,
    /// The face-parsing checkpoint found for the parsing mask.
    parse_path: Option<PathBuf>,
    /// Loaded while the plan pastes through parsing masks.
    parser: Option<Arc<ParseNet>>,
    /// What each live track kept of the last written frame, in aligned space.
    tracks: RefCell<TrackMemory>,
    /// Each live track's crop, registered onto the previous frame's while blending is on.
    lock: Lock,
    /// The flicker of the stream's pasted regions.
    flicker: RefCell<FlickerMeter>,
    /// Summed change of parsing masks between consecutive frames of a track, before and after
    /// smoothing, kept on the device until asked for ([`Restorer::mask_change`]).
    mask_change: RefCell<Option<(Tensor, Tensor, u64)>>,
    settings: FaceSettings,
    video: VideoFaces,
    /// Frames begun so far: each is numbered as it arrives, and its tracks' state is taken up
    /// when it is finished (frames are finished in order, possibly several begins later).
    arrived: u64,
}

/// What frames are.
#[derive(Debug)]
enum Mode {
    /// Each frame is one aligned face.
    Aligned,
    /// Faces are found in whole frames and pasted back.
    Faces(FaceStage),
    /// As `Faces`, onto the frame upscaled.
    Upscaled(FaceStage, Upscaler),
}

/// GPEN restoration of frames: aligned faces, or whole frames (detect, align, restore, paste),
/// optionally upscaled.
#[derive(Debug)]
pub struct Restorer {
    /// The model of the current plan, shared with other restorers of the process.
    model: Arc<FullGenerator>,
    model_path: PathBuf,
    /// Where checkpoints of other sizes are looked for (the `model` setting).
    model_source: Option<PathBuf>,
    model_key: Option<String>,
    device: Device,
    ladder: Ladder,
    /// How the generator's top levels are banded for the current frame.
    banding: Banding,
    /// Whole maps ran out of memory although the estimate fitted: band until the plan changes.
    whole_maps_failed: bool,
    budget: u64,
    estimator: Estimator,
    mode: Mode,
    tile_overlap: i64,
    /// Generator forwards, counted for the testing switches.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    faults: Arc<Faults>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    fail_every: u64,
    /// Generator batches run, and the faces in them.
    runs: Arc<GeneratorRuns>,
}

impl Restorer {
    /// Loads the models named by `settings`; every failure says what and how to fix it.
    pub fn new(settings: &RestorerSettings) -> Result<Self, Error> {
        settings.validate()?;
        let device = settings.device.resolve()?;
        let path = find_model(settings.model.as_deref(), settings.size)?;
        // The budget is what is free before our models arrive.
        let budget = match settings.memory.budget_mib {
            0 => memory::figures(device)?.free,
            mib => mib << 20,
        };
        let model = registry::generator(&path, settings.model_key.as_deref(), device, compute_kind(settings.fp16, device))?;
        let size = model.config().size;
        if size != settings.size {
            return Err(Error::invalid(
                Setting::Size,
                format!("{} was asked for, but {} is GPEN-{size}", settings.size, path.display()),
                format!("ask for {size}, or use a GPEN-{} checkpoint", settings.size),
            ));
        }
        let kind = compute_kind(settings.fp16, device);
        let face_stage = |f: &FaceSettings| -> Result<FaceStage, Error> {
            let detector_path = find_detector(f.detector_model.as_deref())?;
            let parse_path = find_parser(&f.mask, settings.model.as_deref())?;
            let parser = parse_path.as_deref().map(|p| registry::parser(p, device, kind)).transpose()?;
            Ok(FaceStage {
                detector: registry::detector(&detector_path, f.detector_variant, device)?,
                detector_path,
                paster: Paster::new(size, device, f.mask.regions)?,
                parse_path,
                parser,
                tracks: RefCell::default(),
                lock: Lock::default(),
                flicker: RefCell::default(),
                mask_change: RefCell::default(),
                settings: f.clone(),
                video: VideoFaces::new(f.live.smoothing),
                arrived: 0,
            })
        };
        let u = &settings.upscale;
        let mode = match (settings.aligned, u.factor) {
            (true, _) => Mode::Aligned,
            (false, 1) => Mode::Faces(face_stage(&settings.faces)?),
            (false, f) => {
                let upscaler = match u.model.as_deref() {
                    Some(p) => Upscaler::with_net(registry::upscaler(p, device)?, f)?,
                    None => Upscaler::Bicubic(f),
                };
                Mode::Upscaled(face_stage(&settings.faces)?, upscaler)
            }
        };
        let plan = Plan {
            size,
            half: settings.fp16,
            face_batch: if settings.aligned { 1 } else { settings.faces.face_batch },
            tile: matches!(mode, Mode::Upscaled(..)).then_some(u.tile),
            parse: matches!(&mode, Mode::Faces(s) | Mode::Upscaled(s, _) if s.parser.is_some()),
        };
        // Smaller sizes are rungs of the ladder when their checkpoints sit in the model folder.
        let folder = match &settings.model {
            None => Some(default_model_dir()),
            Some(m) if m.is_dir() => Some(m.clone()),
            Some(_) => None,
        };
        let smaller = folder.map_or(Vec::new(), |d| SIZES.into_iter().filter(|&s| d.join(official_file_name(s)).exists()).collect());
        let mut restorer = Restorer {
            model,
            model_path: path,
            model_source: settings.model.clone(),
            model_key: settings.model_key.clone(),
            device,
            ladder: Ladder::new(plan, settings.memory.policy, u.overlap, smaller),
            banding: Banding::Default,
            whole_maps_failed: false,
            budget,
            estimator: Estimator::default(),
            mode,
            tile_overlap: u.overlap,
            faults: Arc::default(),
            fail_every: settings.memory.fail_every,
            runs: Arc::default(),
        };
        restorer.calibrate()?;
        Ok(restorer)
    }

    /// On CUDA, one measured forward scales the estimator's activation figure to what the
    /// allocator really needed (the CPU's resident size is too coarse to measure it).
    fn calibrate(&mut self) -> Result<(), Error> {
        if !matches!(self.device, Device::Cuda(_)) {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let plan = self.ladder.plan();
        memory::release_cached();
        memory::reset_peak(self.device);
        let before = memory::figures(self.device)?.allocated;
        let x = Tensor::f_zeros([1, 3, plan.size, plan.size], (Kind::Float, self.device))?;
        // Whole maps, as a GPU with room runs them; the same factor scales banded estimates.
        if let Err(e) = self.model.forward_with(&x, Banding::Off) {
            // No room for a whole-map forward: the estimate stays uncalibrated.
            memory::release_cached();
            return if e.is_out_of_memory() { Ok(()) } else { Err(e) };
        }
        let peak = memory::figures(self.device)?.peak;
        let elem = if plan.half { 2.0 } else { 4.0 };
        let predicted = Estimator::activation_elements_with(self.model.config(), 1, elem as i64, Banding::Off) as f64 * elem;
        if predicted > 0.0 && peak > before {
            self.estimator.calibration = (peak - before) as f64 / predicted;
        }
        memory::release_cached();
        Ok(())
    }

    /// Stage one of a frame: the frame uploaded and, for whole frames, its faces followed along
    /// tracks (`dt`: seconds since the previous frame). A detector that runs out of memory
    /// leaves the frame to the memory policy: the result then carries the frame's fate.
    pub fn begin(&mut self, data: &[u8], layout: &PackedLayout, dt: f64) -> Result<Detections, Error> {
        self.begin_from(data, layout, dt, FaceSource::Detector)
    }

    /// As [`begin`](Self::begin), with the frame's faces from `source`: the detector, faces
    /// found elsewhere, or both. Given faces are followed along tracks as detected ones are.
    pub fn begin_from(&mut self, data: &[u8], layout: &PackedLayout, dt: f64, source: FaceSource) -> Result<Detections, Error> {
        let frame = match frame::to_tensor(data, layout, self.device) {
            Ok(f) => f,
            // No room for the frame itself: the policy decides; a pass-through is made on the CPU.
            Err(e) if e.is_out_of_memory() => {
                memory::release_cached();
                self.reset_tracks();
                let decided = Some(self.ladder.give_up(format!("frame upload: {e}"))?);
                let frame = frame::to_tensor(data, layout, Device::Cpu)?;
                return Ok(Detections::empty(frame, decided, None));
            }
            Err(e) => return Err(e),
        };
        let stage = match &mut self.mode {
            Mode::Aligned => return Ok(Detections::empty(frame, None, None)),
            Mode::Faces(stage) | Mode::Upscaled(stage, _) => stage,
        };
        let interval = stage.settings.live.detection_interval;
        stage.arrived += 1;
        let serial = Some(stage.arrived);
        let found = match &source {
            FaceSource::Detector => {
                stage.video.next(&frame, dt, interval, |extra| find_faces(&stage.detector, &stage.settings, &frame, extra))
            }
            FaceSource::Given(g) => {
                stage.video.next_supplied(&frame, dt, |extra| given::supply(&stage.detector, &stage.settings, &frame, g, false, extra))
            }
            FaceSource::Both(g) => {
                stage.video.next_supplied(&frame, dt, |extra| given::supply(&stage.detector, &stage.settings, &frame, g, true, extra))
            }
        };
        match found {
            Ok(mut t) => {
                let (thumbs, registration) = stage.register(&frame, &mut t.faces, &t.ids)?;
                let (faces, ids, detected, scene_cut) = (t.faces, t.ids, t.detected, t.scene_cut);
                Ok(Detections { faces, ids, detected, scene_cut, registration, thumbs, ..Detections::empty(frame, None, serial) })
            }
            Err(e) if e.is_out_of_memory() => {
                memory::release_cached();
                stage.tracks.get_mut().clear();
                // No smaller plan helps the detector: the policy decides at once.
                let reason = format!("face detection: {e}");
                let decided = Some(self.ladder.give_up(reason)?);
                Ok(Detections { detected: true, ..Detections::empty(frame, decided, serial) })
            }
            Err(e) => Err(e),
        }
    }

    /// What [`finish`](Self::finish) will do with the frame's memory.
    pub fn output_of(&self, d: &Detections) -> FrameOutput {
        let upscaled = matches!(self.mode, Mode::Upscaled(..));
        match &d.decided {
            Some(Outcome::Dropped { .. }) => FrameOutput::Dropped,
            Some(_) if upscaled => FrameOutput::Written,
            Some(_) => FrameOutput::Unchanged,
            None if upscaled || matches!(self.mode, Mode::Aligned) || !d.faces.is_empty() => FrameOutput::Written,
            None => FrameOutput::Unchanged,
        }
    }

    /// Stage two of a frame: its faces restored under the memory policy and written into `out`
    /// (the input buffer itself for in-place use, or the output frame when upscaling). The
    /// plan is first fitted to the budget by the estimator; an out-of-memory error is caught,
    /// cached memory released, and the frame retried once on the next rung (policy `degrade`);
    /// otherwise the policy decides. `out` may be `None` when nothing is written
    /// ([`output_of`](Self::output_of) is not [`FrameOutput::Written`]).
    pub fn finish(&mut self, d: Detections, out: Option<(&mut [u8], &PackedLayout)>) -> Result<Outcome, Error> {
        self.take_up(&d);
        if self.output_of(&d) != FrameOutput::Written {
            return Ok(d.decided.unwrap_or(Outcome::NoFaces));
        }
        let Some((data, layout)) = out else {
            return Err(Error::Frame("this frame is written, but no output frame was given".into()));
        };
        let (h, w) = (d.frame.size()[2], d.frame.size()[3]);
        let f = self.upscale_factor();
        if layout.size() != (w * f, h * f) {
            return Err(Error::Frame(format!(
                "a {w}x{h} frame{} does not fill a {}x{} output",
                if f > 1 { format!(" upscaled x{f}") } else { String::new() },
                layout.width,
                layout.height
            )));
        }
        if let Some(outcome @ Outcome::PassedThrough { .. }) = d.decided {
            frame::write_frame(&Upscaler::Bicubic(f).upscale(&d.frame.f_to_device(Device::Cpu)?, 0, 0)?, data, layout)?;
            return Ok(outcome);
        }
        let faces = if matches!(self.mode, Mode::Aligned) { 1 } else { d.faces.len() };
        let outcome = match self.fit_to_budget(faces, (w, h))? {
            Some(o) => o,
            None => self.run_with_retry(faces, (w, h), &mut |this: &Self| this.restore(&d, data, layout))?,
        };
        match outcome {
            Outcome::Restored { faces: 0, .. } => Ok(Outcome::NoFaces),
            Outcome::PassedThrough { .. } if f > 1 => {
                frame::write_frame(&Upscaler::Bicubic(f).upscale(&d.frame.f_to_device(Device::Cpu)?, 0, 0)?, data, layout)?;
                Ok(outcome)
            }
            o => Ok(o),
        }
    }

    /// Both stages on a frame restored in place (no upscaling).
    pub fn process(&mut self, data: &mut [u8], layout: &PackedLayout, dt: f64) -> Result<Outcome, Error> {
        let d = self.begin(data, layout, dt)?;
        self.finish(d, Some((data, layout)))
    }

    /// The work of one try at a frame under the current plan: the faces restored.
    fn restore(&self, d: &Detections, data: &mut [u8], layout: &PackedLayout) -> Result<usize, Error> {
        match &self.mode {
            Mode::Aligned => self.restore_aligned(&d.frame, data, layout).map(|_| 1),
            Mode::Faces(stage) => {
                let ahead = d.ahead.restored().filter(|a| a.fits(&self.ladder.plan()));
                self.restore_onto(stage, &d.frame, &d.frame, (&d.faces, &d.ids, &d.thumbs), ahead, Some((data, layout))).map(|r| r.restored)
            }
            Mode::Upscaled(stage, up) => {
                let background = up.upscale(&d.frame, self.ladder.plan().tile.unwrap_or(0), self.tile_overlap)?;
                let mut restored = 0;
                if !d.faces.is_empty() {
                    let f = up.factor();
                    // Pixel centres: x in the frame is (x + 0.5) * f - 0.5 in the upscaled one.
                    let scale = |v: f32| (v + 0.5) * f as f32 - 0.5;
                    let faces: Vec<Face> = d
                        .faces
                        .iter()
                        .map(|x| Face {
                            bbox: x.bbox.map(scale),
                            score: x.score,
                            landmarks: x.landmarks.map(|[a, b]| [scale(a), scale(b)]),
                        })
                        .collect();
                    // Crops come from the frame upscaled bilinearly, as GPEN takes them; the faces
                    // are composed into the upscaled frame, which then comes down once.
                    let (h, w) = (d.frame.size()[2], d.frame.size()[3]);
                    let crops_from = d.frame.f_upsample_bilinear2d([h * f, w * f], false, None, None)?.f_round()?.f_clamp(0.0, 255.0)?;
                    restored = self.restore_onto(stage, &crops_from, &background, (&faces, &d.ids, &d.thumbs), None, None)?.restored;
                }
                frame::write_frame(&background, data, layout)?;
                Ok(restored)
            }
        }
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
                return self.ladder.give_up(reason).map(Some);
            }
        }
    }

    /// Runs `work` (which returns the faces restored); on out-of-memory releases the cache and
    /// retries once on the next rung (policy `degrade`), else the policy decides.
    fn run_with_retry(
        &mut self,
        faces: usize,
        frame: (i64, i64),
        work: &mut dyn FnMut(&Self) -> Result<usize, Error>,
    ) -> Result<Outcome, Error> {
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
                        return self.ladder.give_up(reason);
                    }
                    (retried, stepped) = (true, true);
                    if !self.step_down()? {
                        return self.ladder.give_up(reason);
                    }
                    self.banding = self.banding_for(&self.ladder.plan(), faces, frame);
                }
                Err(e) => return Err(e),
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

    /// Loads (or shares) the model of `plan`; the old one goes, unless another stream holds it,
    /// as soon as the new one is here.
    fn switch_to(&mut self, plan: Plan) -> Result<(), Error> {
        let current = self.ladder.plan();
        let path =
            if plan.size == current.size { self.model_path.clone() } else { resolve_model_path(self.model_source.as_deref(), plan.size) };
        let kind = compute_kind(plan.half, self.device);
        // Everything the plan needs is loaded before anything is replaced, so that a load that
        // runs out of memory leaves the current plan whole.
        let model = registry::generator(&path, self.model_key.as_deref(), self.device, kind)?;
        if let Mode::Faces(stage) | Mode::Upscaled(stage, _) = &mut self.mode {
            // The parser goes with the rectangle rung and comes back in the plan's precision.
            let parser = match (&stage.parse_path, plan.parse) {
                (Some(p), true) => Some(registry::parser(p, self.device, kind)?),
                _ => None,
            };
            if plan.size != current.size {
                stage.paster = Paster::new(model.config().size, self.device, stage.settings.mask.regions)?;
            }
            // Kept faces and masks are of the old plan's size and precision.
            stage.tracks.get_mut().clear();
            stage.parser = parser;
        }
        self.model = model;
        self.model_path = path;
        self.whole_maps_failed = false;
        memory::release_cached();
        Ok(())
    }

    /// A still image's faces (no tracking), best first, filtered by size and count; keep the
    /// result for [`restore_faces`](Self::restore_faces).
    pub fn detect(&self, data: &[u8], layout: &PackedLayout) -> Result<Detections, Error> {
        let stage = self.face_stage()?;
        let frame = frame::to_tensor(data, layout, self.device)?;
        let (faces, _) = find_faces(&stage.detector, &stage.settings, &frame, &[])?;
        Ok(Detections { faces, detected: true, ..Detections::empty(frame, None, None) })
    }

    /// A still image with faces found elsewhere (another detector, a previous pass, metadata):
    /// the frame uploaded with `faces`, ready for [`restore_faces`](Self::restore_faces) or
    /// [`finish`](Self::finish).
    pub fn with_faces(&self, data: &[u8], layout: &PackedLayout, faces: Vec<Face>) -> Result<Detections, Error> {
        let frame = frame::to_tensor(data, layout, self.device)?;
        Ok(Detections { faces, ..Detections::empty(frame, None, None) })
    }

    /// Restores the detected faces and pastes them back into the frame in place, with no
    /// memory policy (for tests and benchmarks of the stages).
    pub fn restore_faces(&mut self, d: &Detections, data: &mut [u8], layout: &PackedLayout) -> Result<PasteReport, Error> {
        // The frame's tracks take up the state its predecessor left (blending, flicker meter).
        self.take_up(d);
        let mut report =
            self.restore_onto(self.face_stage()?, &d.frame, &d.frame, (&d.faces, &d.ids, &d.thumbs), None, Some((data, layout)))?;
        report.timings.registration = d.registration;
        Ok(report)
    }

    fn face_stage(&self) -> Result<&FaceStage, Error> {
        match &self.mode {
            Mode::Faces(s) | Mode::Upscaled(s, _) => Ok(s),
            Mode::Aligned => Err(Error::invalid(Setting::Mode, "faces are found in whole frames only", "restore whole frames")),
        }
    }

    /// Changes the face settings that may change while frames flow; they apply from the next
    /// frame on. No-op for aligned faces.
    pub fn set_live(&mut self, live: LiveSettings) -> Result<(), Error> {
        live.validate()?;
        if let Mode::Faces(stage) | Mode::Upscaled(stage, _) = &mut self.mode {
            stage.settings.live = live;
            stage.video.set_smoothing(live.smoothing);
        }
        Ok(())
    }

    /// Ends every track and forgets the previous frame (a seek, a flush, new caps): the next
    /// frame is detected afresh.
    pub fn reset_tracks(&mut self) {
        if let Mode::Faces(stage) | Mode::Upscaled(stage, _) = &mut self.mode {
            stage.video.reset();
            stage.lock.clear();
            stage.tracks.get_mut().clear();
            stage.flicker.get_mut().forget();
        }
    }

    /// What tracking did so far (zeros for aligned faces).
    pub fn video_counters(&self) -> VideoCounters {
        self.face_stage().map(|s| s.video.counters()).unwrap_or_default()
    }

    /// How much restored faces changed from frame to frame against the input so far (one read
    /// from the device; zeros for aligned faces).
    pub fn flicker(&self) -> Result<Flicker, Error> {
        match self.face_stage() {
            Ok(stage) => stage.flicker.borrow().read(),
            Err(_) => Ok(Flicker::default()),
        }
    }

    /// Restored faces kept by live tracks for blending (at most one per track).
    pub fn faces_kept(&self) -> usize {
        self.face_stage().map(|s| s.tracks.borrow().faces_kept()).unwrap_or(0)
    }

    /// The face-parsing checkpoint faces are pasted through now (`None`: the rectangle).
    pub fn parse_model(&self) -> Option<&Path> {
        let stage = self.face_stage().ok()?;
        stage.parser.as_ref().and(stage.parse_path.as_deref())
    }

    /// The detector file and its variant, for whole frames.
    pub fn detector(&self) -> Option<(&Path, DetectorVariant)> {
        self.face_stage().ok().map(|s| (s.detector_path.as_path(), s.detector.variant()))
    }

    /// The plan frames are processed with now.
    pub fn plan(&self) -> Plan {
        self.ladder.plan()
    }

    /// The memory budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn model(&self) -> &FullGenerator {
        &self.model
    }

    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// 1 when nothing is upscaled.
    pub fn upscale_factor(&self) -> i64 {
        match &self.mode {
            Mode::Upscaled(_, u) => u.factor(),
            _ => 1,
        }
    }

    /// Predicted peak bytes of `plan` for a frame of `width x height` with `faces` faces, banded
    /// as the restorer would band it.
    pub fn estimate(&self, plan: &Plan, faces: usize, frame: (i64, i64)) -> u64 {
        self.estimate_with(plan, faces, frame, self.banding_for(plan, faces, frame))
    }

    /// Banding saves memory for extra work: recomputed halo rows and many small launches. On the
    /// CPU it lowers the resident peak for little time, so it stays; on a GPU, whole maps unless
    /// they do not fit the budget.
    fn banding_for(&self, plan: &Plan, faces: usize, frame: (i64, i64)) -> Banding {
        match self.device {
            Device::Cpu => Banding::Default,
            _ if self.whole_maps_failed => Banding::Default,
            _ if self.estimate_with(plan, faces, frame, Banding::Off) <= self.budget => Banding::Off,
            _ => Banding::Default,
        }
    }

    fn estimate_with(&self, plan: &Plan, faces: usize, frame: (i64, i64), banding: Banding) -> u64 {
        let official;
        let cfg = if plan.size == self.model.config().size {
            self.model.config()
        } else {
            official = GpenConfig::official(plan.size);
            &official
        };
        let up = match (&self.mode, plan.tile) {
            (Mode::Upscaled(_, u), Some(tile)) => u.peak_bytes(tile, frame),
            _ => 0,
        };
        let f = self.upscale_factor();
        self.estimator.peak_bytes_with(cfg, plan, faces, (frame.0 * f, frame.1 * f), banding) + up
    }
}

/// The faces of a frame tensor, best first, filtered by size and count; `extra` device values
/// are read in the same copy as the detections.
fn find_faces(
    detector: &RetinaFace,
    settings: &FaceSettings,
    frame: &Tensor,
    extra: &[&Tensor],
) -> Result<(Vec<Face>, Vec<Vec<f32>>), Error> {
    let _guard = tch::no_grad_guard();
    let (height, width) = (frame.size()[2], frame.size()[3]);
    let live = &settings.live;
    let long = width.max(height) as f64;
    let size = settings.detection_size;
    let main = if size > 0 && long > size as f64 { size as f64 / long } else { 1.0 };
    let mut scales = vec![main];
    if detector.variant() == DetectorVariant::Fd1mb && long * main > 1.5 * REDUCED_PASS {
        scales.push(REDUCED_PASS / long);
    }
    let (mut faces, values) = detect_at_scales_with(detector, frame, &scales, live.threshold, extra)?;
    faces.retain(|face| face.width().min(face.height()) >= live.min_face_size);
    if live.max_faces > 0 {
        faces.truncate(live.max_faces);
    }
    Ok((faces, values))
}
