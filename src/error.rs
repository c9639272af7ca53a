//! What can go wrong, in the core's own terms: what failed, and what to do about it. The core
//! knows nothing of GStreamer; the element maps each variant to an error domain and names the
//! property behind each [`Setting`].

use std::fmt;
use std::path::PathBuf;

use crate::checkpoint::CheckpointError;

/// A setting of the restoration core, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    Size,
    Precision,
    Model,
    ModelKey,
    Device,
    Mode,
    Restore,
    DetectorModel,
    DetectorVariant,
    Threshold,
    DetectionSize,
    MaxFaces,
    MinFaceSize,
    Alpha,
    FaceBatch,
    Smoothing,
    Consistency,
    DetectionInterval,
    Upscale,
    UpscalerModel,
    TileSize,
    TileOverlap,
    Budget,
    Policy,
    Mask,
    ParseModel,
    MaskRegions,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Setting::Size => "the face size",
            Setting::Precision => "the precision",
            Setting::Model => "the GPEN checkpoint",
            Setting::ModelKey => "the checkpoint key",
            Setting::Device => "the device",
            Setting::Mode => "the mode (aligned faces or whole frames)",
            Setting::Restore => "whether faces are restored",
            Setting::DetectorModel => "the face detector checkpoint",
            Setting::DetectorVariant => "the face detector variant",
            Setting::Threshold => "the detection threshold",
            Setting::DetectionSize => "the detection size",
            Setting::MaxFaces => "the most faces per frame",
            Setting::MinFaceSize => "the smallest face size",
            Setting::Alpha => "the blend of restored and original faces",
            Setting::FaceBatch => "the face batch",
            Setting::Smoothing => "the temporal smoothing",
            Setting::Consistency => "the temporal consistency",
            Setting::DetectionInterval => "the detection interval",
            Setting::Upscale => "the upscale factor",
            Setting::UpscalerModel => "the upscaler checkpoint",
            Setting::TileSize => "the upscaler tile size",
            Setting::TileOverlap => "the upscaler tile overlap",
            Setting::Budget => "the memory budget",
            Setting::Policy => "the memory policy",
            Setting::Mask => "the paste mask",
            Setting::ParseModel => "the face-parsing checkpoint",
            Setting::MaskRegions => "the regions the restored face replaces",
        })
    }
}

/// The network a checkpoint is loaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    Gpen,
    RetinaFace,
    RrdbNet,
    ParseNet,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Gpen => "GPEN generator",
            Network::RetinaFace => "RetinaFace detector",
            Network::RrdbNet => "RRDBNet upscaler",
            Network::ParseNet => "ParseNet face parser",
        })
    }
}

/// Everything that can go wrong while setting up or running a restoration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work, and how to fix it.
    #[error("{setting}: {problem}; {hint}")]
    InvalidSetting { setting: Setting, problem: String, hint: String },
    /// A file a setting names, or a default location, holds nothing usable.
    #[error("{setting}: {}: {problem}; {hint}", path.display())]
    FileNotFound { setting: Setting, path: PathBuf, problem: String, hint: String },
    /// A checkpoint whose tensors do not fit the network it is loaded into: `expected` says what
    /// was looked for (the configuration read from its shapes, …), `details` names the tensors.
    #[error("{}: does not match the {network} ({expected}): {details}", path.display())]
    ModelMismatch { network: Network, path: PathBuf, expected: String, details: String },
    /// A checkpoint refused because reading it could run code or exhaust memory.
    #[error("{}: refused as unsafe: {reason}; re-save the weights as a plain state dict (or safetensors)", path.display())]
    UnsafeCheckpoint { path: PathBuf, reason: String },
    /// A checkpoint that cannot be read: I/O, format, corruption.
    #[error(transparent)]
    Checkpoint(CheckpointError),
    /// A frame's memory smaller than its declared layout (a wrong size or stride upstream).
    #[error("frame: a buffer of {have} bytes does not hold {layout}")]
    BufferTooSmall { have: usize, layout: String },
    /// An output frame, or a region written into it, that does not fit the frame restored.
    #[error("frame: {0}")]
    OutputMismatch(String),
    /// Frames came before their format was known.
    #[error("frame: no format was negotiated before the first frame")]
    NotNegotiated,
    /// A network given an input of the wrong shape.
    #[error("{network}: {problem}")]
    NetworkInput { network: Network, problem: String },
    /// The generator's worker thread could not be started, or is gone.
    #[error("the generator's worker thread {0}")]
    WorkerLost(String),
    /// A generator forward panicked (inside libtorch or our code); its frames are restored alone.
    #[error("the generator's forward panicked")]
    ForwardPanicked,
    /// A step of the core found its own state broken: a bug, reported rather than panicking.
    #[error("internal error: {0}")]
    Internal(String),
    /// A device that cannot be used, with why.
    #[error("device `{device}`: {problem}; {hint}")]
    Device { device: String, problem: String, hint: String },
    /// The accelerator's memory figures could not be read or changed.
    #[error("accelerator memory: {0}")]
    Accelerator(String),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A frame did not fit in memory and the memory policy is `error`.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
}

impl Error {
    pub fn invalid(setting: Setting, problem: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::InvalidSetting { setting, problem: problem.into(), hint: hint.into() }
    }
}

/// A refused checkpoint becomes [`Error::UnsafeCheckpoint`]; every other reading failure stays a
/// [`CheckpointError`].
impl From<CheckpointError> for Error {
    fn from(e: CheckpointError) -> Self {
        match e {
            CheckpointError::Refused { path, reason } => Error::UnsafeCheckpoint { path, reason },
            e => Error::Checkpoint(e),
        }
    }
}
