//! Copies between host and device, counted. Every transfer of the data path goes through here,
//! so that tests can hold a frame to its two synchronising reads (the detections down, the
//! frame down) without a GPU: on the CPU the copies cost nothing but are counted all the same.
//! The counts cover every device, the CPU included. Only [`sys`](crate::sys) (itself a leaf)
//! is imported from this crate.
//!
//! On CUDA nothing here waits for the device but the reads: uploads come from page-locked
//! memory without blocking ([`upload_pinned`]; a plain copy from pageable memory would wait
//! for all the work queued before it), and reads land in page-locked memory by DMA, then wait
//! for libtorch's current stream, the one the copy and all the work before it were queued on.

use std::sync::atomic::{AtomicU64, Ordering};

use tch::{Device, Kind, TchError, Tensor};

/// Host/device transfers of this process, by direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Host to device copies (frames, tables of transforms).
    pub uploads: u64,
    /// Device to host reads: each waits for the device to finish the work it depends on.
    pub downloads: u64,
}

static UPLOADS: AtomicU64 = AtomicU64::new(0);
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);

/// The transfers counted so far in this process.
pub fn transfers() -> Transfers {
    Transfers { uploads: UPLOADS.load(Ordering::Relaxed), downloads: DOWNLOADS.load(Ordering::Relaxed) }
}

/// Copies host data to `device`: one counted upload. On CUDA it waits for the work queued
/// before it (libtorch's blocking copy): the data path uses [`upload_pinned`].
pub fn upload(t: &Tensor, device: Device) -> Result<Tensor, TchError> {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    t.f_to_device(device)
}

/// Copies host bytes to `device` from page-locked memory without waiting: one counted upload
/// (on the CPU the tensor is returned as it is, and counted all the same).
pub fn upload_pinned(t: &Tensor, device: Device) -> Result<Tensor, TchError> {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    if device == Device::Cpu {
        return Ok(t.shallow_clone());
    }
    // Pinned blocks come from libtorch's caching host allocator, which keeps a block until the
    // copies reading it have finished.
    crate::sys::pin_memory(t).map_err(TchError::Torch)?.f_to_device_(device, t.kind(), true, false)
}

/// Reads a device tensor into host memory: one counted download (on the CPU the tensor is
/// returned as it is, and counted all the same: it stands for the wait it would be on a GPU).
/// From CUDA the result is page-locked (see [`to_host`]).
pub fn download(t: &Tensor) -> Result<Tensor, TchError> {
    DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    to_host(t)
}

/// `t` in host memory, uncounted. From CUDA: a non-blocking copy, which libtorch makes into
/// page-locked memory (DMA straight into it, no staging through a driver buffer), then a wait
/// on the current stream of the tensor's device, where the copy was queued: the one wait of a
/// read. On the CPU, `t` itself.
fn to_host(t: &Tensor) -> Result<Tensor, TchError> {
    match t.device() {
        Device::Cpu => Ok(t.shallow_clone()),
        Device::Cuda(index) => {
            let host = t.f_to_device_(Device::Cpu, t.kind(), true, false)?;
            crate::sys::accelerator_synchronize(index).map_err(TchError::Torch)?;
            Ok(host)
        }
        _ => t.f_to_device(Device::Cpu),
    }
}

/// Reads several small tensors (any kind, any shape) as host `f32` values in one copy: one
/// counted download.
pub fn download_f32(parts: &[&Tensor]) -> Result<Vec<Vec<f32>>, TchError> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    let flat: Vec<Tensor> = parts.iter().map(|t| t.f_to_kind(Kind::Float)?.f_reshape([-1])).collect::<Result<_, _>>()?;
    let all = to_host(&Tensor::f_cat(&flat, 0)?)?.f_contiguous()?;
    let mut values = vec![0f32; all.numel()];
    all.f_copy_data(&mut values, all.numel())?;
    let mut out = Vec::with_capacity(parts.len());
    let mut at = 0;
    for t in &flat {
        let n = t.numel();
        out.push(values[at..at + n].to_vec());
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_tensors_come_down_in_one_counted_read() {
        let before = transfers();
        let a = Tensor::from_slice(&[1i64, 2, 3]);
        let b = Tensor::from_slice(&[0.5f32, 0.25]).reshape([2, 1]);
        let got = download_f32(&[&a, &b]).unwrap();
        assert_eq!(got, [vec![1.0, 2.0, 3.0], vec![0.5, 0.25]]);
        let _ = upload(&a, Device::Cpu).unwrap();
        let after = transfers();
        // Other tests of this binary may count at the same time: at least ours are there.
        assert!(after.downloads > before.downloads && after.uploads > before.uploads);
        // CPU tensors are not copied.
        assert_eq!(download(&a).unwrap().data_ptr(), a.data_ptr());
    }
}
