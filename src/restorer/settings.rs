//! What a [`Restorer`](super::Restorer) is built from: every settings type, where files are
//! looked up, which device and precision run, and one [`RestorerSettings::validate`].

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tch::{Device, Kind};

use crate::detect::DetectorVariant;
use crate::error::{Error, Setting};
pub use crate::memory::{MemoryPolicy, MemorySettings};

/// Environment variable naming the folder where `GPEN-BFR-{size}.pth` files are looked up.
pub const MODEL_DIR_ENV: &str = "GST_GPEN_MODEL_DIR";

/// Face sizes of the released GPEN-BFR models.
pub const SIZES: [i64; 4] = [256, 512, 1024, 2048];

/// Detector files looked up in a folder, in this order.
pub const DETECTOR_FILES: [&str; 3] = ["RetinaFace-R50.pth", "retinaface-mnet025-fd1mb.pth", "retinaface-mnet025-std.pth"];

/// Where the networks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA device when there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    /// `auto` (or empty), `cpu`, `cuda` or `cuda:N`.
    fn from_str(spec: &str) -> Result<Self, Error> {
        match spec.trim() {
            "auto" | "" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            s => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(DeviceSpec::Cuda).ok_or_else(|| {
                Error::invalid(Setting::Device, format!("unknown device `{spec}`"), "expected auto, cpu, cuda or cuda:N (N = 0, 1, …)")
            }),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The device this names, checked to exist.
    pub fn resolve(self) -> Result<Device, Error> {
        // Before libtorch is asked about CUDA: it caches its first answer for the process.
        let backend = crate::sys::load_cuda_backend();
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(if crate::sys::cuda_is_available() { Device::Cuda(0) } else { Device::Cpu }),
            DeviceSpec::Cuda(n) => {
                let count = crate::sys::cuda_device_count() as i64;
                if (n as i64) < count {
                    Ok(Device::Cuda(n))
                } else {
                    Err(Error::Device {
                        device: self.to_string(),
                        problem: format!("libtorch sees {count} CUDA device(s) ({})", backend.err().unwrap_or("no GPU visible")),
                        hint: "run on the CPU, or choose auto to pick CUDA when present".into(),
                    })
                }
            }
        }
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` and checks that the device exists.
pub fn parse_device(spec: &str) -> Result<Device, Error> {
    spec.parse::<DeviceSpec>()?.resolve()
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

/// The GPEN checkpoint for `size`, which must exist.
pub fn find_model(model: Option<&Path>, size: i64) -> Result<PathBuf, Error> {
    let path = resolve_model_path(model, size);
    if path.exists() {
        return Ok(path);
    }
    let hint = match model {
        None => format!(
            "none was given, so the default folder was searched: install the official weights there, or name a \
             checkpoint file or folder (or set {MODEL_DIR_ENV})"
        ),
        Some(_) => "name an existing checkpoint file, or a folder holding the official file name".into(),
    };
    Err(Error::FileNotFound { setting: Setting::Model, path, problem: "no such file".into(), hint })
}

/// The detector file: a file as given, or the first of [`DETECTOR_FILES`] in a folder.
pub fn find_detector(model: Option<&Path>) -> Result<PathBuf, Error> {
    let dir_or_file = model.map(Path::to_path_buf).unwrap_or_else(default_model_dir);
    if !dir_or_file.is_dir() {
        return if dir_or_file.exists() {
            Ok(dir_or_file)
        } else {
            Err(Error::FileNotFound {
                setting: Setting::DetectorModel,
                path: dir_or_file,
                problem: "no such file".into(),
                hint: "name a RetinaFace checkpoint file, or a folder holding one".into(),
            })
        };
    }
    DETECTOR_FILES.iter().map(|n| dir_or_file.join(n)).find(|p| p.exists()).ok_or_else(|| Error::FileNotFound {
        setting: Setting::DetectorModel,
        path: dir_or_file,
        problem: format!("no face detector there (looked for {})", DETECTOR_FILES.join(", ")),
        hint: "install one there, or name a RetinaFace checkpoint file".into(),
    })
}

/// What a [`Restorer`](super::Restorer) is built from.
#[derive(Debug, Clone)]
pub struct RestorerSettings {
    /// A checkpoint file, or a folder holding `GPEN-BFR-{size}.pth`; `None`: the default folder.
    pub model: Option<PathBuf>,
    /// The key of a wrapped state dict (`g_ema`, …); `None` detects it.
    pub model_key: Option<String>,
    /// The face size the caller asks for; the checkpoint must have it.
    pub size: i64,
    pub fp16: bool,
    pub device: DeviceSpec,
    /// Frames are aligned faces (no detection); otherwise faces are found in whole frames.
    pub aligned: bool,
    /// False: faces are found, followed and described, and every frame passes through
    /// unrestored (the stream's detect-only mode).
    pub restore: bool,
    pub faces: FaceSettings,
    pub memory: MemorySettings,
    pub upscale: UpscaleSettings,
}

impl Default for RestorerSettings {
    fn default() -> Self {
        RestorerSettings {
            model: None,
            model_key: None,
            size: 512,
            fp16: false,
            device: DeviceSpec::Auto,
            aligned: false,
            restore: true,
            faces: FaceSettings::default(),
            memory: MemorySettings::default(),
            upscale: UpscaleSettings::default(),
        }
    }
}

/// How faces are found and pasted back in whole frames.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceSettings {
    /// A RetinaFace checkpoint, or a folder searched for [`DETECTOR_FILES`]; `None`: the
    /// default weights folder.
    pub detector_model: Option<PathBuf>,
    /// `None` recognises the variant (ResNet-50 files, and the known MobileNet files).
    pub detector_variant: Option<DetectorVariant>,
    /// Longest side, in pixels, frames are detected at (larger frames are scaled down);
    /// 0 detects at the native size.
    pub detection_size: i64,
    /// Most faces per generator forward.
    pub face_batch: usize,
    /// How restored faces are pasted back.
    pub mask: MaskSettings,
    /// The settings that may change while frames flow.
    pub live: LiveSettings,
}

impl Default for FaceSettings {
    fn default() -> Self {
        FaceSettings {
            detector_model: None,
            detector_variant: None,
            detection_size: 1920,
            face_batch: 4,
            mask: MaskSettings::default(),
            live: LiveSettings::default(),
        }
    }
}

/// Which paste mask restored faces go back through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskMode {
    /// The face-parsing mask when a ParseNet checkpoint is found, else the rectangle.
    #[default]
    Auto,
    /// The face-parsing mask (GPEN's `face_enhancement.py`); the checkpoint must be there.
    Parse,
    /// GPEN's fixed soft rectangle.
    Rectangle,
}

/// The official file name of GPEN's face-parsing network.
pub const PARSE_FILE: &str = "ParseNet-latest.pth";

/// ParseNet's classes, in the order of its 19 outputs (CelebAMask-HQ).
pub const PARSE_CLASSES: [&str; 19] = [
    "background",
    "skin",
    "nose",
    "glasses",
    "left eye",
    "right eye",
    "left brow",
    "right brow",
    "left ear",
    "right ear",
    "mouth",
    "upper lip",
    "lower lip",
    "hair",
    "hat",
    "earring",
    "necklace",
    "neck",
    "cloth",
];

/// The parsing classes whose pixels the restored face replaces: bit `i` for class `i` of
/// [`PARSE_CLASSES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskRegions(pub u32);

impl MaskRegions {
    /// GPEN's set: every class but background, hat and cloth.
    pub const GPEN: MaskRegions = MaskRegions(((1 << 19) - 1) & !(1 << 0) & !(1 << 14) & !(1 << 18));

    pub fn replaces(&self, class: usize) -> bool {
        class < 19 && self.0 & (1 << class) != 0
    }

    /// 1.0 for replaced classes and 0.0 for kept ones, in class order.
    pub fn table(&self) -> [f32; 19] {
        std::array::from_fn(|c| if self.replaces(c) { 1.0 } else { 0.0 })
    }
}

impl Default for MaskRegions {
    fn default() -> Self {
        MaskRegions::GPEN
    }
}

/// How restored faces are pasted back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MaskSettings {
    pub mode: MaskMode,
    /// A ParseNet checkpoint, or a folder holding [`PARSE_FILE`]; `None`: the folder of the GPEN
    /// model (the `model` folder, the folder of the `model` file, or the default folder).
    pub parse_model: Option<PathBuf>,
    pub regions: MaskRegions,
}

/// The ParseNet checkpoint `mask` asks for, if any: `Ok(None)` for the rectangle (asked for, or
/// `auto` with no checkpoint found). `model` is the GPEN `model` setting, whose folder is
/// searched when no parsing checkpoint is named.
pub fn find_parser(mask: &MaskSettings, model: Option<&Path>) -> Result<Option<PathBuf>, Error> {
    if mask.mode == MaskMode::Rectangle {
        return Ok(None);
    }
    let (place, named) = match (&mask.parse_model, model) {
        (Some(p), _) => (p.clone(), true),
        (None, Some(m)) if m.is_dir() => (m.to_path_buf(), false),
        // A bare file name lies in the working directory.
        (None, Some(m)) => (m.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf(), false),
        (None, None) => (default_model_dir(), false),
    };
    let path = if place.is_dir() { place.join(PARSE_FILE) } else { place };
    if path.is_file() {
        return Ok(Some(path));
    }
    if mask.mode == MaskMode::Auto && !named {
        return Ok(None);
    }
    Err(Error::FileNotFound {
        setting: Setting::ParseModel,
        path,
        problem: "no face-parsing checkpoint there".into(),
        hint: format!(
            "install {PARSE_FILE} beside the GPEN model (scripts/install-weights.py does), name a ParseNet checkpoint, or \
             paste through the rectangle mask"
        ),
    })
}

/// The colour restored faces are pasted in (the element's `color`); see `restorer::color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorMode {
    /// Faces whose source is black and white (every pixel's channels within a level or two)
    /// pasted as the restored luminance only, so a black-and-white frame stays so; others as
    /// restored.
    #[default]
    Auto,
    /// GPEN's colours on every face.
    Restored,
    /// The restored luminance with the source's chroma on every face: no colour shift and no
    /// chroma flicker of GPEN's making.
    Source,
}

/// Face settings that may change between frames; pushed whole with
/// [`Restorer::set_live`](super::Restorer::set_live).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveSettings {
    /// Minimum face score.
    pub threshold: f64,
    /// Most faces restored per frame (the highest scores); 0 for no limit.
    pub max_faces: usize,
    /// Faces whose box is smaller than this on either side, in pixels, are left alone.
    pub min_face_size: f32,
    /// Blend of restored (1) and original (0) face, as GPEN's `--alpha`.
    pub alpha: f64,
    /// Video: strength, 0 (off) to 1, of the smoothing of each tracked face's landmarks.
    pub smoothing: f64,
    /// Video: strength, 0 (off) to 1, of the blending of each tracked face's restoration with
    /// its previous one in aligned space, where the face is still (see `restorer::temporal`).
    pub consistency: f64,
    /// Video: the detector runs on every Nth frame (and after a scene cut); tracks carry the
    /// faces in between.
    pub detection_interval: u32,
    /// The colour restored faces are pasted in.
    pub color: ColorMode,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            threshold: 0.9,
            max_faces: 32,
            min_face_size: 16.0,
            alpha: 1.0,
            smoothing: 0.5,
            consistency: 0.8,
            detection_interval: 1,
            color: ColorMode::Auto,
        }
    }
}

impl LiveSettings {
    pub fn validate(&self) -> Result<(), Error> {
        let unit = |setting, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::invalid(setting, format!("{v} is outside 0..1"), "choose a value from 0 to 1"))
            }
        };
        unit(Setting::Threshold, self.threshold)?;
        unit(Setting::Alpha, self.alpha)?;
        unit(Setting::Smoothing, self.smoothing)?;
        unit(Setting::Consistency, self.consistency)?;
        if self.detection_interval == 0 {
            return Err(Error::invalid(Setting::DetectionInterval, "0 frames", "run the detector every 1 or more frames"));
        }
        Ok(())
    }
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

impl RestorerSettings {
    /// Checks every value that needs no file or device; the first problem found is returned.
    pub fn validate(&self) -> Result<(), Error> {
        if !SIZES.contains(&self.size) {
            return Err(Error::invalid(Setting::Size, format!("{} is not a GPEN size", self.size), "use 256, 512, 1024 or 2048"));
        }
        if !self.aligned {
            self.faces.live.validate()?;
            if self.faces.face_batch == 0 {
                return Err(Error::invalid(Setting::FaceBatch, "0 faces", "restore at least 1 face per forward"));
            }
        }
        let u = &self.upscale;
        if !self.restore && u.factor != 1 {
            return Err(Error::invalid(
                Setting::Restore,
                "frames pass through untouched, so they cannot be upscaled",
                "set upscale=1, or restore=true",
            ));
        }
        match u.factor {
            1 => {}
            2 | 4 if self.aligned => {
                return Err(Error::invalid(
                    Setting::Upscale,
                    format!("x{} works on whole frames, not on aligned faces", u.factor),
                    "restore whole frames, or do not upscale",
                ))
            }
            2 | 4 => crate::upscale::check_tiles(u.tile, u.overlap)?,
            f => return Err(Error::invalid(Setting::Upscale, format!("x{f}"), "the factor must be 1 (off), 2 or 4")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (s, d) in [("auto", DeviceSpec::Auto), ("", DeviceSpec::Auto), ("cpu", DeviceSpec::Cpu), ("cuda", DeviceSpec::Cuda(0))] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
        }
        assert_eq!(" cuda:3 ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        let e = "gpu".parse::<DeviceSpec>().unwrap_err();
        assert!(matches!(e, Error::InvalidSetting { setting: Setting::Device, .. }), "{e}");
        assert!(e.to_string().contains("cuda:N"), "{e}");
    }

    #[test]
    fn validate_names_the_setting_at_fault() {
        let setting_of = |s: RestorerSettings| match s.validate() {
            Err(Error::InvalidSetting { setting, .. }) => Some(setting),
            Err(e) => panic!("{e}"),
            Ok(()) => None,
        };
        assert_eq!(setting_of(RestorerSettings::default()), None);
        assert_eq!(setting_of(RestorerSettings { size: 300, ..Default::default() }), Some(Setting::Size));
        let live = LiveSettings { alpha: 1.5, ..Default::default() };
        let mut s = RestorerSettings { faces: FaceSettings { live, ..Default::default() }, ..Default::default() };
        assert_eq!(setting_of(s.clone()), Some(Setting::Alpha));
        // Face settings do not matter for aligned faces.
        s.aligned = true;
        assert_eq!(setting_of(s), None);
        let live = LiveSettings { detection_interval: 0, ..Default::default() };
        let s = RestorerSettings { faces: FaceSettings { live, ..Default::default() }, ..Default::default() };
        assert_eq!(setting_of(s), Some(Setting::DetectionInterval));
        let upscale = UpscaleSettings { factor: 2, tile: 40, overlap: 32, model: None };
        let mut s = RestorerSettings { upscale, ..Default::default() };
        assert_eq!(setting_of(s.clone()), Some(Setting::TileSize));
        s.aligned = true;
        assert_eq!(setting_of(s), Some(Setting::Upscale));
        let s = RestorerSettings { upscale: UpscaleSettings { factor: 3, ..Default::default() }, ..Default::default() };
        assert_eq!(setting_of(s), Some(Setting::Upscale));
    }
}
