//! Copies between host and device, counted. Every transfer of the data path goes through here,
//! so that tests can hold a frame to its two synchronising reads (the detections down, the
//! frame down) without a GPU: on the CPU the copies cost nothing but are counted all the same.
//! The counts cover every device, the CPU included. A leaf module: it imports nothing of this
//! crate.

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

/// Copies host data to `device`: one counted upload.
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
    t.f_pin_memory(device)?.f_to_device_(device, t.kind(), true, false)
}

/// Reads a device tensor into host memory: one counted download (on the CPU the tensor is
/// returned as it is, and counted all the same: it stands for the wait it would be on a GPU).
pub fn download(t: &Tensor) -> Result<Tensor, TchError> {
    DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    if t.device() == Device::Cpu {
        return Ok(t.shallow_clone());
    }
    t.f_to_device(Device::Cpu)
}

/// Reads several small tensors (any kind, any shape) as host `f32` values in one copy: one
/// counted download.
pub fn download_f32(parts: &[&Tensor]) -> Result<Vec<Vec<f32>>, TchError> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    let flat: Vec<Tensor> = parts.iter().map(|t| t.f_to_kind(Kind::Float)?.f_reshape([-1])).collect::<Result<_, _>>()?;
    let all = Tensor::f_cat(&flat, 0)?.f_to_device(Device::Cpu)?.f_contiguous()?;
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
