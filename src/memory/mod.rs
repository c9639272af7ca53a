//! Memory: what the device has and uses (CUDA caching allocator through [`sys`], process memory
//! on the CPU) and out-of-memory recognition; the pure estimator of a plan's peak
//! ([`estimate`]), the plan itself ([`plan`]), and, with the `fault-injection` feature, the
//! injected failures that drive the memory policy in tests ([`fault`]).

pub mod estimate;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod plan;

use tch::{Device, TchError};

pub use estimate::Estimator;
#[cfg(feature = "fault-injection")]
pub use fault::{
    fail_every_from_env, injected_fault, skip_forward_from_env, slow_forward_from_env, FAIL_EVERY_ENV, FAIL_MESSAGE_ENV, SKIP_FORWARD_ENV,
    SLOW_FORWARD_ENV,
};
pub use plan::{MemoryPolicy, MemorySettings, Plan};

pub use crate::sys::release_cached;
use crate::{sys, Error};

const MIB: u64 = 1 << 20;

/// Accelerators the shim sees (0 without a GPU or driver).
pub fn cuda_device_count() -> usize {
    sys::accelerator_count()
}

impl Error {
    /// Whether this is libtorch running out of memory (CUDA or host allocator).
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::OutOfMemory(_) => true,
            Error::Torch(e) => is_out_of_memory(e),
            _ => false,
        }
    }
}

/// Memory figures of a device, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemoryFigures {
    /// What the device (or, on the CPU, the system) has available.
    pub free: u64,
    pub total: u64,
    /// Held by tensors now (CUDA allocator; on the CPU, the process's resident memory).
    pub allocated: u64,
    /// Held by the CUDA caching allocator, used or not (on the CPU, as `allocated`).
    pub reserved: u64,
    /// Most ever `allocated` since the last reset (on the CPU, the process's peak resident).
    pub peak: u64,
}

/// Reads a `kB` field of a `/proc` status file.
fn proc_kib(file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The memory figures of `device`.
pub fn figures(device: Device) -> Result<MemoryFigures, Error> {
    match device {
        Device::Cuda(i) => {
            let (free, total) = sys::accelerator_memory_info(i).map_err(Error::Accelerator)?;
            let (allocated, reserved, peak) = sys::accelerator_allocator_stats(i).map_err(Error::Accelerator)?;
            Ok(MemoryFigures { free, total, allocated, reserved, peak })
        }
        _ => {
            let kib =
                |file, field| proc_kib(file, field).map(|k| k * 1024).ok_or_else(|| Error::Accelerator(format!("no {field} in {file}")));
            let rss = kib("/proc/self/status", "VmRSS:")?;
            Ok(MemoryFigures {
                free: kib("/proc/meminfo", "MemAvailable:")?,
                total: kib("/proc/meminfo", "MemTotal:")?,
                allocated: rss,
                reserved: rss,
                peak: kib("/proc/self/status", "VmHWM:")?,
            })
        }
    }
}

/// Starts a new peak measurement (CUDA only; the CPU's peak resident size cannot be reset).
pub fn reset_peak(device: Device) {
    if let Device::Cuda(i) = device {
        // A failure only leaves the old peak.
        let _ = sys::accelerator_reset_peak(i);
    }
}

/// What libtorch's backends say when an allocation fails, as they say it (matched case-blind):
/// the CUDA, HIP and MPS caching allocators and the CUDA runtime ("out of memory" in its
/// variants), the host allocator (`DefaultCPUAllocator: can't allocate memory`, `std::bad_alloc`),
/// oneDNN (a primitive it could not create, for want of its scratch memory), and cuBLAS, cuDNN,
/// cuFFT, cuSOLVER and cuSPARSE allocation statuses. Only allocation failures: a status such as
/// `CUDNN_STATUS_NOT_SUPPORTED` or `CUBLAS_STATUS_EXECUTION_FAILED` is another error.
pub const OUT_OF_MEMORY_MARKERS: [&str; 12] = [
    "out of memory",
    "can't allocate memory",
    "not enough memory",
    "std::bad_alloc",
    "cudaerrormemoryallocation",
    "could not create a primitive",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cufft_alloc_failed",
    "cusolver_status_alloc_failed",
    "cusparse_status_alloc_failed",
    "failed to allocate memory",
];

/// Whether a libtorch error is an out-of-memory condition, on any backend
/// ([`OUT_OF_MEMORY_MARKERS`]).
pub fn is_out_of_memory(e: &TchError) -> bool {
    is_out_of_memory_text(&e.to_string())
}

/// Whether a libtorch error's text tells of an allocation failure.
pub fn is_out_of_memory_text(text: &str) -> bool {
    let lower = text.to_lowercase();
    OUT_OF_MEMORY_MARKERS.iter().any(|m| lower.contains(m))
}

/// `bytes` in MiB, rounded up.
pub fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_errors_are_recognised() {
        assert!(is_out_of_memory(&TchError::Torch("CUDA out of memory. Tried to allocate 20.00 MiB".into())));
        assert!(is_out_of_memory(&TchError::Torch(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory".into()
        )));
        assert!(is_out_of_memory(&TchError::Torch("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`".into())));
        assert!(is_out_of_memory(&TchError::Torch("cuDNN error: CUDNN_STATUS_ALLOC_FAILED".into())));
        assert!(!is_out_of_memory(&TchError::Torch("Expected 4-dimensional input".into())));
        assert!(!is_out_of_memory(&TchError::Torch("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED".into())));
        assert!(is_out_of_memory(&TchError::Torch("could not create a primitive".into())));
        assert!(!is_out_of_memory(&TchError::Torch("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED".into())));
    }

    #[test]
    fn cpu_figures_are_read_and_gpu_calls_fail_cleanly_without_a_gpu() {
        let f = figures(Device::Cpu).unwrap();
        assert!(f.total > 0 && f.allocated > 0 && f.peak >= f.allocated);
        if cuda_device_count() == 0 {
            assert!(figures(Device::Cuda(0)).is_err());
            release_cached();
            reset_peak(Device::Cuda(0));
        }
    }
}
