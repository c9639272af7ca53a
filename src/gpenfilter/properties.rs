//! The element's properties: their specs (units in the blurbs), the values set, and how they
//! become the core's settings. The core names its settings ([`Setting`]); errors shown to users
//! name the property behind each.

use std::path::PathBuf;

use gst::glib;
use gst::prelude::*;

use super::enums::{Color, DetectorVariant, FacesFrom, Fields, Mask, MaskRegions, MemoryPolicy, Size, Upscale};
use crate::memory::MemorySettings;
use crate::restorer::{
    DeviceSpec, FaceSettings, LiveSettings, MaskMode, MaskSettings, RestorerSettings, UpscaleSettings, MODEL_DIR_ENV, PARSE_FILE,
};
use crate::{Error, Setting};

pub const DEFAULT_SIZE: Size = Size::S512;
pub const DEFAULT_FP16: bool = false;
pub const DEFAULT_DEVICE: &str = "auto";
pub const DEFAULT_ALIGNED: bool = false;
/// No frame waits for others: each frame's faces make their own batches, as a live stream wants.
pub const DEFAULT_BATCH_LATENCY: u32 = 0;

/// The values of the properties.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: Option<String>,
    pub model_key: Option<String>,
    pub size: Size,
    pub fp16: bool,
    /// As set: `auto`, `cpu`, `cuda` or `cuda:N` (parsed when the element starts).
    pub device: String,
    pub aligned: bool,
    pub detector_model: Option<String>,
    pub detector_variant: DetectorVariant,
    pub detection_size: u32,
    pub face_batch: u32,
    /// Frames a frame may wait for so that its faces share generator batches with theirs.
    pub batch_latency: u32,
    /// With frames held, the generator's batches run on a worker thread while the next frames
    /// are analysed.
    pub overlap: bool,
    pub mask: Mask,
    pub parse_model: Option<String>,
    pub mask_regions: MaskRegions,
    /// The properties that may change while playing.
    pub live: LiveSettings,
    pub vram_budget: u32,
    pub memory_policy: MemoryPolicy,
    pub post_messages: bool,
    pub post_faces: bool,
    /// Attach a region-of-interest meta per face to the output.
    pub face_metas: bool,
    pub faces_from: FacesFrom,
    pub fields: Fields,
    /// Restore the faces (false: detect, track and describe them only).
    pub restore: bool,
    pub upscale: Upscale,
    pub upscaler_model: Option<String>,
    pub tile_size: u32,
    pub tile_overlap: u32,
}

impl Default for Settings {
    fn default() -> Self {
        let faces = FaceSettings::default();
        let upscale = UpscaleSettings::default();
        Settings {
            model: None,
            model_key: None,
            size: DEFAULT_SIZE,
            fp16: DEFAULT_FP16,
            device: DEFAULT_DEVICE.into(),
            aligned: DEFAULT_ALIGNED,
            detector_model: None,
            detector_variant: DetectorVariant::Auto,
            detection_size: faces.detection_size as u32,
            face_batch: faces.face_batch as u32,
            batch_latency: DEFAULT_BATCH_LATENCY,
            overlap: true,
            mask: Mask::Auto,
            parse_model: None,
            mask_regions: MaskRegions::gpen(),
            live: faces.live,
            vram_budget: 0,
            memory_policy: MemoryPolicy::Degrade,
            post_messages: false,
            post_faces: false,
            face_metas: true,
            faces_from: FacesFrom::Detector,
            fields: Fields::Auto,
            restore: true,
            upscale: Upscale::X1,
            upscaler_model: None,
            tile_size: upscale.tile as u32,
            tile_overlap: upscale.overlap as u32,
        }
    }
}

/// The property behind a setting of the core.
pub fn property_of(setting: Setting) -> &'static str {
    match setting {
        Setting::Size => "size",
        Setting::Precision => "fp16",
        Setting::Model => "model",
        Setting::ModelKey => "model-key",
        Setting::Device => "device",
        Setting::Mode => "aligned",
        Setting::Restore => "restore",
        Setting::DetectorModel => "detector-model",
        Setting::DetectorVariant => "detector-variant",
        Setting::Threshold => "detection-threshold",
        Setting::DetectionSize => "detection-size",
        Setting::MaxFaces => "max-faces",
        Setting::MinFaceSize => "min-face-size",
        Setting::Alpha => "alpha",
        Setting::FaceBatch => "face-batch",
        Setting::Smoothing => "temporal-smoothing",
        Setting::Consistency => "temporal-consistency",
        Setting::DetectionInterval => "detection-interval",
        Setting::Upscale => "upscale",
        Setting::UpscalerModel => "upscaler-model",
        Setting::TileSize => "tile-size",
        Setting::TileOverlap => "tile-overlap",
        Setting::Budget => "vram-budget",
        Setting::Policy => "memory-policy",
        Setting::Mask => "mask",
        Setting::ParseModel => "parse-model",
        Setting::MaskRegions => "mask-regions",
    }
}

/// The properties that take effect on the next frame while playing.
pub fn is_live(name: &str) -> bool {
    matches!(
        name,
        "detection-threshold"
            | "max-faces"
            | "min-face-size"
            | "alpha"
            | "color"
            | "temporal-smoothing"
            | "temporal-consistency"
            | "detection-interval"
    )
}

/// Whether `pspec` is read only when the element starts: flagged `GST_PARAM_MUTABLE_READY`
/// (changeable only in NULL or READY, as gst-inspect says) and not changeable while paused or
/// playing.
pub fn is_start_only(pspec: &glib::ParamSpec) -> bool {
    let flags = pspec.flags();
    flags.contains(glib::ParamFlags::WRITABLE)
        && flags.contains(gst::PARAM_FLAG_MUTABLE_READY)
        && !flags.intersects(gst::PARAM_FLAG_MUTABLE_PAUSED | gst::PARAM_FLAG_MUTABLE_PLAYING)
}

/// Refuses, as GStreamer elements do, a start-only property ([`is_start_only`]) set while the
/// element is PAUSED or PLAYING (or on its way there): the value stays as it is and reads back
/// so, and a WARNING message names the property and when a new value takes effect. True when
/// refused; the caller then leaves the setting alone.
pub fn refused_while_running(element: &impl IsA<gst::Element>, pspec: &glib::ParamSpec) -> bool {
    if !is_start_only(pspec) {
        return false;
    }
    let element = element.upcast_ref::<gst::Element>();
    let (current, pending) = (element.current_state(), element.pending_state());
    let state = if pending > current { pending } else { current };
    if state < gst::State::Paused {
        return false;
    }
    let text = format!(
        "{} cannot change while the element is {state:?}: it is read when the element starts, so the new value is \
         refused and the old one kept. Set it in the NULL or READY state; it takes effect at the next start",
        pspec.name()
    );
    gst::element_warning!(element, gst::LibraryError::Settings, ("{}", text));
    true
}

impl Settings {
    /// The core's settings; `fail_every` is the testing switch's value for this element.
    pub fn to_restorer(&self, fail_every: u64) -> Result<RestorerSettings, Error> {
        let path = |s: &Option<String>| s.as_ref().map(PathBuf::from);
        Ok(RestorerSettings {
            model: path(&self.model),
            model_key: self.model_key.clone(),
            size: self.size as i64,
            fp16: self.fp16,
            device: self.device.parse::<DeviceSpec>()?,
            aligned: self.aligned,
            restore: self.restore,
            faces: FaceSettings {
                detector_model: path(&self.detector_model),
                detector_variant: match self.detector_variant {
                    DetectorVariant::Auto => None,
                    DetectorVariant::Fd1mb => Some(crate::detect::DetectorVariant::Fd1mb),
                    DetectorVariant::Standard => Some(crate::detect::DetectorVariant::Standard),
                },
                detection_size: self.detection_size as i64,
                face_batch: self.face_batch as usize,
                mask: MaskSettings {
                    mode: match self.mask {
                        Mask::Auto => MaskMode::Auto,
                        Mask::Parse => MaskMode::Parse,
                        Mask::Rectangle => MaskMode::Rectangle,
                    },
                    parse_model: path(&self.parse_model),
                    regions: self.mask_regions.classes(),
                },
                live: self.live,
            },
            memory: MemorySettings {
                budget_mib: self.vram_budget as u64,
                policy: match self.memory_policy {
                    MemoryPolicy::Degrade => crate::memory::MemoryPolicy::Degrade,
                    MemoryPolicy::Drop => crate::memory::MemoryPolicy::Drop,
                    MemoryPolicy::Passthrough => crate::memory::MemoryPolicy::Passthrough,
                    MemoryPolicy::Error => crate::memory::MemoryPolicy::Error,
                },
                fail_every,
            },
            upscale: UpscaleSettings {
                factor: self.upscale as i64,
                model: path(&self.upscaler_model),
                tile: self.tile_size as i64,
                overlap: self.tile_overlap as i64,
            },
        })
    }

    /// Sets the property `name` (its value was type-checked by GObject).
    pub fn set(&mut self, name: &str, value: &glib::Value) {
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        const CHECKED: &str = "type checked upstream";
        match name {
            "model" => self.model = non_empty(value.get().expect(CHECKED)),
            "model-key" => self.model_key = non_empty(value.get().expect(CHECKED)),
            "size" => self.size = value.get().expect(CHECKED),
            "fp16" => self.fp16 = value.get().expect(CHECKED),
            "device" => self.device = non_empty(value.get().expect(CHECKED)).unwrap_or(DEFAULT_DEVICE.into()),
            "aligned" => self.aligned = value.get().expect(CHECKED),
            "detector-model" => self.detector_model = non_empty(value.get().expect(CHECKED)),
            "detector-variant" => self.detector_variant = value.get().expect(CHECKED),
            "detection-threshold" => self.live.threshold = value.get().expect(CHECKED),
            "detection-size" => self.detection_size = value.get().expect(CHECKED),
            "max-faces" => self.live.max_faces = value.get::<u32>().expect(CHECKED) as usize,
            "min-face-size" => self.live.min_face_size = value.get::<u32>().expect(CHECKED) as f32,
            "alpha" => self.live.alpha = value.get().expect(CHECKED),
            "color" => self.live.color = value.get::<Color>().expect(CHECKED).into(),
            "face-batch" => self.face_batch = value.get().expect(CHECKED),
            "batch-latency" => self.batch_latency = value.get().expect(CHECKED),
            "overlap" => self.overlap = value.get().expect(CHECKED),
            "mask" => self.mask = value.get().expect(CHECKED),
            "parse-model" => self.parse_model = non_empty(value.get().expect(CHECKED)),
            "mask-regions" => self.mask_regions = value.get().expect(CHECKED),
            "temporal-smoothing" => self.live.smoothing = value.get().expect(CHECKED),
            "temporal-consistency" => self.live.consistency = value.get().expect(CHECKED),
            "detection-interval" => self.live.detection_interval = value.get().expect(CHECKED),
            "post-faces" => self.post_faces = value.get().expect(CHECKED),
            "face-metas" => self.face_metas = value.get().expect(CHECKED),
            "faces-from" => self.faces_from = value.get().expect(CHECKED),
            "fields" => self.fields = value.get().expect(CHECKED),
            "restore" => self.restore = value.get().expect(CHECKED),
            "vram-budget" => self.vram_budget = value.get().expect(CHECKED),
            "memory-policy" => self.memory_policy = value.get().expect(CHECKED),
            "post-messages" => self.post_messages = value.get().expect(CHECKED),
            "upscale" => self.upscale = value.get().expect(CHECKED),
            "upscaler-model" => self.upscaler_model = non_empty(value.get().expect(CHECKED)),
            "tile-size" => self.tile_size = value.get().expect(CHECKED),
            "tile-overlap" => self.tile_overlap = value.get().expect(CHECKED),
            other => unreachable!("unknown property {other}"),
        }
    }

    /// The value of the property `name`.
    pub fn get(&self, name: &str) -> glib::Value {
        match name {
            "model" => self.model.to_value(),
            "model-key" => self.model_key.to_value(),
            "size" => self.size.to_value(),
            "fp16" => self.fp16.to_value(),
            "device" => self.device.to_value(),
            "aligned" => self.aligned.to_value(),
            "detector-model" => self.detector_model.to_value(),
            "detector-variant" => self.detector_variant.to_value(),
            "detection-threshold" => self.live.threshold.to_value(),
            "detection-size" => self.detection_size.to_value(),
            "max-faces" => (self.live.max_faces as u32).to_value(),
            "min-face-size" => (self.live.min_face_size as u32).to_value(),
            "alpha" => self.live.alpha.to_value(),
            "color" => Color::from(self.live.color).to_value(),
            "face-batch" => self.face_batch.to_value(),
            "batch-latency" => self.batch_latency.to_value(),
            "overlap" => self.overlap.to_value(),
            "mask" => self.mask.to_value(),
            "parse-model" => self.parse_model.to_value(),
            "mask-regions" => self.mask_regions.to_value(),
            "vram-budget" => self.vram_budget.to_value(),
            "memory-policy" => self.memory_policy.to_value(),
            "post-messages" => self.post_messages.to_value(),
            "post-faces" => self.post_faces.to_value(),
            "face-metas" => self.face_metas.to_value(),
            "faces-from" => self.faces_from.to_value(),
            "fields" => self.fields.to_value(),
            "restore" => self.restore.to_value(),
            "temporal-smoothing" => self.live.smoothing.to_value(),
            "temporal-consistency" => self.live.consistency.to_value(),
            "detection-interval" => self.live.detection_interval.to_value(),
            "upscale" => self.upscale.to_value(),
            "upscaler-model" => self.upscaler_model.to_value(),
            "tile-size" => self.tile_size.to_value(),
            "tile-overlap" => self.tile_overlap.to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }
}

/// The specs of every property, in the order gst-inspect lists them.
pub fn specs() -> Vec<glib::ParamSpec> {
    let faces = FaceSettings::default();
    let live = faces.live;
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
            .default_value(live.threshold)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("detection-size")
            .nick("Detection size")
            .blurb(
                "Longest side in pixels frames are scaled down to for detection (coordinates are mapped \
                 back); 0 = detect at the native size. The default detects frames up to 1920x1080 at their \
                 native size, as GPEN does, so small faces are not missed",
            )
            .maximum(16384)
            .default_value(faces.detection_size as u32)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-faces")
            .nick("Maximum faces")
            .blurb("Most faces restored per frame, the highest scores first; 0 = no limit")
            .maximum(4096)
            .default_value(live.max_faces as u32)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("min-face-size")
            .nick("Minimum face size")
            .blurb("Faces whose box is smaller than this many pixels on either side are left as they are")
            .maximum(16384)
            .default_value(live.min_face_size as u32)
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("alpha")
            .nick("Alpha")
            .blurb("Blend of the restored face with the original: 1 = restored only, 0 = original")
            .minimum(0.0)
            .maximum(1.0)
            .default_value(live.alpha)
            .mutable_playing()
            .build(),
        glib::ParamSpecEnum::builder_with_default("color", Color::from(live.color))
            .nick("Colour")
            .blurb(
                "Colour of the restored faces: auto (faces whose source is black and white, every pixel's channels \
                 within 2 levels, are pasted as the restored luminance only, so black-and-white frames stay so; \
                 others in GPEN's colours), restored (GPEN's colours always), source (the restored luminance with \
                 the source's colours: no colour shift, no chroma flicker of GPEN's making). Luminance: BT.601 weights",
            )
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
            .default_value(live.smoothing)
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("temporal-consistency")
            .nick("Temporal consistency")
            .blurb(
                "Strength (0 = off, 1 = strongest) of the blending of each tracked face's restoration \
                 with its previous one in aligned space, weighted by how still the face is (moving \
                 parts, such as a mouth opening, are not blended); it keeps the restorer from adding \
                 flicker. Above 0, each tracked face's crop is also registered onto the previous \
                 frame's, and the faces posted carry the registered landmarks. Lower it for fast \
                 action or heavy occlusion",
            )
            .minimum(0.0)
            .maximum(1.0)
            .default_value(live.consistency)
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
            .default_value(live.detection_interval)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("face-batch")
            .nick("Face batch")
            .blurb("Most faces restored together in one forward pass (memory grows with it)")
            .minimum(1)
            .maximum(256)
            .default_value(faces.face_batch as u32)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("batch-latency")
            .nick("Batch latency")
            .blurb(
                "Frames a frame may wait for, so that face-batch fills with the faces of the frames after it: more \
                 throughput for that many frame durations of latency (reported to the latency query); 0: each frame's \
                 faces are restored alone, at once",
            )
            .maximum(120)
            .default_value(DEFAULT_BATCH_LATENCY)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("overlap")
            .nick("Overlap")
            .blurb(
                "With batch-latency of 1 or more: the generator restores held frames' faces on a worker thread while the \
                 next frames are detected and aligned; false: on the streaming thread, when a frame leaves",
            )
            .default_value(true)
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("mask", Mask::Auto)
            .nick("Paste mask")
            .blurb(&format!(
                "Mask restored faces are pasted back through: parse (GPEN's face-parsing mask: face, hair, ears, neck; \
                 needs {PARSE_FILE}), rectangle (GPEN's soft square), auto (parse when the checkpoint is found, see \
                 parse-model)"
            ))
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("parse-model")
            .nick("Parsing model")
            .blurb(&format!(
                "ParseNet checkpoint for mask=parse|auto, or a folder holding {PARSE_FILE}; unset: {PARSE_FILE} in the \
                 folder of the GPEN model (see model)"
            ))
            .mutable_ready()
            .build(),
        glib::ParamSpecFlags::builder::<MaskRegions>("mask-regions")
            .default_value(MaskRegions::gpen())
            .nick("Mask regions")
            .blurb(
                "Face-parsing regions the restored face replaces (mask=parse); the others keep the original pixels. \
                 Default: GPEN's (all but background, hat and cloth)",
            )
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
        glib::ParamSpecBoolean::builder("face-metas")
            .nick("Face metas")
            .blurb(
                "Attach a GstVideoRegionOfInterestMeta of type face to the output per face, id the track id, \
                 in output pixels, with a gpenfilter parameter structure: score, box, landmarks (10 doubles), \
                 restored, track-id; those an earlier gpenfilter attached are replaced, other region metas kept",
            )
            .default_value(true)
            .mutable_playing()
            .build(),
        glib::ParamSpecEnum::builder_with_default("faces-from", FacesFrom::Detector)
            .nick("Faces from")
            .blurb(
                "Where the faces come from: detector; upstream (the face region metas of each frame: those with \
                 a gpenfilter's landmarks are aligned as they are, boxes without landmarks get them from the \
                 detector run inside the box, or are skipped and counted); both (metas and detector, run on every \
                 frame, overlapping faces merged). Tracking and smoothing apply to all",
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder_with_default("fields", Fields::Auto)
            .nick("Fields")
            .blurb(
                "Interlaced frames (interlace-mode interleaved, or mixed with the buffer's interlaced flag): auto \
                 restores each field as its own picture, in the order the field order or TFF flag gives, at the \
                 field rate, its pixels twice as tall, its faces written into its own lines only (a field without \
                 faces keeps its lines); frame restores whole frames (progressive content flagged interlaced, PsF)",
            )
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("restore")
            .nick("Restore")
            .blurb(
                "Restore the faces; false: detect and track only, attach the metas and post the messages, and \
                 pass every frame through untouched and uncopied (upscale must be 1)",
            )
            .default_value(true)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Statistics")
            .blurb(
                "Since start: frames-in, frames-out, frames-dropped (memory policy), frames-late-dropped \
                 (QoS), frames-passed-through (memory policy), frames-flushed (by a flushing seek, held \
                 frames included), frames-without-faces, faces-detected, \
                 faces-restored, faces-grey (pasted as luminance only, see color), faces-from-metas, metas-skipped (boxes in which no face was found), \
                 detector-runs (whole frames), scene-cuts, tracks-started, retries, generator-batches, \
                 generator-faces (the faces in them), generator-ms (their time), frames-overlapped (analysed \
                 while the worker ran a forward), ahead-wait-ms (waited for the worker), plan, \
                 peak-memory-mib, mean-ms, worst-ms",
            )
            .read_only()
            .build(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_of_the_core_names_an_existing_property() {
        let names: Vec<String> = specs().iter().map(|p| p.name().to_string()).collect();
        for s in [
            Setting::Size,
            Setting::Precision,
            Setting::Model,
            Setting::ModelKey,
            Setting::Device,
            Setting::Mode,
            Setting::Restore,
            Setting::DetectorModel,
            Setting::DetectorVariant,
            Setting::Threshold,
            Setting::DetectionSize,
            Setting::MaxFaces,
            Setting::MinFaceSize,
            Setting::Alpha,
            Setting::FaceBatch,
            Setting::Smoothing,
            Setting::Consistency,
            Setting::DetectionInterval,
            Setting::Upscale,
            Setting::UpscalerModel,
            Setting::TileSize,
            Setting::TileOverlap,
            Setting::Budget,
            Setting::Policy,
            Setting::Mask,
            Setting::ParseModel,
            Setting::MaskRegions,
        ] {
            assert!(names.iter().any(|n| n == property_of(s)), "{s:?} -> {}", property_of(s));
        }
        for spec in specs() {
            // A property is either start-only (refused while running) or read as it changes.
            assert!(
                is_start_only(&spec) != spec.flags().contains(gst::PARAM_FLAG_MUTABLE_PLAYING) || spec.name() == "stats",
                "{}",
                spec.name()
            );
        }
        for n in &names {
            if is_live(n) {
                let spec = specs().into_iter().find(|p| p.name() == n.as_str()).unwrap();
                assert!(spec.flags().contains(gst::PARAM_FLAG_MUTABLE_PLAYING), "{n} is live but not mutable while playing");
            }
        }
    }

    #[test]
    fn defaults_become_the_cores_defaults() {
        let r = Settings::default().to_restorer(0).unwrap();
        let d = RestorerSettings::default();
        assert_eq!((r.size, r.fp16, r.device, r.aligned), (d.size, d.fp16, d.device, d.aligned));
        assert_eq!(r.faces, d.faces);
        assert_eq!(r.upscale, d.upscale);
        let bad = Settings { device: "gpu0".into(), ..Default::default() };
        assert!(matches!(bad.to_restorer(0), Err(Error::InvalidSetting { setting: Setting::Device, .. })));
    }
}
