//! Below the crate: the C++ shim over libtorch (accelerator memory figures, cache release, a
//! wait on the current stream, an in-place leaky ReLU), heap trimming, and libtorch's CUDA
//! backend, loaded only where it can be used. A leaf: nothing here imports the rest of the crate.
//!
//! libtorch answers "is there CUDA?" once per process and caches the answer: asked before
//! `libtorch_cuda.so` is loaded, it says no for good. So every function here that reaches
//! libtorch, and every seed or device query of the crate ([`manual_seed`],
//! [`cuda_device_count`], [`cuda_is_available`]), loads the backend first
//! ([`load_cuda_backend`], once per process). Not a library constructor: it would run in every
//! process that loads the plugin (GStreamer's registry scanner among them) and relocate about
//! 110 MiB of CUDA libraries there, from inside the dynamic loader's own `dlopen`.
//!
//! `libtorch_cuda.so` pulls in cuBLASLt, nvJitLink, cuSPARSELt and cuFFT, about 110 MiB of
//! resident memory as they are relocated, even on a machine with no GPU. So it is not linked:
//! it is opened (with its static initializers, which register the CUDA backend) the first time
//! it is needed, and only when an NVIDIA driver (`libcuda.so.1`) is installed. Without a driver
//! no CUDA device can exist, so nothing is lost.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use once_cell::sync::Lazy;
use tch::Tensor;

/// The libtorch library folder this crate was built against: the fallback when the loader's
/// search path (our RUNPATH) does not find the backend.
const BUILT_AGAINST: Option<&str> = option_env!("GPEN_LIBTORCH_LIB");

static BACKEND: Lazy<Result<(), String>> = Lazy::new(open_backend);

/// Set by tests of the loading order: the backend is opened even without a driver.
static ASSUME_DRIVER: AtomicBool = AtomicBool::new(false);

/// Makes sure the CUDA backend is registered if this machine could have a CUDA device. Cheap
/// after the first call. Returns why it is not there otherwise.
pub fn load_cuda_backend() -> Result<(), &'static str> {
    BACKEND.as_ref().map(|_| ()).map_err(String::as_str)
}

/// Makes the next [`load_cuda_backend`] open `libtorch_cuda.so` even without a driver, so that a
/// test can tell whether it ran before libtorch was asked about CUDA. Call it before anything
/// else; it does nothing once the backend was loaded.
#[doc(hidden)]
pub fn assume_driver_for_tests() {
    ASSUME_DRIVER.store(true, Ordering::SeqCst);
}

fn dlopen(name: &CStr, flags: i32) -> *mut c_void {
    // SAFETY: a NUL-terminated name; the handle is kept open for the life of the process (the
    // backend's registrations point into it).
    unsafe { libc::dlopen(name.as_ptr(), flags) }
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

/// The NVIDIA driver library, when installed.
fn driver() -> Option<*mut c_void> {
    let h = dlopen(c"libcuda.so.1", libc::RTLD_LAZY | libc::RTLD_LOCAL);
    (!h.is_null()).then_some(h)
}

fn open_backend() -> Result<(), String> {
    // Already loaded: linked by the application, or Python's torch imported first.
    if !dlopen(c"libtorch_cuda.so", libc::RTLD_LAZY | libc::RTLD_NOLOAD).is_null() {
        return Ok(());
    }
    if driver().is_none() {
        let why = format!("no NVIDIA driver ({})", last_dl_error());
        return if ASSUME_DRIVER.load(Ordering::SeqCst) { open_cuda_library().and(Err(why)) } else { Err(why) };
    }
    open_cuda_library()
}

/// Opens `libtorch_cuda.so` whether or not a driver is there (for tests of the mechanism; use
/// [`load_cuda_backend`]).
#[doc(hidden)]
pub fn open_cuda_library() -> Result<(), String> {
    if !dlopen(c"libtorch_cuda.so", libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
        return Ok(());
    }
    let first = last_dl_error();
    if let Some(dir) = BUILT_AGAINST {
        let path = CString::new(format!("{dir}/libtorch_cuda.so")).map_err(|e| e.to_string())?;
        if !dlopen(&path, libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
            return Ok(());
        }
    }
    Err(format!("libtorch_cuda.so could not be loaded ({first}; {}): a CPU-only libtorch?", last_dl_error()))
}

/// CUDA devices libtorch sees (0 without a driver), the backend loaded first.
pub fn cuda_device_count() -> usize {
    let _ = load_cuda_backend();
    tch::Cuda::device_count().max(0) as usize
}

/// Whether libtorch can use CUDA, the backend loaded first.
pub fn cuda_is_available() -> bool {
    let _ = load_cuda_backend();
    tch::Cuda::is_available()
}

/// Seeds libtorch's generators (CPU and, where there is one, CUDA), the backend loaded first:
/// seeding asks libtorch whether there is CUDA.
pub fn manual_seed(seed: i64) {
    let _ = load_cuda_backend();
    tch::manual_seed(seed);
}

/// Why CUDA cannot be used although an NVIDIA driver is installed (`libcuda.so.1` exists):
/// `libtorch_cuda.so` does not load, the driver fails to initialise (too old for this libtorch's
/// CUDA, no device, …), or libtorch sees no device. `None` when CUDA works, or when there is no
/// driver at all (a machine without a GPU: nothing to warn about).
pub fn cuda_unusable_reason() -> Option<String> {
    let drv = driver()?;
    if let Err(why) = load_cuda_backend() {
        return Some(why.to_owned());
    }
    if tch::Cuda::device_count() > 0 {
        return None;
    }
    Some(match driver_status(drv) {
        Err(e) => format!("the NVIDIA driver fails to initialise CUDA: {e}"),
        Ok((version, 0)) => format!("the NVIDIA driver (CUDA {version}) reports no device"),
        Ok((version, n)) => format!(
            "the NVIDIA driver (CUDA {version}) reports {n} device(s) but libtorch sees none: a driver too old for this \
             libtorch's CUDA, or CUDA_VISIBLE_DEVICES hiding them?"
        ),
    })
}

/// The driver's CUDA version (as `major.minor`) and device count, or the driver's error.
fn driver_status(drv: *mut c_void) -> Result<(String, i32), String> {
    type Init = unsafe extern "C" fn(u32) -> c_int;
    type Int = unsafe extern "C" fn(*mut c_int) -> c_int;
    type ErrorString = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;
    let sym = |name: &CStr| {
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(drv, name.as_ptr()) };
        (!p.is_null()).then_some(p).ok_or_else(|| format!("libcuda.so.1 lacks {}", name.to_string_lossy()))
    };
    // SAFETY: the driver API's documented signatures (cuda.h): cuInit(unsigned), cuDriverGetVersion(int*),
    // cuDeviceGetCount(int*), cuGetErrorString(CUresult, const char**).
    unsafe {
        let init: Init = std::mem::transmute(sym(c"cuInit")?);
        let version: Int = std::mem::transmute(sym(c"cuDriverGetVersion")?);
        let count: Int = std::mem::transmute(sym(c"cuDeviceGetCount")?);
        let error: ErrorString = std::mem::transmute(sym(c"cuGetErrorString")?);
        let describe = |rc: c_int| {
            let mut s: *const c_char = std::ptr::null();
            if error(rc, &mut s) == 0 && !s.is_null() {
                format!("{} (CUresult {rc})", CStr::from_ptr(s).to_string_lossy())
            } else {
                format!("CUresult {rc}")
            }
        };
        let rc = init(0);
        if rc != 0 {
            return Err(describe(rc));
        }
        let (mut v, mut n) = (0, 0);
        let rc = version(&mut v);
        if rc != 0 {
            return Err(describe(rc));
        }
        let rc = count(&mut n);
        if rc != 0 {
            return Err(describe(rc));
        }
        Ok((format!("{}.{}", v / 1000, v % 1000 / 10), n))
    }
}

extern "C" {
    fn gpen_leaky_relu_(t: *mut torch_sys::C_tensor, slope: f64, err: *mut c_char, len: usize) -> i32;
    fn gpen_accelerator_device_count() -> i32;
    fn gpen_accelerator_memory_info(device: i32, free: *mut u64, total: *mut u64, err: *mut c_char, len: usize) -> i32;
    fn gpen_accelerator_allocator_stats(
        device: i32,
        allocated: *mut u64,
        reserved: *mut u64,
        peak: *mut u64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn gpen_accelerator_reset_peak(device: i32, err: *mut c_char, len: usize) -> i32;
    fn gpen_accelerator_empty_cache(err: *mut c_char, len: usize) -> i32;
    fn gpen_accelerator_synchronize(device: i32, err: *mut c_char, len: usize) -> i32;
    fn gpen_pin_memory(t: *const torch_sys::C_tensor, out: *mut *mut torch_sys::C_tensor, err: *mut c_char, len: usize) -> i32;
}

/// Calls a shim function with an error buffer, the CUDA backend loaded first.
fn shim_call(f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<(), String> {
    let _ = load_cuda_backend();
    let mut err = [0 as c_char; 512];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        Ok(())
    } else {
        // SAFETY: the shim always NUL-terminates what it writes into `err`.
        Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
    }
}

/// `leaky_relu_(x, slope)` in place (tch's has no slope argument). The error is libtorch's.
pub fn leaky_relu_(x: &mut Tensor, slope: f64) -> Result<(), String> {
    // SAFETY: `x` is a live tensor owned by the caller; the shim catches every exception and
    // NUL-terminates the message it writes into the buffer.
    shim_call(|e, l| unsafe { gpen_leaky_relu_(x.as_mut_ptr(), slope, e, l) })
}

/// Accelerators the shim sees (0 without a GPU or driver).
pub fn accelerator_count() -> usize {
    let _ = load_cuda_backend();
    // SAFETY: no arguments; the shim catches every exception.
    unsafe { gpen_accelerator_device_count() }.max(0) as usize
}

/// Free and total bytes of accelerator `device`.
pub fn accelerator_memory_info(device: usize) -> Result<(u64, u64), String> {
    let (mut free, mut total) = (0, 0);
    // SAFETY: the out-pointers are valid locals; the shim catches every exception.
    shim_call(|e, l| unsafe { gpen_accelerator_memory_info(device as i32, &mut free, &mut total, e, l) })?;
    Ok((free, total))
}

/// The caching allocator's allocated, reserved and peak-allocated bytes on `device`.
pub fn accelerator_allocator_stats(device: usize) -> Result<(u64, u64, u64), String> {
    let (mut allocated, mut reserved, mut peak) = (0, 0, 0);
    // SAFETY: the out-pointers are valid locals; the shim catches every exception.
    shim_call(|e, l| unsafe { gpen_accelerator_allocator_stats(device as i32, &mut allocated, &mut reserved, &mut peak, e, l) })?;
    Ok((allocated, reserved, peak))
}

/// Starts a new peak measurement of the caching allocator on `device`.
pub fn accelerator_reset_peak(device: usize) -> Result<(), String> {
    // SAFETY: the shim catches every exception.
    shim_call(|e, l| unsafe { gpen_accelerator_reset_peak(device as i32, e, l) })
}

/// Waits for the work queued on libtorch's current stream of accelerator `device` (this
/// thread's, where every op of the crate goes): before the host reads a non-blocking copy, and
/// before a benchmark reads the clock. Other streams are not waited for.
pub fn accelerator_synchronize(device: usize) -> Result<(), String> {
    // SAFETY: the shim catches every exception.
    shim_call(|e, l| unsafe { gpen_accelerator_synchronize(device as i32, e, l) })
}

/// `t` copied into page-locked host memory of the accelerator (`t.pin_memory()`; tch's
/// `pin_memory` passes a device, which libtorch deprecates with a warning on every call).
pub fn pin_memory(t: &Tensor) -> Result<Tensor, String> {
    let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor; on success the shim stores a new tensor that we own.
    shim_call(|e, l| unsafe { gpen_pin_memory(t.as_ptr(), &mut out, e, l) })?;
    // SAFETY: a tensor allocated by the shim with `new`, handed over once.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Returns the caching allocator's unused blocks to the device (nothing to do without one).
pub fn release_cached() {
    // SAFETY: the shim catches every exception and does nothing without a GPU.
    let _ = shim_call(|e, l| unsafe { gpen_accelerator_empty_cache(e, l) });
}

/// Whether [`keep_heap`] is in force: the heap keeps what a forward freed for the next one.
static HEAP_KEPT: AtomicBool = AtomicBool::new(false);

/// Lets glibc keep the memory that a forward frees, for the next forward: a fixed 32 MiB mmap
/// threshold (most feature maps come from the heap, not from fresh mappings) and no automatic
/// trimming of the heap's top, and [`trim_heap`] becomes a no-op. Without it, every forward
/// faulted its whole working set in again from zeroed pages: a quarter of a GPEN-512 forward
/// on CPU went to the kernel (page faults, page clearing), and the forward took 1.38 times as
/// long, for a peak 12 % lower (`docs/profile.md`). The resident size then stays at its
/// peak between forwards, until [`release_heap`]. Process-wide (it is the C library's
/// allocator), set once, on the first model built for the CPU; `GST_GPEN_KEEP_HEAP=0` in the
/// environment keeps glibc's defaults and the trims between phases. A no-op elsewhere.
pub fn keep_heap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("GST_GPEN_KEEP_HEAP").is_some_and(|v| v == "0") {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets the allocator's tuning parameters.
        unsafe {
            if libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, c_int::MAX) == 1 {
                HEAP_KEPT.store(true, Ordering::Release);
            }
        }
    });
}

/// Gives the heap's free pages back to the system, unless [`keep_heap`] is in force. glibc
/// keeps freed blocks below its mmap threshold (which grows to 32 MiB as large blocks are
/// freed) in the heap, so without this the resident size after one phase of a forward stays
/// near its peak and the next phase's peak comes on top of that retained memory. A no-op on
/// other C libraries.
pub fn trim_heap() {
    if TRIM_PAUSED.with(|p| p.get()) > 0 || HEAP_KEPT.load(Ordering::Acquire) {
        return;
    }
    release_heap();
}

/// Gives the heap's free pages back to the system whatever the policy: when models are
/// dropped or built (the loader's temporaries), not between forwards.
pub fn release_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

thread_local! {
    static TRIM_PAUSED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Holds [`trim_heap`] off on this thread while it lives, and trims once when it goes: for
/// networks run back to back (the generator, then face parsing), where giving the pages back in
/// between only makes the next network fault them in again.
pub struct TrimPause(());

impl TrimPause {
    pub fn new() -> Self {
        TRIM_PAUSED.with(|p| p.set(p.get() + 1));
        TrimPause(())
    }
}

impl Default for TrimPause {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TrimPause {
    fn drop(&mut self) {
        TRIM_PAUSED.with(|p| p.set(p.get() - 1));
        trim_heap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_the_shim_fails_cleanly() {
        if accelerator_count() == 0 {
            assert!(accelerator_memory_info(0).is_err());
            assert!(accelerator_allocator_stats(0).is_err());
            assert!(accelerator_reset_peak(0).is_err());
            release_cached();
        }
        trim_heap();
    }

    #[test]
    fn leaky_relu_in_place_applies_the_slope() {
        let mut x = Tensor::from_slice(&[-2f32, 0., 3.]);
        leaky_relu_(&mut x, 0.2).unwrap();
        assert_eq!(Vec::<f32>::try_from(&x).unwrap(), [-0.4f32, 0., 3.]);
    }

    #[test]
    fn no_driver_means_nothing_to_warn_about() {
        if driver().is_none() {
            assert_eq!(cuda_unusable_reason(), None);
        }
    }
}
