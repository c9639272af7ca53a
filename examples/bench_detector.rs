//! The detector's cost on a 1080p frame against one GPEN-512 fp32 face, side by side in one run
//! on the same CPU: RetinaFace-MobileNet0.25 (both weights in `../shared`) as the element runs
//! it (native size, plus the reduced pass of the fd1mb anchors), its network alone, and its
//! network on a channels-last input; GPEN-512 in the official shape with random weights.
//!
//! ```text
//! cargo run --release --example bench_detector -- [--threads 2] [--reps 3]
//! ```

#[path = "common/batching.rs"]
#[allow(dead_code)] // its shared() only
mod batching;
#[path = "common/clip.rs"]
mod clip;

use batching::shared;
use gstgpen::detect::{detect_at_scales, RetinaFace};
use gstgpen::gpen::{random_state_dict, Banding, FullGenerator, GpenConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The median seconds of `reps` runs of `f`, after one warm-up run.
fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The clip's first frame scaled to 1920x1080, as a `1 x 3 x H x W` float tensor (0..255).
fn frame_1080p() -> Tensor {
    let frame = clip::clip_buffers(&shared(), "video/x-raw,format=RGB,width=1920,height=1080", 1).0.remove(0);
    let map = frame.map_readable().unwrap();
    Tensor::from_slice(map.as_slice()).reshape([1080, 1920, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| args.windows(2).find(|w| w[0] == name).map_or(default, |w| w[1].parse().unwrap());
    let (threads, reps) = (arg("--threads", 2), arg("--reps", 3));
    tch::set_num_threads(threads as i32);
    gst::init().unwrap();
    let frame = frame_1080p();
    let _guard = tch::no_grad_guard();
    let face = {
        let sd = random_state_dict(&GpenConfig::official(512), 0);
        let model = FullGenerator::from_state_dict(&sd, Device::Cpu, Kind::Float).unwrap();
        let x = Tensor::rand([1, 3, 512, 512], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        median(reps.min(2), || drop(model.forward_with(&x, Banding::Off).unwrap()))
    };
    println!("1080p frame, {threads} threads; one GPEN-512 fp32 face: {face:.3} s (the goal: a detector pass within {:.3} s)", face / 10.0);
    println!("| detector | what | seconds | / GPEN-512 face | faces |");
    println!("| --- | --- | --- | --- | --- |");
    for file in ["retinaface-mnet025-fd1mb.pth", "retinaface-mnet025-std.pth"] {
        let det = RetinaFace::load(&shared().join("weights").join(file), None, Device::Cpu).unwrap();
        let reduced = 320.0 / 1920.0;
        let scales: Vec<f64> = if file.contains("fd1mb") { vec![1.0, reduced] } else { vec![1.0] };
        let mut n = 0;
        let row = |what: &str, s: f64, n: usize| println!("| {file} | {what} | {s:.3} | {:.3} | {n} |", s / face);
        let s = median(reps, || n = detect_at_scales(&det, &frame, &scales, 0.9).unwrap().len());
        row("as the element runs it", s, n);
        let s = median(reps, || drop(det.candidates(&frame).unwrap()));
        row("network, native size", s, 0);
        let nhwc = frame.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let s = median(reps, || drop(det.candidates(&nhwc).unwrap()));
        row("network, channels-last input", s, 0);
        let half = frame.upsample_bilinear2d([540, 960], false, None, None).round();
        let s = median(reps, || drop(det.candidates(&half).unwrap()));
        row("network, half size", s, 0);
    }
}
