//! The restoration core: frames in memory in, restored frames out. It knows nothing of
//! GStreamer, so tests, examples and benchmarks drive it directly.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, TchError, Tensor};

use crate::gpen::FullGenerator;
use crate::Error;

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
    let cuda = |n: usize| {
        let count = tch::Cuda::device_count();
        if (n as i64) < count {
            Ok(Device::Cuda(n))
        } else {
            Err(Error::Settings(format!(
                "device `{spec}` was requested but libtorch sees {count} CUDA device(s) (no GPU, no driver, \
                 or a CPU-only libtorch); use device=cpu, or device=auto to pick CUDA when present"
            )))
        }
    };
    match spec {
        "auto" | "" => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => cuda(n),
            None => Err(Error::Settings(format!(
                "unknown device `{spec}`: expected auto, cpu, cuda or cuda:N (N = 0, 1, …)"
            ))),
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
}

impl Default for RestorerSettings {
    fn default() -> Self {
        RestorerSettings { model: None, model_key: None, size: 512, fp16: false, device: "auto".into() }
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

/// GPEN restoration of aligned face frames.
#[derive(Debug)]
pub struct Restorer {
    model: FullGenerator,
    model_path: PathBuf,
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
        let kind = compute_kind(settings.fp16, device);
        let sd = crate::checkpoint::load(&path, settings.model_key.as_deref())?;
        let config = crate::gpen::GpenConfig::from_state_dict(&sd)?;
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
        let model = FullGenerator::from_state_dict(&sd, device, kind)?;
        Ok(Restorer { model, model_path: path })
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
        // `data`, which stays borrowed (and alive) for the whole function.
        let frame = unsafe {
            Tensor::f_from_blob(
                data.as_mut_ptr(),
                &[h, w, layout.pixel_stride as i64],
                &[layout.stride as i64, layout.pixel_stride as i64, 1],
                Kind::Uint8,
                Device::Cpu,
            )?
        };
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
