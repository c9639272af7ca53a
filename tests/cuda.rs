//! CUDA checks, for a machine with a GPU: `cargo test --features cuda-tests --test cuda`.
#![cfg(feature = "cuda-tests")]

mod common;

use gstgpen::gpen::FullGenerator;
use gstgpen::restorer::{compute_kind, parse_device};
use tch::{Device, Kind, Tensor};

fn expected(name: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(common::gpen_fixture(&format!("{name}.expected.safetensors"))).unwrap().into_iter().collect()
}

#[test]
fn cuda_is_linked_and_found() {
    gstgpen::cuda::load_backend().unwrap();
    assert!(tch::Cuda::is_available(), "libtorch_cuda is loaded but no GPU is visible");
    assert_eq!(parse_device("auto").unwrap(), Device::Cuda(0));
    assert_eq!(compute_kind(true, Device::Cuda(0)), Kind::Half);
}

#[test]
fn fp32_and_fp16_on_cuda_match_the_official_cpu_output() {
    gstgpen::cuda::load_backend().unwrap();
    for m in common::manifest() {
        let file = m["file"].as_str().unwrap();
        let name = file.trim_end_matches(".pth");
        let e = expected(name);
        for (kind, max_tol, mean_tol) in [(Kind::Float, 1e-2, 1e-3), (Kind::Half, 0.1, 0.02)] {
            let model = FullGenerator::load(&common::gpen_fixture(file), None, Device::Cuda(0), kind).unwrap();
            let out = model.forward(&e["input"]).unwrap().to_device(Device::Cpu);
            let (max, mean) = common::diff(&out, &e["output"]);
            println!("{file} {kind:?} on CUDA: max abs {max:.2e}, mean abs {mean:.2e}");
            assert!(max <= max_tol && mean <= mean_tol, "{file} {kind:?}: {max} {mean}");
        }
    }
}
