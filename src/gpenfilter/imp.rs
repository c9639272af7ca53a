//! The `gpenfilter` element: properties, start/stop and the per-frame glue around a
//! [`Restorer`]. All the restoration work lives in the GStreamer-free core.

use std::path::PathBuf;
use std::sync::Mutex;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::Size;
use crate::restorer::{PackedLayout, Restorer, RestorerSettings, MODEL_DIR_ENV};
use crate::Error;

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new("gpenfilter", gst::DebugColorFlags::empty(), Some("GPEN face restoration"))
});

const DEFAULT_SIZE: Size = Size::S512;
const DEFAULT_FP16: bool = false;
const DEFAULT_DEVICE: &str = "auto";
const DEFAULT_ALIGNED: bool = true;

#[derive(Debug, Clone)]
struct Settings {
    model: Option<String>,
    model_key: Option<String>,
    size: Size,
    fp16: bool,
    device: String,
    aligned: bool,
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
        }
    }
}

/// Exists between `start()` and `stop()`.
struct State {
    restorer: Restorer,
}

#[derive(Default)]
pub struct GpenFilter {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
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
                    .blurb("Where the model runs: auto (CUDA device 0 if available, else CPU), cpu, cuda, cuda:N")
                    .default_value(Some(DEFAULT_DEVICE))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("aligned")
                    .nick("Aligned faces")
                    .blurb(
                        "Each frame is one face already aligned to GPEN's template (GPEN's --aligned mode): it \
                         is resized to size x size pixels, restored, and resized back",
                    )
                    .default_value(DEFAULT_ALIGNED)
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        match pspec.name() {
            "model" => s.model = non_empty(value.get().expect("type checked upstream")),
            "model-key" => s.model_key = non_empty(value.get().expect("type checked upstream")),
            "size" => s.size = value.get().expect("type checked upstream"),
            "fp16" => s.fp16 = value.get().expect("type checked upstream"),
            "device" => {
                s.device = non_empty(value.get().expect("type checked upstream")).unwrap_or(DEFAULT_DEVICE.into())
            }
            "aligned" => s.aligned = value.get().expect("type checked upstream"),
            other => unreachable!("unknown property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "model" => s.model.to_value(),
            "model-key" => s.model_key.to_value(),
            "size" => s.size.to_value(),
            "fp16" => s.fp16.to_value(),
            "device" => s.device.to_value(),
            "aligned" => s.aligned.to_value(),
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

impl BaseTransformImpl for GpenFilter {
    const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        if !settings.aligned {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                (
                    "aligned=false (finding and aligning faces in whole frames) is not available in this \
                     version; use aligned=true on frames that are aligned face crops"
                )
            ));
        }
        let restorer_settings = RestorerSettings {
            model: settings.model.as_ref().map(PathBuf::from),
            model_key: settings.model_key.clone(),
            size: settings.size as i64,
            fp16: settings.fp16,
            device: settings.device.clone(),
        };
        let started = std::time::Instant::now();
        let restorer = Restorer::new(&restorer_settings).map_err(|e| start_error(&e))?;
        let model = restorer.model();
        gst::info!(
            CAT,
            imp = self,
            "loaded {} from {} on {:?} ({:?}) in {:.2?}",
            model.config().describe(),
            restorer.model_path().display(),
            model.device(),
            model.kind(),
            started.elapsed()
        );
        *self.state.lock().unwrap() = Some(State { restorer });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Dropping the state frees the model and its device memory.
        self.state.lock().unwrap().take();
        Ok(())
    }
}

/// The byte layout of the colour channels of a packed RGB-family frame.
fn packed_layout(frame: &gst_video::VideoFrameRef<&mut gst::BufferRef>) -> PackedLayout {
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

impl VideoFilterImpl for GpenFilter {
    fn transform_frame_ip(
        &self,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let state = self.state.lock().unwrap();
        let Some(state) = state.as_ref() else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ("Frame received before the model was loaded"));
            return Err(gst::FlowError::Flushing);
        };
        let layout = packed_layout(frame);
        let data = frame.plane_data_mut(0).map_err(|e| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Cannot map the frame: {}", e));
            gst::FlowError::Error
        })?;
        state.restorer.restore_aligned(data, &layout).map_err(|e| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("Restoring a frame failed: {}", e));
            gst::FlowError::Error
        })?;
        Ok(gst::FlowSuccess::Ok)
    }
}
