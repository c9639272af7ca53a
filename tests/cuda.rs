//! CUDA checks, for a machine with a GPU: `cargo test --features cuda-tests --test cuda -- --test-threads=1`
//! (one at a time: the out-of-memory test fills the device). `scripts/device-check.sh` runs the
//! prebuilt binary from the device bundle; every test prints its figures (`--nocapture`).
#![cfg(feature = "cuda-tests")]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use gstgpen::gpen::{random_state_dict, Banding, FullGenerator, GpenConfig};
use gstgpen::memory;
use gstgpen::registry;
use gstgpen::restorer::{
    compute_kind, parse_device, FaceSettings, MemoryPolicy, MemorySettings, Outcome, PackedLayout, Restorer, RestorerSettings,
};
use tch::{Device, Kind, Tensor};

fn expected(name: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(common::gpen_fixture(&format!("{name}.expected.safetensors"))).unwrap().into_iter().collect()
}

/// The CUDA device, after loading the backend (before anything asks libtorch about CUDA).
fn cuda() -> Device {
    gstgpen::sys::load_cuda_backend().expect("the CUDA backend");
    assert!(tch::Cuda::is_available(), "libtorch_cuda is loaded but no GPU is visible");
    Device::Cuda(0)
}

fn detector() -> PathBuf {
    common::shared().join("weights/retinaface-mnet025-fd1mb.pth")
}

/// GPEN-`size` with random weights in the official shapes, written once per process.
fn random_model(size: i64) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| common::scratch("cuda"));
    let path = dir.join(format!("GPEN-BFR-{size}.safetensors"));
    if !path.exists() {
        let sd = random_state_dict(&GpenConfig::official(size), 0);
        let tensors: Vec<(String, Tensor)> = sd.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
        Tensor::write_safetensors(&tensors, &path).unwrap();
    }
    path
}

/// A 1920x1080 RGB frame with a 4x2 grid of grace_hopper_512x512.jpg at 480 px: 8 faces.
fn frame_1080p() -> Vec<u8> {
    let (rgb, w, h) = common::decode_image(&common::shared().join("media/images/grace_hopper_512x512.jpg"));
    let cell = common::rgb_tensor(&rgb, w, h).upsample_bilinear2d([480, 480], false, None, None);
    let big = Tensor::zeros([1, 3, 1080, 1920], (Kind::Float, Device::Cpu));
    for row in 0..2 {
        for col in 0..4 {
            big.narrow(2, 30 + row * 540, 480).narrow(3, col * 480, 480).copy_(&cell);
        }
    }
    let hwc = big.round().clamp(0.0, 255.0).to_kind(Kind::Uint8).squeeze_dim(0).permute([1, 2, 0]).contiguous();
    Vec::try_from(hwc.flatten(0, -1)).unwrap()
}

const LAYOUT_1080P: PackedLayout = PackedLayout { width: 1920, height: 1080, stride: 1920 * 3, pixel_stride: 3, rgb_offsets: [0, 1, 2] };

fn mib(bytes: u64) -> u64 {
    memory::mib(bytes)
}

#[test]
fn cuda_is_linked_and_found() {
    let dev = cuda();
    assert_eq!(parse_device("auto").unwrap(), dev);
    assert_eq!(compute_kind(true, dev), Kind::Half);
    let f = memory::figures(dev);
    println!("CUDA devices: {}; memory figures before any tensor: {f:?}", tch::Cuda::device_count());
}

#[test]
fn fp32_and_fp16_on_cuda_match_the_official_cpu_output() {
    let dev = cuda();
    for m in common::manifest() {
        let file = m["file"].as_str().unwrap();
        let name = file.trim_end_matches(".pth");
        let e = expected(name);
        for (kind, max_tol, mean_tol) in [(Kind::Float, 1e-2, 1e-3), (Kind::Half, 0.1, 0.02)] {
            let model = FullGenerator::load(&common::gpen_fixture(file), None, dev, kind).unwrap();
            let out = model.forward(&e["input"]).unwrap().to_device(Device::Cpu);
            let (max, mean) = common::diff(&out, &e["output"]);
            println!("{file} {kind:?} on CUDA: max abs {max:.2e}, mean abs {mean:.2e}");
            assert!(max <= max_tol && mean <= mean_tol, "{file} {kind:?}: {max} {mean}");
        }
    }
}

/// Real-size random weights in float16: finite, near fp32; and the cost of banding on the GPU
/// (`Banding::Default` against `Banding::Off`), for the decision of when to band on CUDA.
#[test]
fn real_size_fp16_is_finite_and_banding_costs_are_measured() {
    let dev = cuda();
    for size in [512i64, 1024] {
        let sd = random_state_dict(&GpenConfig::official(size), 1);
        tch::manual_seed(2);
        let input = Tensor::rand([4, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let fp32 = FullGenerator::from_state_dict(&sd, dev, Kind::Float).unwrap().forward_with(&input, Banding::Off).unwrap();
        let half = FullGenerator::from_state_dict(&sd, dev, Kind::Half).unwrap();
        let mut times = Vec::new();
        let mut outs = Vec::new();
        for banding in [Banding::Default, Banding::Off] {
            let _ = half.forward_with(&input.narrow(0, 0, 1), banding).unwrap(); // warm-up
            tch::Cuda::synchronize(0);
            memory::release_cached();
            memory::reset_peak(dev);
            let t = Instant::now();
            let out = half.forward_with(&input, banding).unwrap();
            tch::Cuda::synchronize(0);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let peak = memory::figures(dev).map(|f| mib(f.peak)).unwrap_or(0);
            times.push(format!("{banding:?} {ms:.1} ms, peak {peak} MiB"));
            outs.push(out);
        }
        for (out, label) in outs.iter().zip(["Default", "Off"]) {
            let bad = out.numel() as i64 - out.isfinite().sum(Kind::Int64).int64_value(&[]);
            let (max, mean) = common::diff(&out.to_device(Device::Cpu), &fp32.to_device(Device::Cpu));
            let absmax = fp32.abs().max().double_value(&[]);
            println!("GPEN-{size} fp16 x4 ({label} banding): {bad} non-finite; max abs {max:.3e}, mean abs {mean:.3e} from fp32 (|fp32| max {absmax:.2})");
            assert_eq!(bad, 0, "GPEN-{size} fp16: {bad} non-finite values");
            assert!(mean <= 0.05 * absmax.max(1.0), "GPEN-{size} fp16 mean abs {mean} from fp32");
        }
        println!("GPEN-{size} fp16, 4 faces: {}", times.join("; "));
    }
}

/// `gpenfilter device=auto fp16=true` with the default budget (vram-budget=0) on 1080p frames
/// with 8 faces: what a user types on an NVIDIA card.
#[test]
fn element_restores_1080p_in_fp16_on_auto_with_the_default_budget() {
    cuda();
    let model = random_model(512);
    let frames = vec![frame_1080p(); 30];
    let (model_s, det_s) = (model.display().to_string(), detector().display().to_string());
    let props = [("model", model_s.as_str()), ("detector-model", det_s.as_str()), ("device", "auto"), ("fp16", "true")];
    let (out, stats, secs) = common::run_element(&props, &frames, 1920, 1080);
    println!("gpenfilter device=auto fp16=true, 1080p x {}: {:.2} fps; {stats}", frames.len(), frames.len() as f64 / secs);
    assert_eq!(out.len(), frames.len(), "{stats}");
    assert_eq!(common::count(&stats, "frames-out"), frames.len() as u64, "{stats}");
    assert!(common::count(&stats, "faces-restored") >= 8 * frames.len() as u64 / 2, "{stats}");
    assert!(out.iter().all(|f| f != &frames[0]), "a frame came out unchanged");
    assert!(stats.get::<String>("plan").unwrap().contains("fp16=true"), "{stats}");
}

/// Two elements in two threads share one model: loaded once, and each gives what one alone gives.
#[test]
fn two_elements_share_one_model() {
    cuda();
    let model = random_model(512);
    let frames = vec![frame_1080p(); 6];
    let (model_s, det_s) = (model.display().to_string(), detector().display().to_string());
    let props = [("model", model_s.as_str()), ("detector-model", det_s.as_str()), ("device", "cuda"), ("fp16", "true")];
    let (alone, _, _) = common::run_element(&props, &frames, 1920, 1080);
    let before = registry::loads_of(&model);
    let t = Instant::now();
    let both: Vec<_> = std::thread::scope(|s| {
        let h: Vec<_> = (0..2).map(|_| s.spawn(|| common::run_element(&props, &frames, 1920, 1080))).collect();
        h.into_iter().map(|h| h.join().expect("a stream panicked")).collect()
    });
    let loads = registry::loads_of(&model) - before;
    println!("two elements, {} frames each: {:.2} s, {loads} model load(s)", frames.len(), t.elapsed().as_secs_f64());
    assert!(loads <= 1, "the model was loaded {loads} times for two elements");
    for (out, stats, _) in &both {
        assert_eq!(out.len(), frames.len(), "{stats}");
        for (a, b) in out.iter().zip(&alone) {
            // cuDNN may pick other kernels under concurrency: a few levels, not a different frame.
            let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
            let mean = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as f64).sum::<f64>() / a.len() as f64;
            println!("  shared-model frame vs single stream: worst {worst} levels, mean {mean:.4}");
            assert!(worst <= 8 && mean <= 0.05, "a shared-model frame differs from the single stream's: worst {worst}, mean {mean}");
        }
    }
}

/// A real out-of-memory: another allocation holds all but about 1 GiB of the device, the budget
/// says there is plenty, and `memory-policy=degrade` must still bring frames out, retrying or
/// degrading on the way.
#[test]
fn real_out_of_memory_is_handled_by_degrade() {
    let dev = cuda();
    let settings = RestorerSettings {
        model: Some(random_model(512)),
        size: 512,
        fp16: false,
        device: gstgpen::restorer::DeviceSpec::Cuda(0),
        faces: FaceSettings { detector_model: Some(detector()), face_batch: 8, ..Default::default() },
        // Far more than is free once the hog is in place: the planner starts from the best plan.
        memory: MemorySettings { budget_mib: 64 << 10, policy: MemoryPolicy::Degrade, fail_every: 0 },
        ..Default::default()
    };
    let mut r = Restorer::new(&settings).unwrap();
    let first_plan = r.plan();
    let bytes = frame_1080p();
    // Detections first (the detector is small), then the hog.
    let det = r.detect(&bytes, LAYOUT_1080P).unwrap();
    assert!(det.faces.len() >= 8, "{} faces", det.faces.len());
    memory::release_cached();
    let f = memory::figures(dev).unwrap();
    let leave = 1u64 << 30;
    let hog_bytes = f.free.saturating_sub(leave);
    let hog = Tensor::f_empty([hog_bytes as i64], (Kind::Uint8, dev)).expect("the hog allocation");
    let after = memory::figures(dev).unwrap();
    println!(
        "device {} MiB, free {} MiB before the hog of {} MiB, {} MiB after; plan {first_plan}",
        mib(f.total),
        mib(f.free),
        mib(hog_bytes),
        mib(after.free)
    );
    let (mut restored, mut retried, mut dropped, mut last_restored) = (0, 0, 0, false);
    for i in 0..8 {
        let mut out = bytes.clone();
        let outcome = r.process(&mut out, LAYOUT_1080P, 1.0 / 30.0).expect("degrade turns out-of-memory into an outcome");
        println!("  frame {i}: {outcome:?}");
        last_restored = false;
        match outcome {
            Outcome::Restored { retried: again, .. } => {
                restored += 1;
                retried += again as u32;
                last_restored = out != bytes;
            }
            Outcome::Dropped { .. } => dropped += 1,
            other => panic!("frame {i}: {other:?}"),
        }
    }
    drop(hog);
    println!("restored {restored}, retried {retried}, dropped {dropped}; plan {first_plan} -> {}", r.plan());
    assert!(restored >= 1 && last_restored, "frames must come out restored once degraded");
    assert!(retried + dropped >= 1 || r.plan() != first_plan, "no out-of-memory was met: the hog left too much");
}

/// GPEN-512 and 1024 in fp32 and fp16 through the restorer on 1080p frames with 8 faces, under
/// the default budget (0) and 2, 4, 8 GiB: everything starts and restores (also run, with more
/// figures, by `bench_memory` in `scripts/device-check.sh`).
#[test]
fn budgets_from_default_to_8_gib_start_and_restore() {
    let dev = cuda();
    let bytes = frame_1080p();
    for size in [512i64, 1024] {
        for fp16 in [false, true] {
            for budget_mib in [0u64, 2048, 4096, 8192] {
                let settings = RestorerSettings {
                    model: Some(random_model(size)),
                    size,
                    fp16,
                    device: gstgpen::restorer::DeviceSpec::Cuda(0),
                    faces: FaceSettings { detector_model: Some(detector()), ..Default::default() },
                    memory: MemorySettings { budget_mib, ..Default::default() },
                    ..Default::default()
                };
                let mut r = Restorer::new(&settings).unwrap_or_else(|e| panic!("GPEN-{size} fp16={fp16} budget {budget_mib}: {e}"));
                memory::release_cached();
                memory::reset_peak(dev);
                let t = Instant::now();
                let mut out = bytes.clone();
                let outcome = r.process(&mut out, LAYOUT_1080P, 1.0 / 30.0).unwrap();
                tch::Cuda::synchronize(0);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let peak = memory::figures(dev).map(|f| mib(f.peak)).unwrap_or(0);
                println!(
                    "GPEN-{size} fp16={fp16} budget {budget_mib} MiB (resolved {} MiB): {ms:.0} ms, peak {peak} MiB, {outcome:?}",
                    mib(r.budget())
                );
                assert!(matches!(outcome, Outcome::Restored { .. }), "GPEN-{size} fp16={fp16} budget {budget_mib}: {outcome:?}");
                assert!(budget_mib == 0 || peak <= budget_mib + budget_mib / 4, "peak {peak} MiB over budget {budget_mib} MiB");
            }
        }
    }
}

#[test]
fn face_parsing_on_cuda_matches_gpen() {
    let dev = cuda();
    let parsenet = common::shared().join("fixtures/parsenet/parsenet-tiny.pth");
    let (rgb, w, h) = common::decode_image(&common::gpen_fixture("gpen-512-tiny.output0.png"));
    let x = (common::rgb_tensor(&rgb, w, h) / 255.0 * 2.0 - 1.0).to_device(dev);
    let want: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(common::shared().join("fixtures/parsenet/parsenet-tiny.expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    // fp32 within 1e-2: cuDNN may run convolutions in TF32 on recent GPUs.
    for (kind, tol) in [(Kind::Float, 1e-2), (Kind::Half, 5e-2)] {
        let net = gstgpen::parse::ParseNet::load(&parsenet, dev, kind).unwrap();
        let logits = net.forward(&x).unwrap().to_device(Device::Cpu);
        let (max, mean) = common::diff(&logits.slice(2, 0, 512, 4).slice(3, 0, 512, 4), &want["out_mask_s4"]);
        println!("ParseNet {kind:?} on CUDA: logits max abs {max:.2e}, mean abs {mean:.2e}");
        assert!(bool::try_from(logits.isfinite().all()).unwrap() && max <= tol, "{kind:?}: {max}");
    }
    // A whole frame through the parsing mask, on CUDA in fp32, against GPEN's own output.
    let (photo, pw, ph) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let layout = PackedLayout::rgb(pw, ph);
    let mut r = Restorer::new(&RestorerSettings {
        model: Some(common::gpen_fixture("gpen-512-tiny.pth")),
        size: 512,
        device: gstgpen::restorer::DeviceSpec::Cuda(0),
        faces: FaceSettings {
            detector_model: Some(detector()),
            mask: gstgpen::restorer::MaskSettings {
                mode: gstgpen::restorer::MaskMode::Parse,
                parse_model: Some(parsenet),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let d = r.detect(&photo, layout).unwrap();
    let mut out = photo.clone();
    assert_eq!(r.restore_faces(&d, &mut out, layout).unwrap().restored, 1);
    let (want, _, _) = common::decode_image(&common::shared().join("fixtures/whole-frame/astronaut.parse-replicate.png"));
    let diff = common::channel_differences(&out, &want);
    println!("astronaut through the parsing mask on CUDA: mean / p99.9 per channel {diff:.3?}");
    assert!(diff.iter().all(|&(mean, p)| mean <= 0.3 && p <= 3), "{diff:?}");
}
