//! libtorch's CUDA backend, loaded only where it can be used.
//!
//! `libtorch_cuda.so` pulls in cuBLASLt, nvJitLink, cuSPARSELt and cuFFT, about 110 MiB of
//! resident memory as they are relocated, even on a machine with no GPU. So it is not linked:
//! it is opened (with its static initializers, which register the CUDA backend) the first time
//! a device is resolved, and only when an NVIDIA driver (`libcuda.so.1`) is installed. Without a
//! driver no CUDA device can exist, so nothing is lost.

use std::ffi::{c_char, CStr};

use once_cell::sync::Lazy;

/// The libtorch library folder this crate was built against: the fallback when the loader's
/// search path (our RUNPATH) does not find the backend.
const BUILT_AGAINST: Option<&str> = option_env!("GPEN_LIBTORCH_LIB");

static BACKEND: Lazy<Result<(), String>> = Lazy::new(open_backend);

/// Makes sure the CUDA backend is registered if this machine could have a CUDA device: call it
/// before asking libtorch about CUDA (the answer is cached by libtorch on first use). Returns
/// why it is not there otherwise.
pub fn load_backend() -> Result<(), &'static str> {
    BACKEND.as_ref().map(|_| ()).map_err(String::as_str)
}

fn dlopen(name: &CStr, flags: i32) -> bool {
    // SAFETY: a NUL-terminated name; the handle is kept open for the life of the process (the
    // backend's registrations point into it).
    !unsafe { libc::dlopen(name.as_ptr(), flags) }.is_null()
}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by the C library.
    let e: *const c_char = unsafe { libc::dlerror() };
    if e.is_null() {
        String::new()
    } else {
        // SAFETY: checked non-NULL above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

fn open_backend() -> Result<(), String> {
    // Already loaded: linked by the application, or Python's torch imported first.
    if dlopen(c"libtorch_cuda.so", libc::RTLD_LAZY | libc::RTLD_NOLOAD) {
        return Ok(());
    }
    if !dlopen(c"libcuda.so.1", libc::RTLD_LAZY | libc::RTLD_LOCAL) {
        return Err(format!("no NVIDIA driver ({})", last_dl_error()));
    }
    open_library()
}

/// Opens `libtorch_cuda.so` whether or not a driver is there (for tests of the mechanism; use
/// [`load_backend`]).
#[doc(hidden)]
pub fn open_library() -> Result<(), String> {
    if dlopen(c"libtorch_cuda.so", libc::RTLD_NOW | libc::RTLD_GLOBAL) {
        return Ok(());
    }
    let first = last_dl_error();
    if let Some(dir) = BUILT_AGAINST {
        let path = std::ffi::CString::new(format!("{dir}/libtorch_cuda.so")).map_err(|e| e.to_string())?;
        if dlopen(&path, libc::RTLD_NOW | libc::RTLD_GLOBAL) {
            return Ok(());
        }
    }
    Err(format!("libtorch_cuda.so could not be loaded ({first}; {}): a CPU-only libtorch?", last_dl_error()))
}
