//! Every backend's allocation failure is out of memory: each message libtorch gives is injected
//! into a generator forward (GST_GPEN_FAIL_MESSAGE), and memory-policy=degrade retries the frame
//! instead of failing the stream. One test function: the switches are environment variables,
//! read when an element starts.

mod common;

use common::count;
use gst::prelude::*;

/// What the backends say when an allocation fails, as they say it.
const ALLOCATION_FAILURES: [&str; 9] = [
    // oneDNN (CPU convolutions) when its scratch memory cannot be had.
    "could not create a primitive",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)",
    "CUDA error: out of memory",
    "HIP out of memory. Tried to allocate 2.00 GiB",
    "MPS backend out of memory (MPS allocated: 1.00 GB)",
    "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes",
    "std::bad_alloc",
];

/// Errors that are not allocation failures.
const OTHER_FAILURES: [&str; 4] = [
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
    "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED",
    "Expected 4-dimensional input for 4-dimensional weight",
    "CUDA error: device-side assert triggered",
];

/// Runs 4 frames of two faces with every second forward failing with `message`; the statistics.
fn run(message: &str) -> Result<gst::Structure, String> {
    std::env::set_var(gstgpen::memory::FAIL_EVERY_ENV, "2");
    std::env::set_var(gstgpen::memory::FAIL_MESSAGE_ENV, message);
    let description = format!(
        "filesrc location={img} ! jpegdec ! imagefreeze num-buffers=4 ! videoconvert ! video/x-raw,format=RGB \
         ! gpenfilter name=g size=256 model={model} detector-model={det} device=cpu face-batch=2 memory-policy=degrade ! fakesink",
        img = common::shared().join("media/images/two_people.jpg").display(),
        model = common::gpen_fixture("gpen-256-tiny.pth").display(),
        det = common::detector().display(),
    );
    let pipeline = gst::parse::launch(&description).unwrap().downcast::<gst::Pipeline>().unwrap();
    let g = pipeline.by_name("g").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut result = Err("no end within 120 s".to_owned());
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                result = Ok(g.property::<gst::Structure>("stats"));
                break;
            }
            gst::MessageView::Error(e) => {
                result = Err(format!("{} {:?}", e.error(), e.debug()));
                break;
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    std::env::remove_var(gstgpen::memory::FAIL_EVERY_ENV);
    std::env::remove_var(gstgpen::memory::FAIL_MESSAGE_ENV);
    result
}

#[test]
fn every_backends_allocation_failure_is_out_of_memory() {
    common::init();
    for text in ALLOCATION_FAILURES {
        assert!(gstgpen::memory::is_out_of_memory(&tch::TchError::Torch(text.into())), "{text}");
        let s = run(text).unwrap_or_else(|e| panic!("{text:?} was not taken as out of memory: {e}"));
        assert!(count(&s, "retries") >= 1, "{text:?}: degrade retries the frame: {s}");
        assert_eq!(count(&s, "frames-in"), 4, "{s}");
    }
    for text in OTHER_FAILURES {
        assert!(!gstgpen::memory::is_out_of_memory(&tch::TchError::Torch(text.into())), "{text}");
    }
    // An error that is not out of memory still fails the stream, as before.
    assert!(run("Expected 4-dimensional input for 4-dimensional weight").is_err());
}
