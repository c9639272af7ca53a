//! `device=auto` on a machine whose NVIDIA driver is installed but cannot run CUDA: the element
//! runs on the CPU and says why in a warning on the bus. The driver is a stub `libcuda.so.1`
//! (built here with the C compiler the shim needs) whose `cuInit` reports no device; the test
//! runs itself again in a child process that finds the stub first.

mod common;

use gst::prelude::*;

const CHILD: &str = "GST_GPEN_TEST_STUB_DRIVER";

const STUB: &str = r#"
int cuInit(unsigned flags) { (void)flags; return 100; }
int cuDriverGetVersion(int *v) { *v = 13000; return 0; }
int cuDeviceGetCount(int *n) { *n = 0; return 100; }
int cuGetErrorString(int rc, const char **s) {
  *s = rc == 100 ? "no CUDA-capable device is detected (stub driver)" : "unknown error (stub driver)";
  return 0;
}
"#;

/// The warnings and errors the bus carried while one frame went through `gpenfilter device=auto`.
fn run_one_frame() -> (Vec<String>, Vec<String>) {
    common::init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=64 ! gpenfilter aligned=true size=256 \
         model={} device=auto ! fakesink",
        common::gpen_fixture("gpen-256-tiny.pth").display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (mut warnings, mut errors) = (Vec::new(), Vec::new());
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Warning(w) => warnings.push(format!("{} ({:?})", w.error(), w.debug())),
            gst::MessageView::Error(e) => {
                errors.push(e.error().to_string());
                break;
            }
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (warnings, errors)
}

#[test]
fn an_unusable_driver_is_reported_as_a_warning() {
    if std::env::var_os(CHILD).is_some() {
        let (warnings, errors) = run_one_frame();
        assert!(errors.is_empty(), "the frame must still be restored on the CPU: {errors:?}");
        let w = warnings.iter().find(|w| w.contains("CUDA cannot be used")).unwrap_or_else(|| panic!("no warning: {warnings:?}"));
        assert!(w.contains("stub driver") || w.contains("libtorch"), "the reason is given: {w}");
        println!("warning: {w}");
        return;
    }
    // Without a driver there is nothing to warn about.
    if gstgpen::sys::cuda_unusable_reason().is_some() {
        eprintln!("an NVIDIA driver is installed here: the stub cannot stand in for it");
        return;
    }
    let (warnings, errors) = run_one_frame();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!warnings.iter().any(|w| w.contains("CUDA")), "no driver, no warning: {warnings:?}");

    let dir = common::scratch("stub-driver");
    std::fs::write(dir.join("stub.c"), STUB).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libcuda.so.1"))
        .arg(dir.join("stub.c"))
        .status()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(built.success(), "building the stub driver failed");
    let path = std::env::var("LD_LIBRARY_PATH").map(|p| format!("{}:{p}", dir.display())).unwrap_or_else(|_| dir.display().to_string());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "an_unusable_driver_is_reported_as_a_warning", "--nocapture"])
        .env(CHILD, "1")
        .env("LD_LIBRARY_PATH", path)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success() && text.contains("warning: "), "child failed:\n{text}");
}
