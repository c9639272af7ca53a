//! The `gpenfilter` element: properties, start/stop and the per-frame glue around a
//! [`Restorer`]. All the restoration work lives in the GStreamer-free core.
//!
//! Whole-frame mode detects faces in `before_transform`, on the read-only input; a frame
//! without faces is then passed through untouched (BaseTransform neither copies nor maps it
//! writable), and a frame with faces is restored in place in `transform_frame_ip`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::{DetectorVariant, MemoryPolicy, Size, Upscale};
use crate::memory;
use crate::restorer::{
    Detections, FaceSettings, MemorySettings, Outcome, PackedLayout, Restorer, RestorerSettings, UpscaleSettings, MODEL_DIR_ENV,
};
use crate::Error;

static CAT: Lazy<gst::DebugCategory> =
    Lazy::new(|| gst::DebugCategory::new("gpenfilter", gst::DebugColorFlags::empty(), Some("GPEN face restoration")));

const DEFAULT_SIZE: Size = Size::S512;
const DEFAULT_FP16: bool = false;
const DEFAULT_DEVICE: &str = "auto";
const DEFAULT_ALIGNED: bool = false;

#[derive(Debug, Clone)]
struct Settings {
    model: Option<String>,
    model_key: Option<String>,
    size: Size,
    fp16: bool,
    device: String,
    aligned: bool,
    detector_model: Option<String>,
    detector_variant: DetectorVariant,
    faces: FaceSettings,
    vram_budget: u32,
    memory_policy: MemoryPolicy,
    post_messages: bool,
    post_faces: bool,
    upscale: Upscale,
    upscaler_model: Option<String>,
    tile_size: u32,
    tile_overlap: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: None,
            model_key: None,
            size: DEFAULT_SIZE,
            fp16: DEFAULT_FP16,
            device: DEFAULT_DEVICE.into(),
            aligned: DEFAULT_ALIGNED,
            detector_model: None,
            detector_variant: DetectorVariant::Auto,
            faces: FaceSettings::default(),
            vram_budget: 0,
            memory_policy: MemoryPolicy::Degrade,
            post_messages: false,
            post_faces: false,
            upscale: Upscale::X1,
            upscaler_model: None,
            tile_size: UpscaleSettings::default().tile as u32,
            tile_overlap: UpscaleSettings::default().overlap as u32,
        }
    }
}

/// Counters behind the `stats` property (and the `post-messages` element messages).
#[derive(Debug, Default, Clone)]
struct Stats {
    frames_in: u64,
    frames_out: u64,
    /// Dropped by the memory policy.
    frames_dropped: u64,
    /// Dropped by QoS because they were late.
    frames_late_dropped: u64,
    /// Pushed unprocessed by the memory policy.
    frames_passed_through: u64,
    /// In the element when a flushing seek discarded them (GStreamer's flush semantics).
    frames_flushed: u64,
    frames_without_faces: u64,
    faces_detected: u64,
    faces_restored: u64,
    /// Frames the detector ran on (the others' faces were carried by their tracks).
    detector_runs: u64,
    scene_cuts: u64,
    tracks_started: u64,
    /// Frames redone on the next plan after an out-of-memory error.
    retries: u64,
    plan: String,
    device: String,
    timed_frames: u64,
    total_time: Duration,
    worst_time: Duration,
}

impl Stats {
    fn structure(&self) -> gst::Structure {
        let mean = if self.timed_frames > 0 { self.total_time / self.timed_frames as u32 } else { Duration::ZERO };
        let device = match self.device.as_str() {
            "" => None,
            d if d.starts_with("Cuda") => d.trim_start_matches("Cuda(").trim_end_matches(')').parse().ok().map(tch::Device::Cuda),
            _ => Some(tch::Device::Cpu),
        };
        let peak = device.and_then(|d| memory::figures(d).ok()).map(|f| memory::mib(f.peak)).unwrap_or(0);
        gst::Structure::builder("application/x-gpenfilter-stats")
            .field("frames-in", self.frames_in)
            .field("frames-out", self.frames_out)
            .field("frames-dropped", self.frames_dropped)
            .field("frames-late-dropped", self.frames_late_dropped)
            .field("frames-passed-through", self.frames_passed_through)
            .field("frames-flushed", self.frames_flushed)
            .field("frames-without-faces", self.frames_without_faces)
            .field("faces-detected", self.faces_detected)
            .field("faces-restored", self.faces_restored)
            .field("detector-runs", self.detector_runs)
            .field("scene-cuts", self.scene_cuts)
            .field("tracks-started", self.tracks_started)
            .field("retries", self.retries)
            .field("plan", &self.plan)
            .field("peak-memory-mib", peak)
            .field("mean-ms", mean.as_secs_f64() * 1e3)
            .field("worst-ms", self.worst_time.as_secs_f64() * 1e3)
            .build()
    }

    fn time(&mut self, d: Duration) {
        self.timed_frames += 1;
        self.total_time += d;
        self.worst_time = self.worst_time.max(d);
    }
}

/// Exists between `start()` and `stop()`.
struct State {
    restorer: Restorer,
    info: Option<gst_video::VideoInfo>,
    /// Detections of the buffer between `before_transform` and `transform_frame_ip`.
    pending: Option<Result<Detections, tch::TchError>>,
    /// When `before_transform` began with the current buffer.
    started: Option<Instant>,
    /// Processing time last reported to the latency query.
    reported_latency: Duration,
    last_post: Option<Instant>,
    /// Timestamp of the previous frame, for the time between frames that tracking needs.
    last_pts: Option<gst::ClockTime>,
}

#[derive(Default)]
pub struct GpenFilter {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Arc<Mutex<Stats>>,
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
        static PROPERTIES: Lazy<Vec<glib::ParamSpec>> = Lazy::new(|| {
            let d = FaceSettings::default();
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model")
                    .blurb(&format!(
                        "GPEN checkpoint (.pth or .safetensors), or a folder in which GPEN-BFR-<size>.pth is \
                         looked up; unset: the folder ${MODEL_DIR_ENV}, else $XDG_DATA_HOME/gst-gpen/weights \
                         (~/.local/share/gst-gpen/weights)"
                    ))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("model-key")
                    .nick("Model key")
                    .blurb(
                        "Key holding the state dict in a wrapped checkpoint (e.g. g_ema); unset: a bare state \
                         dict, else the first of g_ema, params_ema, params, state_dict",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("size", DEFAULT_SIZE)
                    .nick("Size")
                    .blurb("Face resolution in pixels the model works at; the checkpoint must be of this size")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("fp16")
                    .nick("Half precision")
                    .blurb(
                        "Run the convolutions in half precision: float16 on CUDA, bfloat16 on CPU (float16 \
                         convolutions are about 170 times slower than fp32 on CPU); latents and the RGB path \
                         stay fp32",
                    )
                    .default_value(DEFAULT_FP16)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb("Where the models run: auto (CUDA device 0 if available, else CPU), cpu, cuda, cuda:N")
                    .default_value(Some(DEFAULT_DEVICE))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("aligned")
                    .nick("Aligned faces")
                    .blurb(
                        "Each frame is one face already aligned to GPEN's template (GPEN's --aligned mode): it \
                         is resized to size x size pixels, restored, and resized back; no detection",
                    )
                    .default_value(DEFAULT_ALIGNED)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("detector-model")
                    .nick("Detector model")
                    .blurb(
                        "RetinaFace checkpoint (MobileNet-0.25 or ResNet-50), or a folder searched for \
                         RetinaFace-R50.pth, retinaface-mnet025-fd1mb.pth, retinaface-mnet025-std.pth; unset: \
                         the model folder (see model)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("detector-variant", DetectorVariant::Auto)
                    .nick("Detector variant")
                    .blurb(
                        "Activation and anchors of a MobileNet-0.25 detector; auto recognises ResNet-50 files \
                         and the published MobileNet files, and refuses others",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("detection-threshold")
                    .nick("Detection threshold")
                    .blurb("Minimum face score (0..1) for a face to be restored")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(d.threshold)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("detection-size")
                    .nick("Detection size")
                    .blurb(
                        "Longest side in pixels frames are scaled down to for detection (coordinates are mapped \
                         back); 0 = detect at the native size",
                    )
                    .maximum(16384)
                    .default_value(d.detection_size as u32)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-faces")
                    .nick("Maximum faces")
                    .blurb("Most faces restored per frame, the highest scores first; 0 = no limit")
                    .maximum(4096)
                    .default_value(d.max_faces as u32)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("min-face-size")
                    .nick("Minimum face size")
                    .blurb("Faces whose box is smaller than this many pixels on either side are left as they are")
                    .maximum(16384)
                    .default_value(d.min_face_size as u32)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("alpha")
                    .nick("Alpha")
                    .blurb("Blend of the restored face with the original: 1 = restored only, 0 = original")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(d.alpha)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("temporal-smoothing")
                    .nick("Temporal smoothing")
                    .blurb(
                        "Strength (0 = off, 1 = strongest) of the smoothing of each tracked face's landmarks \
                         across frames (One-Euro filter: still faces steady, moving ones followed); at 0.5 a \
                         still face's landmarks are low-passed at 1 Hz",
                    )
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(d.smoothing)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("detection-interval")
                    .nick("Detection interval")
                    .blurb(
                        "Frames per detector run: 1 = every frame; N: every Nth frame and after scene cuts, \
                         tracks moving the faces at their last speed in between (faster; faces entering or \
                         turning are picked up up to N-1 frames late)",
                    )
                    .minimum(1)
                    .maximum(1000)
                    .default_value(d.detection_interval)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("face-batch")
                    .nick("Face batch")
                    .blurb("Most faces restored together in one forward pass (memory grows with it)")
                    .minimum(1)
                    .maximum(256)
                    .default_value(d.face_batch as u32)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("vram-budget")
                    .nick("Memory budget")
                    .blurb(
                        "MiB of device memory the element may use, weights included (on CPU: system memory); \
                         0 = what the device has free at start",
                    )
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("memory-policy", MemoryPolicy::Degrade)
                    .nick("Memory policy")
                    .blurb(
                        "What happens to a frame that does not fit the budget, or runs out of memory (then it \
                         is retried once on the next plan when degrading); every drop is counted and posts a \
                         QoS message",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("upscale", Upscale::X1)
                    .nick("Upscale")
                    .blurb(
                        "Background upscaling factor: the output is this many times the input in width and height; \
                         faces are restored at the upscaled size (GPEN's --use_sr)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("upscaler-model")
                    .nick("Upscaler model")
                    .blurb(
                        "RRDBNet checkpoint of the upscale factor (GPEN's realesrnet_x2/x4.pth, Real-ESRGAN's \
                         RealESRGAN_x2plus/x4plus.pth); unset: bicubic interpolation",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("tile-size")
                    .nick("Tile size")
                    .blurb(
                        "Input pixels per side of the tiles the upscaler works on, bounding its memory (0 = the \
                         whole frame at once); the memory policy may lower it",
                    )
                    .maximum(1 << 16)
                    .default_value(UpscaleSettings::default().tile as u32)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("tile-overlap")
                    .nick("Tile overlap")
                    .blurb(
                        "Input pixels by which neighbouring upscaler tiles overlap and are cross-faded (no seams); \
                         tile-size must be at least twice this",
                    )
                    .maximum(1 << 12)
                    .default_value(UpscaleSettings::default().overlap as u32)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("post-messages")
                    .nick("Post messages")
                    .blurb("Post the statistics as a gpenfilter-stats element message, at most once per second, and a last one at EOS (field eos=true)")
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("post-faces")
                    .nick("Post faces")
                    .blurb(
                        "Post a gpenfilter-faces element message per frame: its timestamps, whether the detector \
                         ran, whether a scene cut began, and each face's track id, box and five landmarks \
                         (pixels, as aligned)",
                    )
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Since start: frames-in, frames-out, frames-dropped (memory policy), frames-late-dropped \
                         (QoS), frames-passed-through (memory policy), frames-flushed (by a flushing seek), \
                         frames-without-faces, faces-detected, \
                         faces-restored, detector-runs, scene-cuts, tracks-started, retries, plan, \
                         peak-memory-mib, mean-ms, worst-ms",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        const CHECKED: &str = "type checked upstream";
        match pspec.name() {
            "model" => s.model = non_empty(value.get().expect(CHECKED)),
            "model-key" => s.model_key = non_empty(value.get().expect(CHECKED)),
            "size" => s.size = value.get().expect(CHECKED),
            "fp16" => s.fp16 = value.get().expect(CHECKED),
            "device" => s.device = non_empty(value.get().expect(CHECKED)).unwrap_or(DEFAULT_DEVICE.into()),
            "aligned" => s.aligned = value.get().expect(CHECKED),
            "detector-model" => s.detector_model = non_empty(value.get().expect(CHECKED)),
            "detector-variant" => s.detector_variant = value.get().expect(CHECKED),
            "detection-threshold" => s.faces.threshold = value.get().expect(CHECKED),
            "detection-size" => s.faces.detection_size = value.get::<u32>().expect(CHECKED) as i64,
            "max-faces" => s.faces.max_faces = value.get::<u32>().expect(CHECKED) as usize,
            "min-face-size" => s.faces.min_face_size = value.get::<u32>().expect(CHECKED) as f32,
            "alpha" => s.faces.alpha = value.get().expect(CHECKED),
            "face-batch" => s.faces.face_batch = value.get::<u32>().expect(CHECKED) as usize,
            "temporal-smoothing" => s.faces.smoothing = value.get().expect(CHECKED),
            "detection-interval" => s.faces.detection_interval = value.get().expect(CHECKED),
            "post-faces" => s.post_faces = value.get().expect(CHECKED),
            "vram-budget" => s.vram_budget = value.get().expect(CHECKED),
            "memory-policy" => s.memory_policy = value.get().expect(CHECKED),
            "post-messages" => s.post_messages = value.get().expect(CHECKED),
            "upscale" => s.upscale = value.get().expect(CHECKED),
            "upscaler-model" => s.upscaler_model = non_empty(value.get().expect(CHECKED)),
            "tile-size" => s.tile_size = value.get().expect(CHECKED),
            "tile-overlap" => s.tile_overlap = value.get().expect(CHECKED),
            other => unreachable!("unknown property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats.lock().unwrap().structure().to_value();
        }
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => s.model.to_value(),
            "model-key" => s.model_key.to_value(),
            "size" => s.size.to_value(),
            "fp16" => s.fp16.to_value(),
            "device" => s.device.to_value(),
            "aligned" => s.aligned.to_value(),
            "detector-model" => s.detector_model.to_value(),
            "detector-variant" => s.detector_variant.to_value(),
            "detection-threshold" => s.faces.threshold.to_value(),
            "detection-size" => (s.faces.detection_size as u32).to_value(),
            "max-faces" => (s.faces.max_faces as u32).to_value(),
            "min-face-size" => (s.faces.min_face_size as u32).to_value(),
            "alpha" => s.faces.alpha.to_value(),
            "face-batch" => (s.faces.face_batch as u32).to_value(),
            "vram-budget" => s.vram_budget.to_value(),
            "memory-policy" => s.memory_policy.to_value(),
            "post-messages" => s.post_messages.to_value(),
            "post-faces" => s.post_faces.to_value(),
            "temporal-smoothing" => s.faces.smoothing.to_value(),
            "detection-interval" => s.faces.detection_interval.to_value(),
            "upscale" => s.upscale.to_value(),
            "upscaler-model" => s.upscaler_model.to_value(),
            "tile-size" => s.tile_size.to_value(),
            "tile-overlap" => s.tile_overlap.to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for GpenFilter {}

impl ElementImpl for GpenFilter {
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

/// The GStreamer error domain that fits a set-up failure.
fn start_error(e: &Error) -> gst::ErrorMessage {
    use crate::checkpoint::CheckpointError as C;
    let text = e.to_string();
    match e {
        Error::Checkpoint(C::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            gst::error_msg!(gst::ResourceError::NotFound, ("{}", text))
        }
        Error::Checkpoint(C::Io { .. }) => gst::error_msg!(gst::ResourceError::OpenRead, ("{}", text)),
        Error::Checkpoint(_) => gst::error_msg!(gst::ResourceError::Read, ("{}", text)),
        Error::Settings(_) => gst::error_msg!(gst::LibraryError::Settings, ("{}", text)),
        Error::Torch(_) => gst::error_msg!(gst::LibraryError::Init, ("{}", text)),
        Error::OutOfMemory(_) => gst::error_msg!(gst::ResourceError::NoSpaceLeft, ("{}", text)),
        Error::ModelMismatch { .. } | Error::UnsafeCheckpoint { .. } => gst::error_msg!(gst::ResourceError::Read, ("{}", text)),
        Error::FileNotFound { .. } => gst::error_msg!(gst::ResourceError::NotFound, ("{}", text)),
        Error::InvalidSetting { .. } | Error::Device { .. } => gst::error_msg!(gst::LibraryError::Settings, ("{}", text)),
        Error::Frame(_) | Error::Accelerator(_) => gst::error_msg!(gst::LibraryError::Failed, ("{}", text)),
    }
}

/// The byte layout of the colour channels of a packed RGB-family frame.
fn packed_layout<T>(frame: &gst_video::VideoFrameRef<T>) -> PackedLayout {
    let info = frame.format_info();
    let offsets = info.poffset();
    PackedLayout {
        width: frame.width() as usize,
        height: frame.height() as usize,
        stride: frame.plane_stride()[0] as usize,
        pixel_stride: info.pixel_stride()[0] as usize,
        // Components 0, 1, 2 are R, G, B whatever their order in memory.
        rgb_offsets: [offsets[0] as usize, offsets[1] as usize, offsets[2] as usize],
    }
}

impl BaseTransformImpl for GpenFilter {
    const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::Both;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let restorer_settings = RestorerSettings {
            model: settings.model.as_ref().map(PathBuf::from),
            model_key: settings.model_key.clone(),
            size: settings.size as i64,
            fp16: settings.fp16,
            device: settings.device.clone(),
            aligned: settings.aligned,
            faces: FaceSettings {
                detector_model: settings.detector_model.as_ref().map(PathBuf::from),
                detector_variant: match settings.detector_variant {
                    DetectorVariant::Auto => None,
                    DetectorVariant::Fd1mb => Some(crate::detect::DetectorVariant::Fd1mb),
                    DetectorVariant::Standard => Some(crate::detect::DetectorVariant::Standard),
                },
                ..settings.faces.clone()
            },
            memory: MemorySettings {
                budget_mib: settings.vram_budget as u64,
                policy: match settings.memory_policy {
                    MemoryPolicy::Degrade => crate::restorer::MemoryPolicy::Degrade,
                    MemoryPolicy::Drop => crate::restorer::MemoryPolicy::Drop,
                    MemoryPolicy::Passthrough => crate::restorer::MemoryPolicy::Passthrough,
                    MemoryPolicy::Error => crate::restorer::MemoryPolicy::Error,
                },
                #[cfg(feature = "fault-injection")]
                fail_every: memory::fail_every_from_env(&self.obj().name()),
                #[cfg(not(feature = "fault-injection"))]
                fail_every: 0,
            },
            upscale: UpscaleSettings {
                factor: settings.upscale as i64,
                model: settings.upscaler_model.as_ref().map(PathBuf::from),
                tile: settings.tile_size as i64,
                overlap: settings.tile_overlap as i64,
            },
        };
        let started = std::time::Instant::now();
        let restorer = Restorer::new(&restorer_settings).map_err(|e| start_error(&e))?;
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
        #[cfg(feature = "fault-injection")]
        if restorer_settings.memory.fail_every > 0 {
            gst::warning!(
                CAT,
                imp = self,
                "{}={}: every such generator forward fails as out of memory",
                memory::FAIL_EVERY_ENV,
                restorer_settings.memory.fail_every
            );
        }
        *self.stats.lock().unwrap() =
            Stats { plan: restorer.plan().to_string(), device: format!("{:?}", model.device()), ..Stats::default() };
        gst::info!(CAT, imp = self, "memory budget {} MiB, plan {}", memory::mib(restorer.budget()), restorer.plan());
        *self.state.lock().unwrap() = Some(State {
            restorer,
            info: None,
            pending: None,
            started: None,
            reported_latency: Duration::ZERO,
            last_post: None,
            last_pts: None,
        });
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(_) => {
                // Every frame before EOS has been pushed: these are the final figures.
                if self.settings.lock().unwrap().post_messages {
                    self.post_stats(true);
                }
            }
            // A seek or a new stream: the next frame does not follow the last one.
            gst::EventView::FlushStop(_) | gst::EventView::StreamStart(_) => {
                if matches!(event.view(), gst::EventView::FlushStop(_)) {
                    // The streaming thread has stopped: a frame that came in and did not go out
                    // was discarded by the flush. Count it, so that in = out + dropped + flushed.
                    let mut s = self.stats.lock().unwrap();
                    let accounted = s.frames_out + s.frames_dropped + s.frames_late_dropped + s.frames_flushed;
                    s.frames_flushed += s.frames_in.saturating_sub(accounted);
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
        // Dropping the state frees the models and their device memory.
        self.state.lock().unwrap().take();
        Ok(())
    }

    fn submit_input_buffer(&self, is_discont: bool, inbuf: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.stats.lock().unwrap().frames_in += 1;
        let result = self.parent_submit_input_buffer(is_discont, inbuf);
        if result == Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED) {
            // Late: BaseTransform's QoS dropped it (and posted its QoS message).
            self.stats.lock().unwrap().frames_late_dropped += 1;
        }
        result
    }

    fn before_transform(&self, inbuf: &gst::BufferRef) {
        let settings = self.settings.lock().unwrap().clone();
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else { return };
        state.started = Some(Instant::now());
        if settings.aligned {
            return;
        }
        // The settings that may change while playing apply from this frame on.
        if let Some(f) = state.restorer.face_settings_mut() {
            f.threshold = settings.faces.threshold;
            f.max_faces = settings.faces.max_faces;
            f.min_face_size = settings.faces.min_face_size;
            f.alpha = settings.faces.alpha;
            f.smoothing = settings.faces.smoothing;
            f.detection_interval = settings.faces.detection_interval;
        }
        let dt = frame_interval(state.last_pts, inbuf.pts(), state.info.as_ref());
        state.last_pts = inbuf.pts();
        let detections = match state.info.as_ref() {
            None => Err(tch::TchError::Kind("no caps were negotiated before the first frame".into())),
            Some(info) => match gst_video::VideoFrameRef::from_buffer_ref_readable(inbuf, info) {
                Err(e) => Err(tch::TchError::Kind(format!("cannot map the frame: {e}"))),
                Ok(frame) => {
                    let layout = packed_layout(&frame);
                    match frame.plane_data(0) {
                        Ok(d) => state.restorer.detect_video(d, &layout, dt),
                        Err(e) => Err(tch::TchError::Kind(e.to_string())),
                    }
                }
            },
        };
        // With upscaling every frame is written anew; the restorer counts it.
        let no_faces = settings.upscale == Upscale::X1 && matches!(&detections, Ok(d) if d.faces.is_empty());
        if no_faces {
            let mut stats = self.stats.lock().unwrap();
            stats.frames_without_faces += 1;
            if let Some(t) = state.started.take() {
                stats.time(t.elapsed());
            }
        }
        gst::log!(CAT, imp = self, "{:?} face(s) in {:?}", detections.as_ref().map(|d| d.faces.len()), inbuf.pts());
        {
            let counters = state.restorer.video_counters();
            let mut stats = self.stats.lock().unwrap();
            stats.detector_runs = counters.detector_runs;
            stats.scene_cuts = counters.scene_cuts;
            stats.tracks_started = counters.tracks_started;
        }
        if settings.post_faces {
            if let Ok(d) = &detections {
                self.post_faces(inbuf, d);
            }
        }
        // No face: pass the buffer through, neither copied nor written.
        self.obj().set_passthrough(no_faces);
        state.pending = Some(detections);
        drop(guard);
        if no_faces {
            self.after_frame(&settings);
        }
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
        // Upstream's latency plus our measured processing time per frame.
        let ours = self.measured_latency();
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let (live, min, max) = q.result();
            q.set(live, min + ours, max.map(|m| m + ours));
            gst::debug!(CAT, imp = self, "latency: upstream {min} + ours {ours}");
        }
        true
    }
}

impl GpenFilter {
    /// Mean processing time per frame so far, as a clock time.
    fn measured_latency(&self) -> gst::ClockTime {
        let stats = self.stats.lock().unwrap();
        let mean = if stats.timed_frames > 0 { stats.total_time / stats.timed_frames as u32 } else { Duration::ZERO };
        gst::ClockTime::from_nseconds(mean.as_nanos() as u64)
    }

    /// Bookkeeping after each frame: a latency message when the processing time moved, the
    /// statistics message when asked for.
    fn after_frame(&self, settings: &Settings) {
        let latency = Duration::from_nanos(self.measured_latency().nseconds());
        let (repost_latency, post_stats) = {
            let mut guard = self.state.lock().unwrap();
            let Some(state) = guard.as_mut() else { return };
            let last = state.reported_latency;
            let moved = latency > last + last / 4 || latency + latency / 4 < last;
            if moved {
                state.reported_latency = latency;
            }
            let due = settings.post_messages && state.last_post.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
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
        let s = self.stats.lock().unwrap().structure();
        let mut b = gst::Structure::builder("gpenfilter-stats").field("eos", last);
        for (name, value) in s.iter() {
            b = b.field(name.as_str(), value.clone());
        }
        let _ = self.obj().post_message(gst::message::Element::builder(b.build()).src(&*self.obj()).build());
    }

    /// The faces of a frame, as aligned, in a `gpenfilter-faces` element message.
    fn post_faces(&self, buffer: &gst::BufferRef, detections: &Detections) {
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
    fn post_drop(&self, buffer: &gst::BufferRef) {
        let (processed, dropped) = {
            let s = self.stats.lock().unwrap();
            (s.frames_in - s.frames_dropped - s.frames_late_dropped, s.frames_dropped + s.frames_late_dropped)
        };
        let segment = self.obj().segment();
        let pts = buffer.pts();
        let (running, stream) = match segment.downcast_ref::<gst::ClockTime>() {
            Some(seg) => (pts.and_then(|p| seg.to_running_time(p)), pts.and_then(|p| seg.to_stream_time(p))),
            None => (None, None),
        };
        let msg = gst::message::Qos::builder(false)
            .running_time(running)
            .stream_time(stream)
            .timestamp(pts)
            .duration(buffer.duration())
            .values(0, 1.0, 0)
            .stats(gst::format::Buffers::from_u64(processed), gst::format::Buffers::from_u64(dropped))
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
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
        let settings = self.settings.lock().unwrap().clone();
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Frame received before the model was loaded"));
            return Err(gst::FlowError::Flushing);
        };
        let started = state.started.take().unwrap_or_else(Instant::now);
        let detections = match self.pending_detections(state.pending.take(), &settings, false) {
            Ok(Some(d)) => d,
            Ok(None) => {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("A frame arrived without detections"));
                return Err(gst::FlowError::Error);
            }
            Err(FrameEnd::Flow(e)) => return Err(e),
            Err(FrameEnd::Policy(o)) => {
                drop(guard);
                return self.apply_outcome(o, in_frame.buffer(), started, &settings);
            }
        };
        let out_layout = packed_layout(out_frame);
        let data = out_frame.plane_data_mut(0).map_err(|e| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Cannot map the output frame: {}", e));
            gst::FlowError::Error
        })?;
        let outcome = state.restorer.process_upscaled(&detections, data, &out_layout);
        let plan = state.restorer.plan().to_string();
        drop(guard);
        self.finish_frame(outcome, detections.faces.len(), plan, in_frame.buffer(), started, &settings)
    }

    fn transform_frame_ip(&self, frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = self.settings.lock().unwrap().clone();
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Frame received before the model was loaded"));
            return Err(gst::FlowError::Flushing);
        };
        let layout = packed_layout(frame);
        let started = state.started.take().unwrap_or_else(Instant::now);
        let detections = match self.pending_detections(state.pending.take(), &settings, true) {
            Ok(d) => d,
            Err(FrameEnd::Flow(e)) => return Err(e),
            Err(FrameEnd::Policy(o)) => {
                drop(guard);
                return self.apply_outcome(o, frame.buffer(), started, &settings);
            }
        };
        let data = frame.plane_data_mut(0).map_err(|e| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Cannot map the frame: {}", e));
            gst::FlowError::Error
        })?;
        let detected = detections.as_ref().map(|d| d.faces.len()).unwrap_or(0);
        let outcome = state.restorer.process(detections.as_ref(), data, &layout);
        let plan = state.restorer.plan().to_string();
        drop(guard);
        self.finish_frame(outcome, detected, plan, frame.buffer(), started, &settings)
    }
}

/// Why a frame ends before restoration.
enum FrameEnd {
    /// An error already posted on the bus.
    Flow(gst::FlowError),
    /// What the memory policy does with it.
    Policy(Outcome),
}

impl GpenFilter {
    /// The detections `before_transform` left for this frame (`None` in aligned mode). When the
    /// detector ran out of memory no smaller plan helps it and the policy decides; `in_place`
    /// says whether the frame can pass through unchanged (not when upscaling: it is dropped).
    fn pending_detections(
        &self,
        pending: Option<Result<Detections, tch::TchError>>,
        settings: &Settings,
        in_place: bool,
    ) -> Result<Option<Detections>, FrameEnd> {
        match pending {
            Some(Ok(d)) => Ok(Some(d)),
            None if settings.aligned => Ok(None),
            None => {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("A frame arrived without detections"));
                Err(FrameEnd::Flow(gst::FlowError::Error))
            }
            Some(Err(e)) if memory::is_out_of_memory(&e) => {
                let reason = format!("face detection: {e}");
                match settings.memory_policy {
                    MemoryPolicy::Error => {
                        gst::element_imp_error!(self, gst::ResourceError::NoSpaceLeft, ("Face detection ran out of memory: {}", e));
                        Err(FrameEnd::Flow(gst::FlowError::Error))
                    }
                    MemoryPolicy::Passthrough if in_place => Err(FrameEnd::Policy(Outcome::PassedThrough { reason })),
                    _ => Err(FrameEnd::Policy(Outcome::Dropped { reason })),
                }
            }
            Some(Err(e)) => {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("Face detection failed: {}", e));
                Err(FrameEnd::Flow(gst::FlowError::Error))
            }
        }
    }

    /// Statistics and errors of a processed frame.
    fn finish_frame(
        &self,
        outcome: Result<Outcome, Error>,
        detected: usize,
        plan: String,
        buffer: &gst::BufferRef,
        started: Instant,
        settings: &Settings,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        {
            let mut stats = self.stats.lock().unwrap();
            stats.faces_detected += detected as u64;
            if stats.plan != plan {
                gst::info!(CAT, imp = self, "plan now {plan} (was {})", stats.plan);
                stats.plan = plan;
            }
        }
        match outcome {
            Ok(o) => self.apply_outcome(o, buffer, started, settings),
            Err(e @ Error::OutOfMemory(_)) => {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::NoSpaceLeft,
                    ("Out of memory, and memory-policy=error: {}", e),
                    ["set a larger vram-budget, a smaller size, fp16=true, a smaller tile-size, or memory-policy=degrade"]
                );
                Err(gst::FlowError::Error)
            }
            Err(e) => {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("Restoring a frame failed: {}", e));
                Err(gst::FlowError::Error)
            }
        }
    }
}

impl GpenFilter {
    /// Counts what happened to a frame and tells the pipeline.
    fn apply_outcome(
        &self,
        outcome: Outcome,
        buffer: &gst::BufferRef,
        started: Instant,
        settings: &Settings,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let result = {
            let mut stats = self.stats.lock().unwrap();
            stats.time(started.elapsed());
            match &outcome {
                Outcome::NoFaces => {
                    stats.frames_without_faces += 1;
                    Ok(gst::FlowSuccess::Ok)
                }
                Outcome::Restored { faces, retried, .. } => {
                    stats.faces_restored += *faces as u64;
                    stats.retries += *retried as u64;
                    Ok(gst::FlowSuccess::Ok)
                }
                Outcome::PassedThrough { .. } => {
                    stats.frames_passed_through += 1;
                    Ok(gst::FlowSuccess::Ok)
                }
                Outcome::Dropped { .. } => {
                    stats.frames_dropped += 1;
                    Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED)
                }
            }
        };
        match &outcome {
            Outcome::Dropped { reason } => {
                gst::warning!(CAT, imp = self, "dropped frame {:?}: {reason}", buffer.pts());
                self.post_drop(buffer);
            }
            Outcome::PassedThrough { reason } => {
                gst::warning!(CAT, imp = self, "frame {:?} passed through unprocessed: {reason}", buffer.pts());
            }
            Outcome::Restored { retried: true, plan, .. } => {
                gst::warning!(CAT, imp = self, "out of memory: frame {:?} redone with {plan}", buffer.pts());
            }
            _ => {}
        }
        self.after_frame(settings);
        result
    }
}

/// Caps with width and height multiplied by `factor` (`up`) or divided by it (sizes that do not
/// divide are left out).
/// Seconds between the previous frame and this one: from their timestamps, else the frame rate,
/// else 1/30 (tracking only needs it roughly).
fn frame_interval(last: Option<gst::ClockTime>, pts: Option<gst::ClockTime>, info: Option<&gst_video::VideoInfo>) -> f64 {
    if let (Some(a), Some(b)) = (last, pts) {
        if b > a {
            return (b - a).nseconds() as f64 / 1e9;
        }
    }
    match info.map(|i| i.fps()) {
        Some(f) if f.numer() > 0 && f.denom() > 0 => f.denom() as f64 / f.numer() as f64,
        _ => 1.0 / 30.0,
    }
}

fn scale_caps(caps: &gst::Caps, factor: i32, up: bool) -> gst::Caps {
    let mut out = gst::Caps::new_empty();
    let map = |v: i32| -> Option<i32> {
        if up {
            v.checked_mul(factor)
        } else {
            (v % factor == 0).then_some(v / factor)
        }
    };
    for (s, features) in caps.iter_with_features() {
        let mut s = s.to_owned();
        let mut ok = true;
        for field in ["width", "height"] {
            if let Ok(v) = s.get::<i32>(field) {
                match map(v) {
                    Some(v) => s.set(field, v),
                    None => ok = false,
                }
            } else if let Ok(r) = s.get::<gst::IntRange<i32>>(field) {
                let (min, max) = if up {
                    (r.min().saturating_mul(factor).min(i32::MAX), r.max().saturating_mul(factor))
                } else {
                    ((r.min() + factor - 1) / factor, r.max() / factor)
                };
                if min > max {
                    ok = false;
                } else if min == max {
                    s.set(field, min);
                } else {
                    s.set(field, gst::IntRange::new(min.max(1), max));
                }
            }
        }
        if ok {
            out.get_mut().unwrap().append_structure_full(s, Some(features.to_owned()));
        }
    }
    out
}
