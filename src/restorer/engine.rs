//! The engine: what the streams of a process may share. The models (through the registry), the
//! memory ladder and its budget, the estimator, the generator's banding and the device. Frames
//! and everything that follows them from frame to frame belong to a [`Stream`](super::Stream).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::ahead::{Faults, Forward, GeneratorCounts, GeneratorRuns};
use super::ladder::Ladder;
use super::paste::Paster;
use super::settings::{
    compute_kind, default_model_dir, find_detector, find_model, find_parser, official_file_name, MaskRegions, RestorerSettings, SIZES,
};
use crate::detect::{DetectorVariant, RetinaFace};
use crate::error::{Error, Setting};
use crate::gpen::{Banding, FullGenerator, GpenConfig};
use crate::memory::{self, Estimator, Plan};
use crate::parse::ParseNet;
use crate::registry;
use crate::upscale::Upscaler;

/// The models of whole frames: the detector, the paste constants of the plan's size, the face
/// parser while the plan pastes through parsing masks.
#[derive(Debug)]
pub(super) struct FaceModels {
    pub(super) detector: Arc<RetinaFace>,
    pub(super) detector_path: PathBuf,
    pub(super) paster: Paster,
    pub(super) regions: MaskRegions,
    /// The face-parsing checkpoint found for the parsing mask.
    pub(super) parse_path: Option<PathBuf>,
    /// Loaded while the plan pastes through parsing masks.
    pub(super) parser: Option<Arc<ParseNet>>,
}

/// GPEN's models and the memory they run in, for any number of streams.
#[derive(Debug)]
pub struct Engine {
    /// The model of the current plan, shared with other engines of the process.
    pub(super) model: Arc<FullGenerator>,
    pub(super) model_path: PathBuf,
    /// Where checkpoints of other sizes are looked for (the `model` setting).
    pub(super) model_source: Option<PathBuf>,
    pub(super) model_key: Option<String>,
    pub(super) device: Device,
    pub(super) ladder: Ladder,
    /// How the generator's top levels are banded for the current frame.
    pub(super) banding: Banding,
    /// Whole maps ran out of memory although the estimate fitted: band until the plan changes.
    pub(super) whole_maps_failed: bool,
    pub(super) budget: u64,
    pub(super) estimator: Estimator,
    /// `None` when frames are aligned faces.
    pub(super) faces: Option<FaceModels>,
    /// `Some` when whole frames are upscaled.
    pub(super) upscaler: Option<Upscaler>,
    pub(super) tile_overlap: i64,
    /// Plans switched to so far: what a stream keeps of its faces is of the plan it was made
    /// under, so a stream forgets it when this moves.
    pub(super) epoch: u64,
    /// Generator forwards, counted for the testing switches.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(super) faults: Arc<Faults>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub(super) fail_every: u64,
    /// Generator batches run, and the faces in them.
    pub(super) runs: Arc<GeneratorRuns>,
}

impl Engine {
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
        let kind = compute_kind(settings.fp16, device);
        let model = registry::generator(&path, settings.model_key.as_deref(), device, kind)?;
        let size = model.config().size;
        if size != settings.size {
            return Err(Error::invalid(
                Setting::Size,
                format!("{} was asked for, but {} is GPEN-{size}", settings.size, path.display()),
                format!("ask for {size}, or use a GPEN-{} checkpoint", settings.size),
            ));
        }
        let faces = match settings.aligned {
            true => None,
            false => {
                let f = &settings.faces;
                let detector_path = find_detector(f.detector_model.as_deref())?;
                let parse_path = find_parser(&f.mask, settings.model.as_deref())?;
                let parser = parse_path.as_deref().map(|p| registry::parser(p, device, kind)).transpose()?;
                Some(FaceModels {
                    detector: registry::detector(&detector_path, f.detector_variant, device)?,
                    detector_path,
                    paster: Paster::new(size, device, f.mask.regions)?,
                    regions: f.mask.regions,
                    parse_path,
                    parser,
                })
            }
        };
        let u = &settings.upscale;
        let upscaler = match (settings.aligned, u.factor, u.model.as_deref()) {
            (true, _, _) | (false, 1, _) => None,
            (false, f, Some(p)) => Some(Upscaler::with_net(registry::upscaler(p, device)?, f)?),
            (false, f, None) => Some(Upscaler::Bicubic(f)),
        };
        let plan = Plan {
            size,
            half: settings.fp16,
            face_batch: if settings.aligned { 1 } else { settings.faces.face_batch },
            tile: upscaler.is_some().then_some(u.tile),
            parse: faces.as_ref().is_some_and(|f| f.parser.is_some()),
        };
        // Smaller sizes are rungs of the ladder when their checkpoints sit in the model folder.
        let folder = match &settings.model {
            None => Some(default_model_dir()),
            Some(m) if m.is_dir() => Some(m.clone()),
            Some(_) => None,
        };
        let smaller = folder.map_or(Vec::new(), |d| SIZES.into_iter().filter(|&s| d.join(official_file_name(s)).exists()).collect());
        let mut engine = Engine {
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
            faces,
            upscaler,
            tile_overlap: u.overlap,
            epoch: 0,
            faults: Arc::default(),
            fail_every: settings.memory.fail_every,
            runs: Arc::default(),
        };
        engine.calibrate()?;
        Ok(engine)
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

    /// The models of whole frames, or why there are none.
    pub(super) fn face_models(&self) -> Result<&FaceModels, Error> {
        self.faces.as_ref().ok_or_else(|| Error::invalid(Setting::Mode, "faces are found in whole frames only", "restore whole frames"))
    }

    /// The face-parsing checkpoint faces are pasted through now (`None`: the rectangle).
    pub fn parse_model(&self) -> Option<&Path> {
        let f = self.faces.as_ref()?;
        f.parser.as_ref().and(f.parse_path.as_deref())
    }

    /// The detector file and its variant, for whole frames.
    pub fn detector(&self) -> Option<(&Path, DetectorVariant)> {
        self.faces.as_ref().map(|f| (f.detector_path.as_path(), f.detector.variant()))
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
        self.upscaler.as_ref().map_or(1, Upscaler::factor)
    }

    /// Generator batches run so far, the faces in them and their time.
    pub fn generator_runs(&self) -> GeneratorCounts {
        self.runs.counts()
    }

    /// Every generator forward from now on takes `ms` milliseconds more (a testing switch).
    #[cfg(feature = "fault-injection")]
    pub fn slow_forwards(&self, ms: u64) {
        self.faults.delay_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Generator forwards from now on return their input (a testing switch: benchmarks of the
    /// rest of the work).
    #[cfg(feature = "fault-injection")]
    pub fn skip_forwards(&self) {
        self.faults.skip.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The generator's forwards as the current plan runs them.
    pub(super) fn generator_forward(&self) -> Forward {
        Forward {
            model: self.model.clone(),
            banding: self.banding,
            batch: self.ladder.plan().face_batch.max(1) as i64,
            runs: self.runs.clone(),
            faults: self.faults.clone(),
            fail_every: self.fail_every,
        }
    }

    /// Predicted peak bytes of `plan` for a frame of `width x height` with `faces` faces, banded
    /// as the engine would band it.
    pub fn estimate(&self, plan: &Plan, faces: usize, frame: (i64, i64)) -> u64 {
        self.estimate_with(plan, faces, frame, self.banding_for(plan, faces, frame))
    }

    /// Banding saves memory for extra work: recomputed halo rows and many small launches. On the
    /// CPU it lowers the resident peak for little time, so it stays; on a GPU, whole maps unless
    /// they do not fit the budget.
    pub(super) fn banding_for(&self, plan: &Plan, faces: usize, frame: (i64, i64)) -> Banding {
        match self.device {
            Device::Cpu => Banding::Default,
            _ if self.whole_maps_failed => Banding::Default,
            _ if self.estimate_with(plan, faces, frame, Banding::Off) <= self.budget => Banding::Off,
            _ => Banding::Default,
        }
    }

    pub(super) fn estimate_with(&self, plan: &Plan, faces: usize, frame: (i64, i64), banding: Banding) -> u64 {
        let official;
        let cfg = if plan.size == self.model.config().size {
            self.model.config()
        } else {
            official = GpenConfig::official(plan.size);
            &official
        };
        let up = match (&self.upscaler, plan.tile) {
            (Some(u), Some(tile)) => u.peak_bytes(tile, frame),
            _ => 0,
        };
        let f = self.upscale_factor();
        self.estimator.peak_bytes_with(cfg, plan, faces, (frame.0 * f, frame.1 * f), banding) + up
    }
}
