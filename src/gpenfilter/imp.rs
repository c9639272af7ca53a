//! The `gpenfilter` element: properties, start/stop and the per-frame glue around a
//! [`Restorer`]. All the restoration work lives in the GStreamer-free core.
//!
//! Whole-frame mode detects faces in `before_transform`, on the read-only input; a frame
//! without faces is then passed through untouched (BaseTransform neither copies nor maps it
//! writable), and a frame with faces is restored in place in `transform_frame_ip`.

use std::path::PathBuf;
use std::sync::Mutex;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::{DetectorVariant, Size};
use crate::restorer::{Detections, FaceSettings, PackedLayout, Restorer, RestorerSettings, MODEL_DIR_ENV};
use crate::Error;

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new("gpenfilter", gst::DebugColorFlags::empty(), Some("GPEN face restoration"))
});

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
        }
    }
}

/// Counters behind the `stats` property.
#[derive(Debug, Default, Clone)]
struct Stats {
    frames: u64,
    frames_passed_through: u64,
    faces_detected: u64,
    faces_restored: u64,
}

/// Exists between `start()` and `stop()`.
struct State {
    restorer: Restorer,
    info: Option<gst_video::VideoInfo>,
    /// Detections of the buffer between `before_transform` and `transform_frame_ip`.
    pending: Option<Result<Detections, String>>,
}

#[derive(Default)]
pub struct GpenFilter {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
}

#[glib::object_subclass]
impl ObjectSubclass for GpenFilter {
    const NAME: &'static str = "GstGpenFilter";
    type Type = super::GpenFilter;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for GpenFilter {
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
                glib::ParamSpecUInt::builder("face-batch")
                    .nick("Face batch")
                    .blurb("Most faces restored together in one forward pass (memory grows with it)")
                    .minimum(1)
                    .maximum(256)
                    .default_value(d.face_batch as u32)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters since start: frames, frames-passed-through (no face found), faces-detected, \
                         faces-restored",
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
            other => unreachable!("unknown property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            let st = self.stats.lock().unwrap().clone();
            return gst::Structure::builder("application/x-gpenfilter-stats")
                .field("frames", st.frames)
                .field("frames-passed-through", st.frames_passed_through)
                .field("faces-detected", st.faces_detected)
                .field("faces-restored", st.faces_restored)
                .build()
                .to_value();
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
        Error::Checkpoint(_) | Error::Model(_) => gst::error_msg!(gst::ResourceError::Read, ("{}", text)),
        Error::Settings(_) => gst::error_msg!(gst::LibraryError::Settings, ("{}", text)),
        Error::Torch(_) => gst::error_msg!(gst::LibraryError::Init, ("{}", text)),
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
    const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::AlwaysInPlace;
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
        *self.stats.lock().unwrap() = Stats::default();
        *self.state.lock().unwrap() = Some(State { restorer, info: None, pending: None });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Dropping the state frees the models and their device memory.
        self.state.lock().unwrap().take();
        Ok(())
    }

    fn before_transform(&self, inbuf: &gst::BufferRef) {
        let settings = self.settings.lock().unwrap().clone();
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else { return };
        self.stats.lock().unwrap().frames += 1;
        if settings.aligned {
            return;
        }
        // The settings that may change while playing apply from this frame on.
        if let Some(f) = state.restorer.face_settings_mut() {
            f.threshold = settings.faces.threshold;
            f.max_faces = settings.faces.max_faces;
            f.min_face_size = settings.faces.min_face_size;
            f.alpha = settings.faces.alpha;
        }
        let detections = match state.info.as_ref() {
            None => Err("no caps were negotiated before the first frame".to_owned()),
            Some(info) => match gst_video::VideoFrameRef::from_buffer_ref_readable(inbuf, info) {
                Err(e) => Err(format!("cannot map the frame: {e}")),
                Ok(frame) => {
                    let layout = packed_layout(&frame);
                    let data = frame.plane_data(0).map_err(|e| e.to_string());
                    data.and_then(|d| state.restorer.detect(d, &layout).map_err(|e| format!("face detection failed: {e}")))
                }
            },
        };
        let faces = detections.as_ref().map(|d| d.faces.len()).unwrap_or(1);
        if faces == 0 {
            self.stats.lock().unwrap().frames_passed_through += 1;
        }
        gst::log!(CAT, imp = self, "{faces} face(s) in {:?}", inbuf.pts());
        // No face: pass the buffer through, neither copied nor written.
        self.obj().set_passthrough(faces == 0);
        state.pending = Some(detections);
    }
}

impl VideoFilterImpl for GpenFilter {
    fn set_info(
        &self,
        _incaps: &gst::Caps,
        in_info: &gst_video::VideoInfo,
        _outcaps: &gst::Caps,
        _out_info: &gst_video::VideoInfo,
    ) -> Result<(), gst::LoggableError> {
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.info = Some(in_info.clone());
            state.pending = None;
        }
        Ok(())
    }

    fn transform_frame_ip(
        &self,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Frame received before the model was loaded"));
            return Err(gst::FlowError::Flushing);
        };
        let layout = packed_layout(frame);
        let data = frame.plane_data_mut(0).map_err(|e| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Cannot map the frame: {}", e));
            gst::FlowError::Error
        })?;
        let fail = |what: String| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("{}", what));
            gst::FlowError::Error
        };
        match state.pending.take() {
            None if self.settings.lock().unwrap().aligned => {
                state.restorer.restore_aligned(data, &layout).map_err(|e| fail(format!("Restoring a frame failed: {e}")))?;
            }
            None => return Err(fail("A frame arrived without detections (internal ordering error)".into())),
            Some(Err(e)) => return Err(fail(e)),
            Some(Ok(detections)) => {
                let report = state
                    .restorer
                    .restore_faces(&detections, data, &layout)
                    .map_err(|e| fail(format!("Restoring the faces of a frame failed: {e}")))?;
                let mut stats = self.stats.lock().unwrap();
                stats.faces_detected += detections.faces.len() as u64;
                stats.faces_restored += report.restored as u64;
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
