//! The CUDA loader under its former paths, for `tests/cuda.rs`: it lives in [`crate::sys`].

#[doc(hidden)]
pub use crate::sys::{load_cuda_backend as load_backend, open_cuda_library as open_library};
