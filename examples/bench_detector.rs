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
use gst_video::prelude::*;
use gstgpen::detect::{detect_at_scales, iou, RetinaFace};
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

/// A picture decoded to packed RGB, with its width and height.
fn image_rgb(path: &std::path::Path) -> (Vec<u8>, i64, i64) {
    let (frames, info) = {
        let caps = "video/x-raw,format=RGB";
        let pipeline = format!("filesrc location={} ! decodebin ! videoconvert ! {caps} ! appsink name=sink sync=false", path.display());
        clip::buffers_of(&pipeline, 1)
    };
    let (w, h) = (info.width() as usize, info.height() as usize);
    let f = gst_video::VideoFrameRef::from_buffer_ref_readable(frames[0].as_ref(), &info).unwrap();
    let stride = f.plane_stride()[0] as usize;
    let data = f.plane_data(0).unwrap();
    ((0..h).flat_map(|y| data[y * stride..y * stride + 3 * w].to_vec()).collect(), w as i64, h as i64)
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
        // bf16: the same faces? Boxes and landmarks against fp32's.
        let fp32 = detect_at_scales(&det, &frame, &scales, 0.9).unwrap();
        let bf16 = RetinaFace::load_in(&shared().join("weights").join(file), None, Device::Cpu, Kind::BFloat16).unwrap();
        let mut found = Vec::new();
        let s = median(reps, || found = detect_at_scales(&bf16, &frame, &scales, 0.9).unwrap());
        row("bf16, as the element runs it", s, found.len());
        // Each fp32 face against the bf16 face that overlaps it most.
        let off = fp32
            .iter()
            .filter_map(|a| found.iter().max_by(|x, y| iou(&a.bbox, &x.bbox).total_cmp(&iou(&a.bbox, &y.bbox))).map(|b| (a, b)))
            .flat_map(|(a, b)| a.landmarks.as_flattened().iter().zip(b.landmarks.as_flattened()).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        println!("| {file} | bf16 landmarks against fp32's | largest difference {off:.2} px | | |");
        // The faces found in the whole-frame fixtures' pictures (GPEN's own test frames).
        for name in ["astronaut.png", "obama_partial_face.jpg", "solvay_conference_1927.png", "two_people.jpg"] {
            let (rgb, w, h) = {
                let img = image_rgb(&shared().join("media/images").join(name));
                (img.0, img.1, img.2)
            };
            let t = Tensor::from_slice(&rgb).reshape([h, w, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float);
            let long = w.max(h) as f64;
            let scales: Vec<f64> = if file.contains("fd1mb") && long > 480.0 { vec![1.0, 320.0 / long] } else { vec![1.0] };
            let (a, b) = (detect_at_scales(&det, &t, &scales, 0.9).unwrap(), detect_at_scales(&bf16, &t, &scales, 0.9).unwrap());
            let same = a.iter().filter(|f| b.iter().any(|g| iou(&f.bbox, &g.bbox) > 0.7)).count();
            println!("| {file} | {name}: faces fp32 / bf16 / both | {} / {} / {same} | | |", a.len(), b.len());
        }
    }
}
