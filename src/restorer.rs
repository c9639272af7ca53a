//! The restoration core: frames in memory in, restored frames out. It knows nothing of
//! GStreamer, so tests, examples and benchmarks drive it directly.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tch::{Device, Kind, TchError, Tensor};

use crate::align::{self, Alignment, Border};
use crate::detect::{detect_at_scales, DetectorVariant, Face, RetinaFace};
use crate::gpen::{FullGenerator, GpenConfig};
use crate::memory::{self, Estimator, Plan};
use crate::track::{Tracker, TrackerSettings};
use crate::upscale::Upscaler;
use crate::{registry, Error};

/// Environment variable naming the folder where `GPEN-BFR-{size}.pth` files are looked up.
pub const MODEL_DIR_ENV: &str = "GST_GPEN_MODEL_DIR";

/// Face sizes of the released GPEN-BFR models.
pub const SIZES: [i64; 4] = [256, 512, 1024, 2048];

/// The default weights folder: `$GST_GPEN_MODEL_DIR`, else `$XDG_DATA_HOME/gst-gpen/weights`,
/// else `~/.local/share/gst-gpen/weights`.
pub fn default_model_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(MODEL_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("gst-gpen").join("weights")
}

/// The official file name of the GPEN-BFR model for `size`.
pub fn official_file_name(size: i64) -> String {
    format!("GPEN-BFR-{size}.pth")
}

/// `model` may be a checkpoint file or a folder; a folder (or no model at all, meaning the
/// default folder) is searched for the official file name.
pub fn resolve_model_path(model: Option<&Path>, size: i64) -> PathBuf {
    let dir_or_file = model.map(Path::to_path_buf).unwrap_or_else(default_model_dir);
    if dir_or_file.is_dir() {
        dir_or_file.join(official_file_name(size))
    } else {
        dir_or_file
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` and checks that the device exists.
pub fn parse_device(spec: &str) -> Result<Device, Error> {
    let spec = spec.trim();
    // Before anything asks libtorch about CUDA (it answers once); the reason shows below.
    let _ = crate::sys::load_cuda_backend();
    let cuda = |n: usize| {
        let count = tch::Cuda::device_count();
        if (n as i64) < count {
            Ok(Device::Cuda(n))
        } else {
            Err(Error::Settings(format!(
                "device `{spec}` was requested but libtorch sees {count} CUDA device(s) ({}); use \
                 device=cpu, or device=auto to pick CUDA when present",
                crate::sys::load_cuda_backend().err().unwrap_or("no GPU visible")
            )))
        }
    };
    match spec {
        "auto" | "" => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => cuda(n),
            None => Err(Error::Settings(format!("unknown device `{spec}`: expected auto, cpu, cuda or cuda:N (N = 0, 1, …)"))),
        },
    }
}

/// The compute precision for `fp16` on a device: float16 on CUDA; bfloat16 on the CPU, where
/// float16 convolutions have no fast kernels (about 170 times slower than fp32).
pub fn compute_kind(fp16: bool, device: Device) -> Kind {
    match (fp16, device) {
        (false, _) => Kind::Float,
        (true, Device::Cpu) => Kind::BFloat16,
        (true, _) => Kind::Half,
    }
}

/// What a [`Restorer`] is built from.
#[derive(Debug, Clone)]
pub struct RestorerSettings {
    /// A checkpoint file, or a folder holding `GPEN-BFR-{size}.pth`; `None`: the default folder.
    pub model: Option<PathBuf>,
    /// The key of a wrapped state dict (`g_ema`, …); `None` detects it.
    pub model_key: Option<String>,
    /// The face size the caller asks for; the checkpoint must have it.
    pub size: i64,
    pub fp16: bool,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Frames are aligned faces (no detection); otherwise faces are found in whole frames.
    pub aligned: bool,
    pub faces: FaceSettings,
    pub memory: MemorySettings,
    pub upscale: UpscaleSettings,
}

/// Background upscaling of whole frames (GPEN's `--use_sr`).
#[derive(Debug, Clone, PartialEq)]
pub struct UpscaleSettings {
    /// 1 (off), 2 or 4.
    pub factor: i64,
    /// An RRDBNet checkpoint of that scale; `None`: bicubic.
    pub model: Option<PathBuf>,
    /// Input pixels per tile (0: the whole frame at once).
    pub tile: i64,
    /// Input pixels by which neighbouring tiles overlap and are cross-faded.
    pub overlap: i64,
}

impl Default for UpscaleSettings {
    fn default() -> Self {
        UpscaleSettings { factor: 1, model: None, tile: 0, overlap: 32 }
    }
}

/// What happens to a frame that does not fit in the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryPolicy {
    /// Walk the ladder: half precision, smaller face batches, the next smaller size (when its
    /// checkpoint is in the model folder); when nothing fits, drop the frame.
    #[default]
    Degrade,
    /// Drop the frame.
    Drop,
    /// Leave the frame as it is.
    Passthrough,
    /// Fail.
    Error,
}

/// The memory budget and what to do when a frame does not fit.
#[derive(Debug, Clone, Default)]
pub struct MemorySettings {
    /// MiB the restoration may use (weights included); 0 = what the device has free at start
    /// (on the CPU, the system's available memory).
    pub budget_mib: u64,
    pub policy: MemoryPolicy,
    /// Testing switch: every Nth generator forward fails as out of memory (0 = off); see
    /// [`memory::FAIL_EVERY_ENV`].
    pub fail_every: u64,
}

/// What [`Restorer::process`] did with a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No face in the frame; nothing was written.
    NoFaces,
    /// Faces restored and pasted (whole-frame mode), or the aligned face restored.
    Restored {
        faces: usize,
        plan: Plan,
        /// An out-of-memory error was caught and the frame redone with the next plan.
        retried: bool,
    },
    /// The policy dropped the frame (nothing was written).
    Dropped { reason: String },
    /// The policy left the frame as it was (nothing was written).
    PassedThrough { reason: String },
}

/// Consecutive frames that must succeed on a degraded plan before the better plan is tried again.
pub const RECOVER_AFTER: u32 = 100;

impl Default for RestorerSettings {
    fn default() -> Self {
        RestorerSettings {
            model: None,
            model_key: None,
            size: 512,
            fp16: false,
            device: "auto".into(),
            aligned: false,
            faces: FaceSettings::default(),
            memory: MemorySettings::default(),
            upscale: UpscaleSettings::default(),
        }
    }
}

/// How faces are found and pasted back in whole frames.
#[derive(Debug, Clone)]
pub struct FaceSettings {
    /// A RetinaFace checkpoint, or a folder searched for [`DETECTOR_FILES`]; `None`: the
    /// default weights folder.
    pub detector_model: Option<PathBuf>,
    /// `None` recognises the variant (ResNet-50 files, and the known MobileNet files).
    pub detector_variant: Option<DetectorVariant>,
    /// Minimum face score.
    pub threshold: f64,
    /// Longest side, in pixels, frames are detected at (larger frames are scaled down);
    /// 0 detects at the native size.
    pub detection_size: i64,
    /// Most faces restored per frame (the highest scores); 0 for no limit.
    pub max_faces: usize,
    /// Faces whose box is smaller than this on either side, in pixels, are left alone.
    pub min_face_size: f32,
    /// Blend of restored (1) and original (0) face, as GPEN's `--alpha`.
    pub alpha: f64,
    /// Most faces per generator forward.
    pub face_batch: usize,
    /// Video: strength, 0 (off) to 1, of the smoothing of each tracked face's landmarks.
    pub smoothing: f64,
    /// Video: the detector runs on every Nth frame (and after a scene cut); tracks carry the
    /// faces in between.
    pub detection_interval: u32,
}

impl Default for FaceSettings {
    fn default() -> Self {
        FaceSettings {
            detector_model: None,
            detector_variant: None,
            threshold: 0.9,
            detection_size: 1280,
            max_faces: 32,
            min_face_size: 16.0,
            alpha: 1.0,
            face_batch: 4,
            smoothing: 0.5,
            detection_interval: 1,
        }
    }
}

/// Detector files looked up in a folder, in this order.
pub const DETECTOR_FILES: [&str; 3] = ["RetinaFace-R50.pth", "retinaface-mnet025-fd1mb.pth", "retinaface-mnet025-std.pth"];

/// Faces smaller than this (box side, pixels) get GPEN's light smoothing after restoration.
const SMALL_FACE: f32 = 100.0;

/// Long side of the extra reduced-scale pass of small-anchor detectors, which miss faces that
/// fill the frame.
const REDUCED_PASS: f64 = 320.0;

/// A frame's detections, with the frame as the float tensor they were found on (reused as the
/// background when pasting).
pub struct Detections {
    pub faces: Vec<Face>,
    /// The track of each face ([`Restorer::detect_video`]); empty for a still image.
    pub ids: Vec<u64>,
    /// Whether the detector ran on this frame (else the faces were carried by their tracks).
    pub detected: bool,
    /// Whether this frame began a new scene (every track was ended before it).
    pub scene_cut: bool,
    frame: Tensor,
    /// What the faces are pasted onto when it is not `frame` (the upscaler's output).
    background: Option<Tensor>,
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
    pub crop: std::time::Duration,
    /// The generator forwards.
    pub generator: std::time::Duration,
    /// Smoothing, blending, warping back and writing the frame.
    pub paste: std::time::Duration,
}

impl Detections {
    fn still(faces: Vec<Face>, frame: Tensor) -> Self {
        Detections { faces, ids: Vec::new(), detected: true, scene_cut: false, frame, background: None }
    }
}

impl std::fmt::Debug for Detections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detections")
            .field("faces", &self.faces)
            .field("ids", &self.ids)
            .field("detected", &self.detected)
            .field("scene_cut", &self.scene_cut)
            .finish()
    }
}

/// Where the colour channels of a packed 8-bit RGB-like frame are, and how rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackedLayout {
    pub width: usize,
    pub height: usize,
    /// Bytes from one row to the next (at least `width * pixel_stride`).
    pub stride: usize,
    /// Bytes per pixel: 3 or 4.
    pub pixel_stride: usize,
    /// Byte offsets of R, G and B inside a pixel.
    pub rgb_offsets: [usize; 3],
}

impl PackedLayout {
    fn check(&self, len: usize) -> Result<(), TchError> {
        let row = self.width.checked_mul(self.pixel_stride);
        let ok = self.width > 0
            && self.height > 0
            && self.rgb_offsets.iter().all(|&o| o < self.pixel_stride)
            && row.is_some_and(|r| r <= self.stride)
            && (self.height - 1).checked_mul(self.stride).and_then(|b| b.checked_add(row?)).is_some_and(|n| n <= len);
        if ok {
            Ok(())
        } else {
            Err(TchError::Shape(format!("frame layout {self:?} does not fit a buffer of {len} bytes")))
        }
    }
}

/// GPEN restoration of frames: aligned faces, or whole frames (detect, align, restore, paste).
#[derive(Debug)]
pub struct Restorer {
    /// The model of the current plan, shared with other restorers of the process.
    model: Arc<FullGenerator>,
    model_path: PathBuf,
    settings: RestorerSettings,
    device: Device,
    /// What frames are processed with now, and the better plans left behind, most recent last.
    plan: Plan,
    degraded_from: Vec<Plan>,
    ok_streak: u32,
    budget: u64,
    estimator: Estimator,
    forwards: AtomicU64,
    /// Present in whole-frame mode.
    faces: Option<FaceStage>,
    /// Present when frames are upscaled.
    upscaler: Option<Upscaler>,
}

#[derive(Debug)]
struct FaceStage {
    detector: Arc<RetinaFace>,
    detector_path: PathBuf,
    /// The soft paste mask at the model's size, `1 x 1 x size x size`.
    mask: Tensor,
    settings: FaceSettings,
    video: VideoFaces,
}

/// Mean absolute change (0..1) of the frame's thumbnail above which a frame starts a new scene.
/// The cuts of the Hamilton test clip measure 0.099 to 0.113, motion within its shots at most
/// 0.048.
pub const SCENE_CUT: f64 = 0.075;

/// What a stream's faces carry from frame to frame.
#[derive(Debug, Default)]
struct VideoFaces {
    tracker: Tracker,
    scenes: SceneChange,
    /// Frames since the detector last ran; `None` before the first frame.
    since_detection: Option<u32>,
    counters: VideoCounters,
}

/// What tracking did so far.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct VideoCounters {
    pub detector_runs: u64,
    pub scene_cuts: u64,
    pub tracks_started: u64,
    pub live_tracks: u64,
}

/// How much each frame differs from the previous one, from small grey thumbnails.
#[derive(Debug, Default)]
pub struct SceneChange {
    previous: Option<Tensor>,
}

impl SceneChange {
    /// The mean absolute change (0..1) of the thumbnail of `frame` (`1 x 3 x H x W`, 0..255)
    /// from the previous frame's; 0 for the first frame and after a change of size.
    pub fn observe(&mut self, frame: &Tensor) -> Result<f64, TchError> {
        let _guard = tch::no_grad_guard();
        let (h, w) = (frame.size()[2], frame.size()[3]);
        // A subsample of the pixels: a 1080p frame costs about 30 000 reads, not two million.
        let step = (h.min(w) / 72).max(1);
        let thumb =
            frame.f_slice(2, 0, h, step)?.f_slice(3, 0, w, step)?.f_mean_dim(1, true, Kind::Float)?.f_adaptive_avg_pool2d([18, 32])?;
        let change = match &self.previous {
            Some(prev) if prev.size() == thumb.size() => prev.f_sub(&thumb)?.f_abs()?.f_mean(Kind::Float)?.f_double_value(&[])? / 255.0,
            _ => 0.0,
        };
        self.previous = Some(thumb);
        Ok(change)
    }

    pub fn forget(&mut self) {
        self.previous = None;
    }
}

/// Finds the detector file: a file as given, or the first known name in a folder.
fn resolve_detector_path(model: Option<&Path>) -> Result<PathBuf, Error> {
    let dir_or_file = model.map(Path::to_path_buf).unwrap_or_else(default_model_dir);
    if !dir_or_file.is_dir() {
        return if dir_or_file.exists() {
            Ok(dir_or_file)
        } else {
            Err(Error::Settings(format!("{}: no such detector file; set detector-model=", dir_or_file.display())))
        };
    }
    DETECTOR_FILES.iter().map(|n| dir_or_file.join(n)).find(|p| p.exists()).ok_or_else(|| {
        Error::Settings(format!(
            "{}: no face detector there (looked for {}); install one or set detector-model= to a RetinaFace file",
            dir_or_file.display(),
            DETECTOR_FILES.join(", ")
        ))
    })
}

/// Packed 8-bit frame memory as a `H x W x pixel_stride` tensor over the same bytes.
///
/// # Safety
/// `layout.check(len)` must have passed for the memory at `ptr`, which must stay valid and
/// must not be written through other paths while the tensor is used.
unsafe fn frame_view(ptr: *const u8, layout: &PackedLayout) -> Result<Tensor, TchError> {
    Tensor::f_from_blob(
        ptr,
        &[layout.height as i64, layout.width as i64, layout.pixel_stride as i64],
        &[layout.stride as i64, layout.pixel_stride as i64, 1],
        Kind::Uint8,
        Device::Cpu,
    )
}

impl Restorer {
    /// Loads the model named by `settings`; every failure names the file and the problem.
    pub fn new(settings: &RestorerSettings) -> Result<Self, Error> {
        if !SIZES.contains(&settings.size) {
            return Err(Error::Settings(format!("size {} is not one of 256, 512, 1024, 2048", settings.size)));
        }
        let device = parse_device(&settings.device)?;
        let path = resolve_model_path(settings.model.as_deref(), settings.size);
        if !path.exists() {
            let hint = match &settings.model {
                None => format!(
                    "no model was set, so the default folder was searched; install the official weights there \
                     or set model= to a checkpoint file or folder (or {MODEL_DIR_ENV})"
                ),
                Some(_) => "set model= to an existing checkpoint file or folder".into(),
            };
            return Err(Error::Settings(format!("{}: no such file; {hint}", path.display())));
        }
        // The budget is what is free before our models arrive.
        let budget = match settings.memory.budget_mib {
            0 => memory::figures(device).map(|f| f.free)?,
            mib => mib << 20,
        };
        let model = registry::generator(&path, settings.model_key.as_deref(), device, compute_kind(settings.fp16, device))?;
        let config = model.config();
        if config.size != settings.size {
            return Err(Error::Settings(format!(
                "{}: the checkpoint is GPEN-{} (size {}) but size={} was requested; set size={} or use a {} checkpoint",
                path.display(),
                config.size,
                config.size,
                settings.size,
                config.size,
                settings.size
            )));
        }
        let faces = if settings.aligned {
            None
        } else {
            let f = &settings.faces;
            if !(0.0..=1.0).contains(&f.alpha) || !(0.0..=1.0).contains(&f.threshold) || f.face_batch == 0 {
                return Err(Error::Settings(format!(
                    "alpha ({}) and detection-threshold ({}) must lie in 0..1, face-batch ({}) must be at least 1",
                    f.alpha, f.threshold, f.face_batch
                )));
            }
            let detector_path = resolve_detector_path(f.detector_model.as_deref())?;
            let detector = registry::detector(&detector_path, f.detector_variant, device)?;
            let mask = align::soft_mask(settings.size, device)?;
            if f.detection_interval == 0 || !(0.0..=1.0).contains(&f.smoothing) {
                return Err(Error::Settings(format!(
                    "detection-interval ({}) must be at least 1 and temporal-smoothing ({}) must lie in 0..1",
                    f.detection_interval, f.smoothing
                )));
            }
            let tracker = Tracker::new(TrackerSettings { smoothing: f.smoothing, ..Default::default() });
            let video = VideoFaces { tracker, ..Default::default() };
            Some(FaceStage { detector, detector_path, mask, settings: f.clone(), video })
        };
        let u = &settings.upscale;
        let upscaler = match u.factor {
            1 => None,
            2 | 4 if settings.aligned => {
                return Err(Error::Settings(format!("upscale={} works on whole frames: set aligned=false or upscale=1", u.factor)))
            }
            2 | 4 => {
                crate::upscale::check_tiles(u.tile, u.overlap)?;
                Some(match u.model.as_deref() {
                    Some(p) => Upscaler::with_net(registry::upscaler(p, device)?, u.factor)?,
                    None => Upscaler::Bicubic(u.factor),
                })
            }
            f => return Err(Error::Settings(format!("upscale={f}: the factor must be 1 (off), 2 or 4"))),
        };
        let plan = Plan {
            size: settings.size,
            half: settings.fp16,
            face_batch: if settings.aligned { 1 } else { settings.faces.face_batch },
            tile: upscaler.as_ref().map(|_| u.tile),
        };
        let mut restorer = Restorer {
            model,
            model_path: path,
            settings: settings.clone(),
            device,
            plan,
            degraded_from: Vec::new(),
            ok_streak: 0,
            budget,
            estimator: Estimator::default(),
            forwards: AtomicU64::new(0),
            faces,
            upscaler,
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
        let size = self.plan.size;
        memory::release_cached();
        memory::reset_peak(self.device);
        let before = memory::figures(self.device)?.allocated;
        let x = Tensor::f_zeros([1, 3, size, size], (Kind::Float, self.device))?;
        let _y = self.model.forward(&x)?;
        let peak = memory::figures(self.device)?.peak;
        let elem = if self.plan.half { 2.0 } else { 4.0 };
        let predicted = Estimator::activation_elements(self.model.config(), 1, elem as i64) as f64 * elem;
        if predicted > 0.0 && peak > before {
            self.estimator.calibration = (peak - before) as f64 / predicted;
        }
        memory::release_cached();
        Ok(())
    }

    /// The plan frames are processed with now.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// The memory budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    /// Predicted peak bytes of `plan` for a frame of `width x height` with `faces` faces.
    pub fn estimate(&self, plan: &Plan, faces: usize, frame: (i64, i64)) -> u64 {
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
        self.estimator.peak_bytes(cfg, plan, faces, (frame.0 * f, frame.1 * f)) + up
    }

    /// 1 when nothing is upscaled.
    pub fn upscale_factor(&self) -> i64 {
        self.upscaler.as_ref().map_or(1, Upscaler::factor)
    }

    /// The next rung of the degradation ladder below the current plan, if any.
    fn next_rung(&self) -> Option<Plan> {
        let p = self.plan;
        if !p.half {
            return Some(Plan { half: true, ..p });
        }
        if p.face_batch > 1 {
            return Some(Plan { face_batch: p.face_batch / 2, ..p });
        }
        // Smaller upscaler tiles: from the whole frame to 512, then halves, while a tile keeps
        // more than its overlap.
        if let Some(t) = p.tile {
            let next = if t == 0 { 512 } else { t / 2 };
            if next >= (2 * self.settings.upscale.overlap).max(64) {
                return Some(Plan { tile: Some(next), ..p });
            }
        }
        // A smaller size needs its checkpoint in the model folder.
        let folder = match &self.settings.model {
            None => Some(default_model_dir()),
            Some(m) if m.is_dir() => Some(m.clone()),
            Some(_) => None,
        }?;
        SIZES.iter().rev().find(|&&s| s < p.size && folder.join(official_file_name(s)).exists()).map(|&size| Plan { size, ..p })
    }

    /// Makes `plan` the current plan, loading (or sharing) its model.
    fn switch_to(&mut self, plan: Plan) -> Result<(), Error> {
        let path = if plan.size == self.plan.size {
            self.model_path.clone()
        } else {
            resolve_model_path(self.settings.model.as_deref(), plan.size)
        };
        let kind = compute_kind(plan.half, self.device);
        // The old model goes (unless another stream holds it) as soon as the new one is here.
        self.model = registry::generator(&path, self.settings.model_key.as_deref(), self.device, kind)?;
        if plan.size != self.plan.size {
            if let Some(stage) = &mut self.faces {
                stage.mask = align::soft_mask(plan.size, self.device)?;
            }
        }
        self.model_path = path;
        self.plan = plan;
        memory::release_cached();
        Ok(())
    }

    /// Steps down one rung; false when there is none.
    fn step_down(&mut self) -> Result<bool, Error> {
        let Some(next) = self.next_rung() else { return Ok(false) };
        let from = self.plan;
        self.switch_to(next)?;
        self.degraded_from.push(from);
        self.ok_streak = 0;
        Ok(true)
    }

    /// What the policy does with a frame that cannot be processed in memory.
    fn give_up(&self, reason: String) -> Result<Outcome, Error> {
        match self.settings.memory.policy {
            MemoryPolicy::Degrade | MemoryPolicy::Drop => Ok(Outcome::Dropped { reason }),
            MemoryPolicy::Passthrough => Ok(Outcome::PassedThrough { reason }),
            MemoryPolicy::Error => Err(Error::OutOfMemory(reason)),
        }
    }

    /// Processes a frame under the memory policy: `detections` from [`detect`](Self::detect)
    /// in whole-frame mode, `None` in aligned mode. The plan is first fitted to the budget by
    /// the estimator; an out-of-memory error is caught, cached memory released, and the frame
    /// retried once on the next rung of the ladder (policy `degrade`); otherwise the policy
    /// decides. Other errors are returned.
    pub fn process(&mut self, detections: Option<&Detections>, data: &mut [u8], layout: &PackedLayout) -> Result<Outcome, Error> {
        let faces = match detections {
            Some(d) if d.faces.is_empty() => return Ok(Outcome::NoFaces),
            Some(d) => d.faces.len(),
            None => 1,
        };
        let frame = (layout.width as i64, layout.height as i64);
        if let Some(outcome) = self.fit_to_budget(faces, frame)? {
            return Ok(outcome);
        }
        self.run_with_retry(faces, frame, &mut |this: &Self| match detections {
            Some(d) => this.restore_faces(d, data, layout).map(|r| r.restored),
            None => this.restore_aligned(data, layout).map(|_| 1),
        })
    }

    /// Upscaling mode: the frame the detections were found on, upscaled into `out` (the whole
    /// frame is written), with the faces restored and pasted at the upscaled coordinates, under
    /// the memory policy as [`process`](Self::process). Faces are cropped from the frame
    /// upscaled bilinearly and pasted onto the upscaler's output, as GPEN does. A frame the
    /// policy passes through is upscaled bicubically with its faces untouched.
    pub fn process_upscaled(&mut self, detections: &Detections, out: &mut [u8], out_layout: &PackedLayout) -> Result<Outcome, Error> {
        if self.upscaler.is_none() {
            return Err(Error::Settings("process_upscaled() needs upscale > 1".into()));
        }
        let (h, w) = (detections.frame.size()[2], detections.frame.size()[3]);
        let f = self.upscale_factor();
        if (out_layout.width as i64, out_layout.height as i64) != (w * f, h * f) {
            return Err(Error::Settings(format!(
                "a {w}x{h} frame upscaled x{f} does not fill a {}x{} output",
                out_layout.width, out_layout.height
            )));
        }
        let faces = detections.faces.len();
        let outcome = match self.fit_to_budget(faces, (w, h))? {
            Some(o) => o,
            None => self.run_with_retry(faces, (w, h), &mut |this: &Self| this.upscale_and_restore(detections, out, out_layout))?,
        };
        match outcome {
            Outcome::Restored { faces: 0, .. } => Ok(Outcome::NoFaces),
            Outcome::PassedThrough { .. } => {
                let plain = Upscaler::Bicubic(f).upscale(&detections.frame, 0, 0)?;
                write_frame(&plain, out, out_layout)?;
                Ok(outcome)
            }
            o => Ok(o),
        }
    }

    fn upscale_and_restore(&self, detections: &Detections, out: &mut [u8], layout: &PackedLayout) -> Result<usize, TchError> {
        let up = self.upscaler.as_ref().ok_or_else(|| TchError::Kind("no upscaler".into()))?;
        let background = up.upscale(&detections.frame, self.plan.tile.unwrap_or(0), self.settings.upscale.overlap)?;
        write_frame(&background, out, layout)?;
        if detections.faces.is_empty() {
            return Ok(0);
        }
        let f = up.factor();
        // Pixel centres: x in the frame is (x + 0.5) * f - 0.5 in the upscaled one.
        let scale = |v: f32| (v + 0.5) * f as f32 - 0.5;
        let faces = detections
            .faces
            .iter()
            .map(|x| Face { bbox: x.bbox.map(scale), score: x.score, landmarks: x.landmarks.map(|[a, b]| [scale(a), scale(b)]) })
            .collect();
        let (h, w) = (detections.frame.size()[2], detections.frame.size()[3]);
        let crops_from = detections.frame.f_upsample_bilinear2d([h * f, w * f], false, None, None)?;
        let scaled = Detections { background: Some(background), ..Detections::still(faces, crops_from) };
        self.restore_faces(&scaled, out, layout).map(|r| r.restored)
    }

    /// Steps the plan down until the estimate fits the budget (policy `degrade`); `Some` when
    /// the policy decided the frame's fate instead.
    fn fit_to_budget(&mut self, faces: usize, frame: (i64, i64)) -> Result<Option<Outcome>, Error> {
        loop {
            let need = self.estimate(&self.plan, faces, frame);
            if need <= self.budget {
                return Ok(None);
            }
            let reason = format!(
                "{} needs about {} MiB for {faces} face(s), over the budget of {} MiB",
                self.plan,
                memory::mib(need),
                memory::mib(self.budget)
            );
            if self.settings.memory.policy != MemoryPolicy::Degrade || !self.step_down()? {
                return self.give_up(reason).map(Some);
            }
        }
    }

    /// Runs `work` (which returns the faces restored); on out-of-memory releases the cache and
    /// retries once on the next rung (policy `degrade`), else the policy decides.
    fn run_with_retry(
        &mut self,
        faces: usize,
        frame: (i64, i64),
        work: &mut dyn FnMut(&Self) -> Result<usize, TchError>,
    ) -> Result<Outcome, Error> {
        let mut retried = false;
        loop {
            match work(self) {
                Ok(n) => {
                    self.ok_streak += 1;
                    self.maybe_recover(faces, frame)?;
                    return Ok(Outcome::Restored { faces: n, plan: self.plan, retried });
                }
                Err(e) if memory::is_out_of_memory(&e) => {
                    memory::release_cached();
                    let reason = format!("out of memory with {}: {e}", self.plan);
                    if retried || self.settings.memory.policy != MemoryPolicy::Degrade || !self.step_down()? {
                        return self.give_up(reason);
                    }
                    retried = true;
                }
                Err(e) => return Err(Error::Torch(e)),
            }
        }
    }

    /// After a run of good frames on a degraded plan, goes back up one rung if it fits.
    fn maybe_recover(&mut self, faces: usize, frame: (i64, i64)) -> Result<(), Error> {
        if self.ok_streak < RECOVER_AFTER {
            return Ok(());
        }
        let Some(&better) = self.degraded_from.last() else { return Ok(()) };
        if self.estimate(&better, faces, frame) <= self.budget {
            self.switch_to(better)?;
            self.degraded_from.pop();
        }
        self.ok_streak = 0;
        Ok(())
    }

    /// Counts a generator forward, failing it when the testing switch says so.
    fn before_forward(&self) -> Result<(), TchError> {
        #[cfg(feature = "fault-injection")]
        memory::injected_fault(&self.forwards, self.settings.memory.fail_every)?;
        #[cfg(not(feature = "fault-injection"))]
        let _ = &self.forwards;
        Ok(())
    }

    /// The face settings in use (whole-frame mode), to change those that may change while
    /// running: threshold, max_faces, min_face_size, alpha.
    pub fn face_settings_mut(&mut self) -> Option<&mut FaceSettings> {
        self.faces.as_mut().map(|f| &mut f.settings)
    }

    /// The detector file and its variant, in whole-frame mode.
    pub fn detector(&self) -> Option<(&Path, DetectorVariant)> {
        self.faces.as_ref().map(|f| (f.detector_path.as_path(), f.detector.variant()))
    }

    /// Whole-frame mode: the faces of a frame (read only), best first, filtered by size and
    /// count. Keep the result for [`restore_faces`](Self::restore_faces).
    pub fn detect(&self, data: &[u8], layout: &PackedLayout) -> Result<Detections, TchError> {
        let Some(stage) = &self.faces else {
            return Err(TchError::Kind("detect() needs whole-frame mode (aligned=false)".into()));
        };
        let frame = self.frame_tensor(data, layout)?;
        let faces = Self::find_faces(stage, &frame)?;
        Ok(Detections::still(faces, frame))
    }

    /// Whole-frame mode, for the frames of a video, `dt` seconds apart: the faces of this frame
    /// followed along tracks, their landmarks smoothed (`smoothing`); the detector runs on every
    /// `detection_interval`th frame and after a scene cut, and the tracks carry the faces in
    /// between. [`reset_tracks`](Self::reset_tracks) when the stream jumps.
    pub fn detect_video(&mut self, data: &[u8], layout: &PackedLayout, dt: f64) -> Result<Detections, TchError> {
        let frame = self.frame_tensor(data, layout)?;
        let Some(stage) = self.faces.as_mut() else {
            return Err(TchError::Kind("detect_video() needs whole-frame mode (aligned=false)".into()));
        };
        let video = &mut stage.video;
        let scene_cut = video.scenes.observe(&frame)? > SCENE_CUT;
        if scene_cut {
            video.tracker.reset();
            video.counters.scene_cuts += 1;
        }
        video.tracker.settings.smoothing = stage.settings.smoothing;
        let due = match video.since_detection {
            None => true,
            Some(n) => n + 1 >= stage.settings.detection_interval,
        };
        let detected = due || scene_cut;
        let tracked = if detected {
            let faces = Self::find_faces(stage, &frame)?;
            let video = &mut stage.video;
            video.since_detection = Some(0);
            video.counters.detector_runs += 1;
            video.tracker.update(&faces, dt)
        } else {
            let video = &mut stage.video;
            video.since_detection = video.since_detection.map(|n| n + 1);
            video.tracker.predict(dt)
        };
        let video = &mut stage.video;
        video.counters.tracks_started = video.tracker.started();
        video.counters.live_tracks = video.tracker.tracks().len() as u64;
        let (ids, faces) = tracked.into_iter().unzip();
        Ok(Detections { faces, ids, detected, scene_cut, frame, background: None })
    }

    /// Ends every track and forgets the previous frame (a seek, a flush, new caps): the next
    /// frame is detected afresh.
    pub fn reset_tracks(&mut self) {
        if let Some(stage) = self.faces.as_mut() {
            stage.video.tracker.reset();
            stage.video.scenes.forget();
            stage.video.since_detection = None;
        }
    }

    /// What tracking did so far (zeros in aligned mode).
    pub fn video_counters(&self) -> VideoCounters {
        self.faces.as_ref().map(|s| s.video.counters).unwrap_or_default()
    }

    /// One copy of a packed frame into a float RGB `1 x 3 x H x W` tensor on the device; it
    /// stays the background for pasting.
    fn frame_tensor(&self, data: &[u8], layout: &PackedLayout) -> Result<Tensor, TchError> {
        layout.check(data.len())?;
        let _guard = tch::no_grad_guard();
        // SAFETY: checked above; `data` is borrowed for the whole function and only read.
        let view = unsafe { frame_view(data.as_ptr(), layout)? };
        let channels = Tensor::f_from_slice(&layout.rgb_offsets.map(|o| o as i64))?;
        view.f_index_select(2, &channels)?.f_to_device(self.model.device())?.f_permute([2, 0, 1])?.f_unsqueeze(0)?.f_to_kind(Kind::Float)
    }

    /// The faces of a frame tensor, best first, filtered by size and count.
    fn find_faces(stage: &FaceStage, frame: &Tensor) -> Result<Vec<Face>, TchError> {
        let _guard = tch::no_grad_guard();
        let (height, width) = (frame.size()[2], frame.size()[3]);
        let f = &stage.settings;
        let long = width.max(height) as f64;
        let main = if f.detection_size > 0 && long > f.detection_size as f64 { f.detection_size as f64 / long } else { 1.0 };
        let mut scales = vec![main];
        if stage.detector.variant() == DetectorVariant::Fd1mb && long * main > 1.5 * REDUCED_PASS {
            scales.push(REDUCED_PASS / long);
        }
        let mut faces = detect_at_scales(&stage.detector, &frame, &scales, f.threshold)?;
        faces.retain(|face| face.width().min(face.height()) >= f.min_face_size);
        if f.max_faces > 0 {
            faces.truncate(f.max_faces);
        }
        Ok(faces)
    }

    /// Whole-frame mode: restores the detected faces and pastes them back into the frame in
    /// place, blended by the soft mask (overlaps take the per-pixel maximum of the masks, as
    /// GPEN does). Pixels outside the pasted masks keep their value.
    pub fn restore_faces(&self, detections: &Detections, data: &mut [u8], layout: &PackedLayout) -> Result<PasteReport, TchError> {
        let nothing = PasteReport { restored: 0, region: None, mask: None, timings: PasteTimings::default() };
        let mut timings = PasteTimings::default();
        let t0 = std::time::Instant::now();
        let Some(stage) = &self.faces else {
            return Err(TchError::Kind("restore_faces() needs whole-frame mode (aligned=false)".into()));
        };
        layout.check(data.len())?;
        let _guard = tch::no_grad_guard();
        let size = self.model.config().size;
        let frame = &detections.frame;
        let (h, w) = (layout.height as i64, layout.width as i64);
        if frame.size() != [1, 3, h, w] {
            return Err(TchError::Shape(format!("detections of a {:?} frame applied to {w}x{h}", frame.size())));
        }
        let (faces, alignments): (Vec<&Face>, Vec<Alignment>) =
            detections.faces.iter().filter_map(|f| align::align(&f.landmarks, size).map(|a| (f, a))).unzip();
        if faces.is_empty() {
            return Ok(nothing);
        }
        // Faces cut by the frame edge get the edge replicated instead of GPEN's black band,
        // which the generator would otherwise carry into the pasted face.
        let crops = align::crop_faces(frame, &alignments, size, Border::Replicate)?;
        timings.crop = t0.elapsed();
        let t1 = std::time::Instant::now();
        let mut restored = Vec::with_capacity(faces.len());
        let batch = self.plan.face_batch.max(1) as i64;
        for chunk in 0..(faces.len() as i64 + batch - 1) / batch {
            let start = chunk * batch;
            let n = (faces.len() as i64 - start).min(batch);
            let x = crops.f_narrow(0, start, n)?.f_div_scalar(255.0)?.f_sub_scalar(0.5)?.f_div_scalar(0.5)?;
            self.before_forward()?;
            let y = self.model.forward(&x)?;
            restored.push(y.f_mul_scalar(0.5)?.f_add_scalar(0.5)?.f_clamp(0.0, 1.0)?.f_mul_scalar(255.0)?);
        }
        let mut restored = Tensor::f_cat(&restored, 0)?;
        timings.generator = t1.elapsed();
        let t2 = std::time::Instant::now();
        // GPEN smooths small faces lightly, whose restoration is mostly invented detail.
        let small: Vec<i64> =
            faces.iter().enumerate().filter(|(_, f)| f.width().min(f.height()) < SMALL_FACE).map(|(i, _)| i as i64).collect();
        if !small.is_empty() {
            let idx = Tensor::f_from_slice(&small)?.f_to_device(frame.device())?;
            let k = Tensor::f_from_slice(&[1f32, 2., 1., 2., 4., 2., 1., 2., 1.])?
                .f_div_scalar(16.0)?
                .f_reshape([1, 1, 3, 3])?
                .f_repeat([3, 1, 1, 1])?
                .f_to_device(frame.device())?;
            let smooth = restored.f_index_select(0, &idx)?.f_reflection_pad2d([1, 1, 1, 1])?.f_conv2d::<Tensor>(
                &k,
                None,
                [1, 1],
                [0, 0],
                [1, 1],
                3,
            )?;
            restored = restored.f_index_copy(0, &idx, &smooth)?;
        }
        let alpha = stage.settings.alpha;
        if alpha < 1.0 {
            restored = restored.f_mul_scalar(alpha)?.f_add(&crops.f_mul_scalar(1.0 - alpha)?)?;
        }
        // Paste: each face and its mask warped back into its region of the frame, combined over
        // the union of the regions only; that union is then blended and written.
        let regions: Vec<Option<(i64, i64, i64, i64)>> = alignments.iter().map(|a| align::paste_region(&a.tfm_inv, size, (h, w))).collect();
        let Some((ux0, uy0, ux1, uy1)) = regions.iter().flatten().fold(None, |u, &(x0, y0, rw, rh)| {
            Some(match u {
                None => (x0, y0, x0 + rw, y0 + rh),
                Some((a, b, c, d)) => (x0.min(a), y0.min(b), (x0 + rw).max(c), (y0 + rh).max(d)),
            })
        }) else {
            return Ok(nothing);
        };
        let opts = (Kind::Float, frame.device());
        let full_mask = Tensor::f_zeros([1, 1, uy1 - uy0, ux1 - ux0], opts)?;
        let full_img = Tensor::f_zeros([1, 3, uy1 - uy0, ux1 - ux0], opts)?;
        let mut pasted = 0;
        for (i, (a, region)) in alignments.iter().zip(&regions).enumerate() {
            let Some((x0, y0, rw, rh)) = *region else { continue };
            let face = Tensor::f_cat(&[restored.f_narrow(0, i as i64, 1)?, stage.mask.shallow_clone()], 1)?;
            let grid = align::sampling_grid(&[a.tfm_inv.inverse()], (x0, y0), (rh, rw), (size, size), frame.device())?;
            let warped = align::warp(&face, &grid, Border::Zeros)?;
            let (img, mask) = (warped.f_narrow(1, 0, 3)?, warped.f_narrow(1, 3, 1)?);
            let window = |t: &Tensor| t.f_narrow(2, y0 - uy0, rh)?.f_narrow(3, x0 - ux0, rw);
            let mut mask_window = window(&full_mask)?;
            let mut img_window = window(&full_img)?;
            // Per-pixel maximum of the masks; the face with the larger mask wins the pixel.
            let take = mask.f_gt_tensor(&mask_window)?;
            img_window.f_copy_(&img.f_where_self(&take, &img_window)?)?;
            mask_window.f_copy_(&mask.f_where_self(&take, &mask_window)?)?;
            pasted += 1;
        }
        let bg = detections.background.as_ref().unwrap_or(frame).f_narrow(2, uy0, uy1 - uy0)?.f_narrow(3, ux0, ux1 - ux0)?;
        let (m, img) = (full_mask, full_img);
        // bg * (1 - m) + img * m, rounded and saturated (cv2.convertScaleAbs); where m is 0
        // this is bg exactly.
        let out = hwc_bytes(&bg.f_mul(&m.f_neg()?.f_add_scalar(1.0)?)?.f_add(&img.f_mul(&m)?)?)?;
        // SAFETY: checked above; `data` is exclusively borrowed for the whole function.
        let mut view = unsafe { frame_view(data.as_mut_ptr(), layout)? }.f_narrow(0, uy0, uy1 - uy0)?.f_narrow(1, ux0, ux1 - ux0)?;
        let channels = Tensor::f_from_slice(&layout.rgb_offsets.map(|o| o as i64))?;
        let _written = view.f_index_copy_(2, &channels, &out)?;
        timings.paste = t2.elapsed();
        Ok(PasteReport { restored: pasted, region: Some((ux0, uy0, ux1 - ux0, uy1 - uy0)), mask: Some(m), timings })
    }

    pub fn model(&self) -> &FullGenerator {
        &self.model
    }

    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// Restores, in place, a frame that is one aligned face: resized to the model's size when
    /// it differs, restored, and resized back. Channels other than R, G, B are left untouched.
    pub fn restore_aligned(&self, data: &mut [u8], layout: &PackedLayout) -> Result<(), TchError> {
        layout.check(data.len())?;
        let _guard = tch::no_grad_guard();
        let (h, w) = (layout.height as i64, layout.width as i64);
        let size = self.model.config().size;
        // SAFETY: `check` proved that every (row, column, byte) index of this view lies inside
        // `data`, which stays exclusively borrowed (and alive) for the whole function.
        let frame = unsafe { frame_view(data.as_mut_ptr(), layout)? };
        let channels = Tensor::f_from_slice(&layout.rgb_offsets.map(|o| o as i64))?;
        let rgb = frame.f_index_select(2, &channels)?; // h x w x 3, a copy: `frame` is not read again
        let x = rgb
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?
            .f_to_device(self.model.device())?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_sub_scalar(0.5)?
            .f_div_scalar(0.5)?;
        let resized = (h, w) != (size, size);
        let x = if resized { x.f_upsample_bilinear2d([size, size], false, None, None)? } else { x };
        self.before_forward()?;
        let mut y = self.model.forward(&x)?.f_to_kind(Kind::Float)?;
        if resized {
            y = y.f_upsample_bilinear2d([h, w], false, None, None)?;
        }
        // GPEN truncates to uint8; rounding halves the error and matches the reference PNGs.
        let out = y
            .f_mul_scalar(0.5)?
            .f_add_scalar(0.5)?
            .f_clamp(0.0, 1.0)?
            .f_mul_scalar(255.0)?
            .f_round()?
            .f_to_kind(Kind::Uint8)?
            .f_squeeze_dim(0)?
            .f_permute([1, 2, 0])?
            .f_to_device(Device::Cpu)?;
        let mut frame = frame;
        frame.f_index_copy_(2, &channels, &out).map(drop)
    }
}

/// A `1 x 3 x H x W` float 0..255 image as `H x W x 3` bytes on the CPU, rounded and saturated
/// (cv2.convertScaleAbs).
fn hwc_bytes(image: &Tensor) -> Result<Tensor, TchError> {
    image.f_round()?.f_clamp(0.0, 255.0)?.f_to_kind(Kind::Uint8)?.f_squeeze_dim(0)?.f_permute([1, 2, 0])?.f_to_device(Device::Cpu)
}

/// Writes a `1 x 3 x H x W` float 0..255 frame into a packed frame's R, G and B bytes (rounded
/// and saturated); other bytes (alpha, padding) become 255.
fn write_frame(frame: &Tensor, data: &mut [u8], layout: &PackedLayout) -> Result<(), TchError> {
    layout.check(data.len())?;
    let rgb = hwc_bytes(frame)?;
    // SAFETY: `check` proved every index of the view lies in `data`, exclusively borrowed here.
    let mut view = unsafe { frame_view(data.as_mut_ptr(), layout)? };
    if layout.pixel_stride > 3 {
        let _ = view.f_fill_(255)?;
    }
    let channels = Tensor::f_from_slice(&layout.rgb_offsets.map(|o| o as i64))?;
    let _ = view.f_index_copy_(2, &channels, &rgb)?;
    Ok(())
}
