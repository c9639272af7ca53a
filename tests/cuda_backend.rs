//! libtorch's CUDA backend is opened at run time, only where an NVIDIA driver exists
//! (`src/sys.rs`), and before anything asks libtorch about CUDA: libtorch caches its first
//! answer, so a question asked before the backend is loaded switches CUDA off for the process.
//! Runs on any machine: the assertions follow what `load_cuda_backend` found.

mod common;

use std::process::Command;

use gstgpen::restorer::parse_device;
use gstgpen::sys;
use tch::{Device, Kind, Tensor};

fn mapped(lib: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").unwrap().contains(lib)
}

/// What a CUDA tensor says once `libtorch_cuda.so` is open: `None` when the backend is
/// registered (the tensor exists, or fails for want of a driver), the error otherwise.
fn backend_unregistered() -> Option<String> {
    match Tensor::f_zeros([1], (Kind::Float, Device::Cuda(0))) {
        Ok(_) => None,
        Err(e) => {
            let e = e.to_string();
            println!("CUDA tensor: {}", e.lines().next().unwrap_or_default());
            (e.contains("without ATen_cuda") || e.contains("Could not run")).then_some(e)
        }
    }
}

#[test]
fn cuda_libraries_are_opened_only_with_a_driver_and_then_register_the_backend() {
    if std::env::var_os(ENTRY_ENV).is_some() {
        return;
    }
    // CPU work first, as an element on a machine without a GPU does.
    let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    assert_eq!(f64::try_from(x.sum(Kind::Float)).unwrap(), 4.0);
    let driver = sys::load_cuda_backend();
    if let Err(why) = driver {
        // No driver: nothing of CUDA in memory.
        assert!(why.contains("no NVIDIA driver"), "{why}");
        assert!(!mapped("libtorch_cuda.so") && !mapped("libcublasLt"), "CUDA libraries mapped without a driver");
        assert_eq!(sys::cuda_unusable_reason(), None, "no driver: nothing to warn about");
        // Opened anyway (before libtorch is asked about CUDA, which it answers once), the
        // library registers the backend: a CUDA tensor fails for want of a driver, not for
        // want of the backend.
        sys::open_cuda_library().unwrap();
        assert_eq!(backend_unregistered(), None, "backend not registered");
    }
    assert!(mapped("libtorch_cuda.so"));
    let auto = parse_device("auto").unwrap();
    if driver.is_err() {
        assert_eq!(auto, Device::Cpu);
        let err = parse_device("cuda").unwrap_err().to_string();
        assert!(err.contains("0 CUDA device(s)") && err.contains("no NVIDIA driver"), "{err}");
    }
}

/// Names the entry point a child process calls first.
const ENTRY_ENV: &str = "GPEN_TEST_ENTRY_POINT";

/// Public entry points that could ask libtorch about CUDA, by name. Each must load the backend
/// first. `tch::Cuda::is_available` (asked directly, as a library user could) is the control:
/// the check must catch it.
const ENTRY_POINTS: &[&str] = &[
    "sys::cuda_device_count",
    "sys::cuda_is_available",
    "sys::manual_seed",
    "sys::accelerator_count",
    "sys::cuda_unusable_reason",
    "sys::leaky_relu_",
    "memory::figures(cuda:0)",
    "memory::reset_peak(cuda:0)",
    "memory::release_cached",
    "gpen::random_state_dict",
    "rrdbnet::random_state_dict",
    "parse_device(cpu)",
    "parse_device(auto)",
    "parse_device(cuda)",
    "registry::generator(cpu)",
    "Restorer::new(aligned, cpu)",
];
const CONTROL: &str = "tch::Cuda::is_available";

fn call(entry: &str) {
    use gstgpen::memory;
    match entry {
        "sys::cuda_device_count" => drop(sys::cuda_device_count()),
        "sys::cuda_is_available" => drop(sys::cuda_is_available()),
        "sys::manual_seed" => sys::manual_seed(1),
        "sys::accelerator_count" => drop(sys::accelerator_count()),
        "sys::cuda_unusable_reason" => drop(sys::cuda_unusable_reason()),
        "sys::leaky_relu_" => sys::leaky_relu_(&mut Tensor::ones([2], (Kind::Float, Device::Cpu)), 0.2).unwrap(),
        "memory::figures(cuda:0)" => drop(memory::figures(Device::Cuda(0))),
        "memory::reset_peak(cuda:0)" => memory::reset_peak(Device::Cuda(0)),
        "memory::release_cached" => memory::release_cached(),
        "gpen::random_state_dict" => drop(gstgpen::gpen::random_state_dict(&gstgpen::gpen::GpenConfig::official(256), 1)),
        "rrdbnet::random_state_dict" => {
            let cfg = gstgpen::upscale::rrdbnet::RrdbConfig { num_block: 1, num_feat: 8, num_grow_ch: 4, scale: 4 };
            drop(gstgpen::upscale::rrdbnet::random_state_dict(&cfg, 1))
        }
        "parse_device(cpu)" => assert_eq!(parse_device("cpu").unwrap(), Device::Cpu),
        "parse_device(auto)" => drop(parse_device("auto").unwrap()),
        "parse_device(cuda)" => drop(parse_device("cuda")),
        "registry::generator(cpu)" => {
            drop(gstgpen::registry::generator(&common::gpen_fixture("gpen-256-tiny.pth"), None, Device::Cpu, Kind::Float).unwrap())
        }
        "Restorer::new(aligned, cpu)" => drop(
            gstgpen::Restorer::new(&gstgpen::RestorerSettings {
                model: Some(common::gpen_fixture("gpen-256-tiny.pth")),
                size: 256,
                device: gstgpen::restorer::DeviceSpec::Cpu,
                aligned: true,
                ..Default::default()
            })
            .unwrap(),
        ),
        CONTROL => drop(tch::Cuda::is_available()),
        other => panic!("unknown entry point {other}"),
    }
}

/// Run in a child process (see [`every_entry_point_loads_the_backend_before_asking_about_cuda`]):
/// calls one entry point first thing, then opens `libtorch_cuda.so` and checks that libtorch
/// still registers it.
#[test]
fn entry_point_child() {
    let Some(entry) = std::env::var(ENTRY_ENV).ok() else { return };
    // Without a driver the backend is not opened; this opens it anyway when loaded, so that the
    // order can be seen on a machine without a GPU.
    sys::assume_driver_for_tests();
    call(&entry);
    sys::open_cuda_library().unwrap();
    match backend_unregistered() {
        None => println!("BACKEND REGISTERED"),
        Some(e) => println!("BACKEND UNREGISTERED: {}", e.lines().next().unwrap_or_default()),
    }
}

#[test]
fn every_entry_point_loads_the_backend_before_asking_about_cuda() {
    if std::env::var_os(ENTRY_ENV).is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ENTRY_POINTS
        .iter()
        .chain([&CONTROL])
        .map(|&entry| {
            let child = Command::new(&exe)
                .args(["--exact", "entry_point_child", "--nocapture", "--test-threads=1"])
                .env(ENTRY_ENV, entry)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (entry, child)
        })
        .collect();
    let mut wrong = Vec::new();
    for (entry, child) in children {
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let registered = out.status.success() && text.contains("BACKEND REGISTERED");
        let unregistered = out.status.success() && text.contains("BACKEND UNREGISTERED");
        assert!(registered || unregistered, "{entry}: the child failed:\n{text}");
        if entry == CONTROL {
            assert!(unregistered, "the control ({CONTROL} before loading) was not caught:\n{text}");
        } else if !registered {
            wrong.push(format!("{entry}: {}", text.lines().find(|l| l.contains("BACKEND")).unwrap_or_default()));
        }
    }
    assert!(wrong.is_empty(), "entry points asking libtorch about CUDA before loading the backend:\n{}", wrong.join("\n"));
}
