//! Moving checkpoint tensors to a model's device and precision, as each layer loads.

use tch::{Device, Kind, TchError, Tensor};

use crate::checkpoint::StateDict;

type Result<T, E = TchError> = std::result::Result<T, E>;

/// Moves checkpoint tensors to the model's device and precision.
pub(super) struct Loader<'a> {
    pub(super) sd: &'a StateDict,
    pub(super) device: Device,
    pub(super) kind: Kind,
}

impl Loader<'_> {
    /// The tensor in fp32 on the CPU, where the constant folding happens.
    pub(super) fn raw(&self, name: &str) -> Result<Tensor> {
        let t = self.sd.get(name).ok_or_else(|| TchError::TensorNameNotFound(name.to_owned(), self.sd.path.display().to_string()))?;
        t.f_to_kind(Kind::Float)
    }

    /// In the compute precision, on the device.
    pub(super) fn put(&self, t: &Tensor) -> Result<Tensor> {
        t.f_to_kind(self.kind)?.f_to_device(self.device)?.f_contiguous()
    }

    /// In fp32, on the device (for the parts kept in full precision).
    pub(super) fn put_f32(&self, t: &Tensor) -> Result<Tensor> {
        t.f_to_device(self.device)?.f_contiguous()
    }

    pub(super) fn get(&self, name: &str) -> Result<Tensor> {
        self.put(&self.raw(name)?)
    }
}
