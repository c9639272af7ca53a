//! libtorch's CUDA backend is opened at run time, only where an NVIDIA driver exists
//! (`src/cuda.rs`). Runs on any machine: the assertions follow what `load_backend` found.

use gstgpen::restorer::parse_device;
use tch::{Device, Kind, Tensor};

fn mapped(lib: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").unwrap().contains(lib)
}

#[test]
fn cuda_libraries_are_opened_only_with_a_driver_and_then_register_the_backend() {
    // CPU work first, as an element on a machine without a GPU does.
    let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    assert_eq!(f64::try_from(x.sum(Kind::Float)).unwrap(), 4.0);
    let driver = gstgpen::cuda::load_backend();
    if let Err(why) = driver {
        // No driver: nothing of CUDA in memory.
        assert!(why.contains("no NVIDIA driver"), "{why}");
        assert!(!mapped("libtorch_cuda.so") && !mapped("libcublasLt"), "CUDA libraries mapped without a driver");
        // Opened anyway (before libtorch is asked about CUDA, which it answers once), the
        // library registers the backend: a CUDA tensor fails for want of a driver, not for
        // want of the backend.
        gstgpen::cuda::open_library().unwrap();
        let e = Tensor::f_zeros([1], (Kind::Float, Device::Cuda(0))).unwrap_err().to_string();
        println!("CUDA tensor without a driver: {}", e.lines().next().unwrap_or_default());
        assert!(!e.contains("without ATen_cuda") && !e.contains("Could not run"), "backend not registered: {e}");
    }
    assert!(mapped("libtorch_cuda.so"));
    let auto = parse_device("auto").unwrap();
    if driver.is_err() {
        assert_eq!(auto, Device::Cpu);
        let err = parse_device("cuda").unwrap_err().to_string();
        assert!(err.contains("0 CUDA device(s)") && err.contains("no NVIDIA driver"), "{err}");
    }
}
