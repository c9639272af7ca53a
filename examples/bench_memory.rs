//! Restoring a synthetic 1920x1080 clip with 8 faces under memory budgets: peak memory, frames
//! per second and what the memory policy did, for GPEN-512/1024 (random weights in the
//! official shapes) in fp32 and half precision. Also prints what the estimator predicts.
//!
//! ```text
//! cargo run --release --example bench_memory -- [--device cuda|cpu] [--frames 10]
//!     [--sizes 512,1024] [--budgets 2048,4096,8192] [--precisions fp32,fp16] [--estimate-only]
//!     [--shared DIR] [--save-models DIR] [--faces 8] [--warmup 0]
//! ```
//! Frames per second are end to end through the restorer core (`Restorer::process`: upload,
//! scene change and detection, alignment and crops, the generator, paste, the read back), the
//! clock stopped after a wait on the device. `--faces N` (1 to 8) puts fewer faces in the frame;
//! `--warmup N` processes N frames first, outside the clock (the first frames choose kernels and
//! fill the allocator's cache).
//! `--save-models DIR` keeps the random-weight checkpoints in DIR (`GPEN-BFR-{size}.safetensors`)
//! for later steps, such as a `gst-launch-1.0` run of the element.
//! A budget of 0 is the default budget (what the device has free at start). The shared folder
//! (media and detector weights) is `--shared`, else `$GST_GPEN_SHARED`, else `../shared` from the
//! current folder: nothing is fixed at build time, so the binary runs from the device bundle
//! (`scripts/build-device-bundle.sh`). Exits with status 1 if a configuration could not start
//! or failed; `scripts/device-check.sh` runs it on a GPU machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gstgpen::gpen::{random_state_dict, GpenConfig};
use gstgpen::memory::{self, Estimator, Plan};
use gstgpen::restorer::{FaceSettings, MemorySettings, Outcome, PackedLayout, Restorer, RestorerSettings};
use tch::{Device, Kind, Tensor};

/// The shared folder given on the command line or in the environment, else `../shared`.
fn shared_dir(flag: Option<PathBuf>) -> PathBuf {
    let dir = flag.or_else(|| std::env::var_os("GST_GPEN_SHARED").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("../shared"));
    if !dir.join("media/images/grace_hopper_512x512.jpg").exists() {
        eprintln!(
            "bench_memory: no media/images/grace_hopper_512x512.jpg under {}: pass --shared DIR or set GST_GPEN_SHARED",
            dir.display()
        );
        std::process::exit(2);
    }
    dir
}

/// 1920x1080 with `faces` cells of a 4x2 grid of grace_hopper_512x512.jpg at 480 px (the top
/// row first): up to 8 faces.
fn frame(shared: &std::path::Path, faces: i64) -> (Vec<u8>, PackedLayout) {
    let img = image::open(shared.join("media/images/grace_hopper_512x512.jpg")).expect("image").to_rgb8();
    let t = Tensor::from_slice(img.as_raw()).reshape([512, 512, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float);
    let cell = t.upsample_bilinear2d([480, 480], false, None, None);
    let big = Tensor::zeros([1, 3, 1080, 1920], (Kind::Float, Device::Cpu));
    for cell_index in 0..faces.clamp(1, 8) {
        let (row, col) = (cell_index / 4, cell_index % 4);
        big.narrow(2, 30 + row * 540, 480).narrow(3, col * 480, 480).copy_(&cell);
    }
    let hwc = big.round().clamp(0.0, 255.0).to_kind(Kind::Uint8).squeeze_dim(0).permute([1, 2, 0]).contiguous();
    let layout = PackedLayout { width: 1920, height: 1080, stride: 1920 * 3, pixel_stride: 3, rgb_offsets: [0, 1, 2] };
    (Vec::try_from(hwc.flatten(0, -1)).unwrap(), layout)
}

fn list<T: std::str::FromStr>(v: &str) -> Vec<T> {
    v.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn main() {
    // sys loads the CUDA backend before libtorch is asked (it answers once for the process).
    let mut device = if gstgpen::sys::cuda_is_available() { "cuda".to_owned() } else { "cpu".to_owned() };
    let mut shared = None;
    let mut save_models: Option<PathBuf> = None;
    let mut frames = 10;
    let mut sizes: Vec<i64> = vec![512, 1024];
    let mut budgets: Vec<u64> = vec![2048, 4096, 8192];
    let mut precisions: Vec<String> = vec!["fp32".into(), "fp16".into()];
    let mut estimate_only = false;
    let mut faces = 8;
    let mut warmup = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--device" => device = value(),
            "--frames" => frames = value().parse().expect("--frames N"),
            "--sizes" => sizes = list(&value()),
            "--budgets" => budgets = list(&value()),
            "--precisions" => precisions = list(&value()),
            "--estimate-only" => estimate_only = true,
            "--faces" => faces = value().parse().expect("--faces N"),
            "--warmup" => warmup = value().parse().expect("--warmup N"),
            "--shared" => shared = Some(PathBuf::from(value())),
            "--save-models" => save_models = Some(PathBuf::from(value())),
            other => panic!("unknown argument {other}"),
        }
    }

    println!("estimator, 1920x1080 frame with 8 faces (weights included):");
    for &size in &[512i64, 1024] {
        for half in [false, true] {
            for batch in [1usize, 4, 8] {
                let plan = Plan { size, half, face_batch: batch, tile: None, parse: false };
                let b = Estimator::default().peak_bytes(&GpenConfig::official(size), &plan, 8, (1920, 1080));
                println!("  {plan}: {} MiB", memory::mib(b));
            }
        }
    }
    if estimate_only {
        return;
    }

    let shared = shared_dir(shared);
    println!("\ndevice {device}, {} CUDA device(s)", tch::Cuda::device_count());
    let dir = save_models.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("gst-gpen-bench-memory-{}", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    let (bytes, layout) = frame(&shared, faces);
    println!("frames: 1920x1080 with {faces} face(s), {warmup} warm-up frame(s) outside the clock");
    let mut failures = Vec::new();
    println!(
        "\n{:<6} {:<5} {:>8} {:>10} {:>8} {:>7} {:>7} {:>7}  plan at the end",
        "size", "prec", "budget", "peak MiB", "fps", "frames", "drops", "retries"
    );
    for &size in &sizes {
        let path = dir.join(format!("GPEN-BFR-{size}.safetensors"));
        let sd = random_state_dict(&GpenConfig::official(size), 0);
        let tensors: Vec<(String, Tensor)> = sd.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
        Tensor::write_safetensors(&tensors, &path).unwrap();
        drop((tensors, sd));
        for prec in &precisions {
            for &budget in &budgets {
                let settings = RestorerSettings {
                    model: Some(path.clone()),
                    size,
                    fp16: prec == "fp16",
                    device: device.parse().expect("--device"),
                    faces: FaceSettings { detector_model: Some(shared.join("weights/retinaface-mnet025-fd1mb.pth")), ..Default::default() },
                    memory: MemorySettings { budget_mib: budget, ..Default::default() },
                    ..Default::default()
                };
                let mut r = match Restorer::new(&settings) {
                    Ok(r) => r,
                    Err(e) => {
                        println!("{size:<6} {prec:<5} {budget:>8} cannot start: {e}");
                        failures.push(format!("{size} {prec} budget {budget}: cannot start: {e}"));
                        continue;
                    }
                };
                let dev = r.model().device();
                let mut out = bytes.clone();
                for _ in 0..warmup {
                    out.copy_from_slice(&bytes);
                    if let Err(e) = r.process(&mut out, layout, 1.0 / 30.0) {
                        println!("  warm-up error: {e}");
                    }
                }
                memory::release_cached();
                memory::reset_peak(dev);
                let (mut drops, mut retries, mut restored) = (0, 0, 0);
                // Only the restorer's time: the copy of the input frame is left out.
                let mut busy = Duration::ZERO;
                for _ in 0..frames {
                    out.copy_from_slice(&bytes);
                    let t = Instant::now();
                    let outcome = r.process(&mut out, layout, 1.0 / 30.0);
                    busy += t.elapsed();
                    match outcome {
                        Ok(Outcome::Restored { retried, .. }) => {
                            restored += 1;
                            retries += retried as u32;
                        }
                        Ok(Outcome::Dropped { .. }) => drops += 1,
                        Ok(other) => println!("  {other:?}"),
                        Err(e) => {
                            println!("  error: {e}");
                            failures.push(format!("{size} {prec} budget {budget}: {e}"));
                            break;
                        }
                    }
                }
                let t = Instant::now();
                if let Device::Cuda(i) = dev {
                    gstgpen::sys::accelerator_synchronize(i).expect("wait for the CUDA stream");
                }
                let secs = (busy + t.elapsed()).as_secs_f64();
                let peak = memory::figures(dev).map(|f| memory::mib(f.peak)).unwrap_or(0);
                println!(
                    "{size:<6} {prec:<5} {budget:>8} {peak:>10} {:>8.2} {restored:>7} {drops:>7} {retries:>7}  {}{}",
                    frames as f64 / secs,
                    r.plan(),
                    if budget == 0 { format!(" (default budget: {} MiB)", memory::mib(r.budget())) } else { String::new() }
                );
            }
        }
    }
    if save_models.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !failures.is_empty() {
        println!("\n{} configuration(s) failed:", failures.len());
        for f in &failures {
            println!("  {f}");
        }
        std::process::exit(1);
    }
}
