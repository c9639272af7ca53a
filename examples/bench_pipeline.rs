//! The cost of the pipeline around the generator (detection, alignment and cropping, paste
//! back) per frame, beside one GPEN-512 forward with random weights in the official shapes.
//!
//! ```text
//! cargo run --release --example bench_pipeline -- [--threads 2] [--reps 5]
//! ```
//! Frames: 640x360 with 2 faces (two_people.jpg resized) and 1920x1080 with 8 faces (a 4x2
//! grid of grace_hopper_512x512.jpg at 480 px), from ../shared/media. The generator inside the
//! pipeline is the narrow gpen-512-tiny fixture, whose crop and paste work is that of any
//! 512 model; its own time is left out of the overhead.
//!
//! Then, on the 1080p frame: what tracking adds per frame (scene-change thumbnail, matching
//! and smoothing 8 faces), and the detector's share of the frame time with
//! `detection-interval` 1 and 5 (30 frames moving 1 px a frame, restored by the tiny fixture;
//! the share for a real GPEN-512 is worked out from the forward measured above).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gstgpen::gpen::{random_state_dict, FullGenerator, GpenConfig};
use gstgpen::restorer::{DeviceSpec, FaceSettings, LiveSettings, PackedLayout, Restorer, RestorerSettings, SceneChange};
use gstgpen::track::{Tracker, TrackerSettings};
use tch::{Device, Kind, Tensor};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn load(name: &str) -> Tensor {
    let img = image::open(shared().join("media/images").join(name)).expect("image").to_rgb8();
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw()).reshape([h as i64, w as i64, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float)
}

fn resize(t: &Tensor, h: i64, w: i64) -> Tensor {
    t.upsample_bilinear2d([h, w], false, None, None)
}

/// Packed RGB bytes of a `1 x 3 x H x W` float image.
fn to_bytes(t: &Tensor) -> (Vec<u8>, PackedLayout) {
    let s = t.size();
    let hwc = t.round().clamp(0.0, 255.0).to_kind(Kind::Uint8).squeeze_dim(0).permute([1, 2, 0]).contiguous();
    let (h, w) = (s[2] as usize, s[3] as usize);
    let layout = PackedLayout { width: w, height: h, stride: w * 3, pixel_stride: 3, rgb_offsets: [0, 1, 2] };
    (Vec::try_from(hwc.flatten(0, -1)).unwrap(), layout)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut threads = 2;
    let mut reps = 5;
    let mut detection_size = FaceSettings::default().detection_size;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).expect("--reps N"),
            "--detection-size" => detection_size = args.next().and_then(|v| v.parse().ok()).expect("--detection-size PX"),
            other => panic!("unknown argument {other}"),
        }
    }
    tch::set_num_threads(threads);
    let restorer_with = |detection_interval: u32| {
        Restorer::new(&RestorerSettings {
            model: Some(shared().join("fixtures/gpen/gpen-512-tiny.pth")),
            size: 512,
            device: DeviceSpec::Cpu,
            faces: FaceSettings {
                detector_model: Some(shared().join("weights/retinaface-mnet025-fd1mb.pth")),
                live: LiveSettings { detection_interval, ..Default::default() },
                detection_size,
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("restorer")
    };
    let mut restorer = restorer_with(1);

    let small = resize(&load("two_people.jpg"), 360, 640);
    let hopper = resize(&load("grace_hopper_512x512.jpg"), 480, 480);
    let big = Tensor::zeros([1, 3, 1080, 1920], (Kind::Float, Device::Cpu));
    for row in 0..2 {
        for col in 0..4 {
            big.narrow(2, 30 + row * 540, 480).narrow(3, col * 480, 480).copy_(&hopper);
        }
    }
    let official =
        FullGenerator::from_state_dict(&random_state_dict(&GpenConfig::official(512), 0), Device::Cpu, Kind::Float).expect("GPEN-512");
    let x = Tensor::rand([1, 3, 512, 512], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let _warm = official.forward(&x).unwrap();
    let forward = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let _y = official.forward(&x).unwrap();
                t.elapsed()
            })
            .collect(),
    );
    println!("machine: {} threads; one GPEN-512 forward (fp32, official shapes): {:.1} ms", threads, forward.as_secs_f64() * 1e3);
    println!("{:<22} {:>5} {:>9} {:>9} {:>9} {:>10} {:>9}", "frame", "faces", "detect", "crop", "paste", "overhead", "/forward");
    for (label, frame) in [("640x360, 2 faces", small), ("1920x1080, 8 faces", big.shallow_clone())] {
        let (bytes, layout) = to_bytes(&frame);
        let mut detect = Vec::new();
        let mut crop = Vec::new();
        let mut paste = Vec::new();
        let mut faces = 0;
        for _ in 0..reps + 1 {
            let t = Instant::now();
            let det = restorer.detect(&bytes, layout).unwrap();
            detect.push(t.elapsed());
            let mut out = bytes.clone();
            let report = restorer.restore_faces(&det, &mut out, layout).unwrap();
            crop.push(report.timings.crop);
            paste.push(report.timings.paste);
            faces = report.restored;
        }
        let (d, c, p) = (median(detect), median(crop), median(paste));
        let overhead = d + c + p;
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        println!(
            "{label:<22} {faces:>5} {:>9} {:>9} {:>9} {:>10} {:>9.3}",
            ms(d),
            ms(c),
            ms(p),
            ms(overhead),
            overhead.as_secs_f64() / forward.as_secs_f64()
        );
    }

    tracking(&restorer, &big, reps);
    detection_interval(&restorer_with, &big, forward);
}

/// Per 1080p frame with 8 faces: the scene-change thumbnail and the tracker's matching and
/// smoothing (what `temporal-smoothing` and `detection-interval` add to every frame).
fn tracking(restorer: &Restorer, frame: &Tensor, reps: usize) {
    let (bytes, layout) = to_bytes(frame);
    let faces = restorer.detect(&bytes, layout).unwrap().faces;
    let frames = 300 * reps;
    let mut scenes = SceneChange::default();
    let mut tracker = Tracker::new(TrackerSettings::default());
    let t = Instant::now();
    for i in 0..frames {
        let _ = scenes.observe(frame).unwrap();
        // Sub-pixel jitter so the filters work as on real detections.
        let jitter = ((i * 7919) % 101) as f32 / 100.0 - 0.5;
        let moved: Vec<_> = faces
            .iter()
            .map(|f| {
                let mut f = *f;
                f.landmarks.iter_mut().flatten().for_each(|v| *v += jitter);
                f
            })
            .collect();
        let _ = tracker.update(&moved, 1.0 / 30.0);
    }
    let per = t.elapsed() / frames as u32;
    let t = Instant::now();
    for _ in 0..frames {
        let _ = tracker.update(&faces, 1.0 / 30.0);
    }
    let matching = t.elapsed() / frames as u32;
    println!(
        "tracking, 1920x1080 with {} faces: {:.3} ms per frame (scene change + matching + smoothing; matching and \
         smoothing alone {:.1} us)",
        faces.len(),
        per.as_secs_f64() * 1e3,
        matching.as_secs_f64() * 1e6
    );
}

/// The detector's share of the frame time with `detection-interval` 1 and 5.
fn detection_interval(restorer_with: &dyn Fn(u32) -> Restorer, frame: &Tensor, forward: Duration) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for interval in [1u32, 5] {
        let mut r = restorer_with(interval);
        let (mut detect, mut restore, mut faces) = (Duration::ZERO, Duration::ZERO, 0);
        let frames = 30;
        for i in 0..frames {
            // One pixel a frame to the right: a moving scene, no cut.
            let moved = frame.roll([i as i64], [3]);
            let (bytes, layout) = to_bytes(&moved);
            let t = Instant::now();
            let det = r.begin(&bytes, layout, 1.0 / 30.0).unwrap();
            detect += t.elapsed();
            let mut out = bytes.clone();
            let t = Instant::now();
            let report = r.restore_faces(&det, &mut out, layout).unwrap();
            restore += t.elapsed();
            faces += report.restored;
        }
        let (d, rs) = (detect / frames, restore / frames);
        let per_face = faces as f64 / frames as f64;
        // With a real GPEN-512 each face costs one forward more than the tiny fixture's.
        let real = rs.as_secs_f64() + per_face * forward.as_secs_f64();
        println!(
            "detection-interval={interval}: detector runs {} of {frames} frames; per frame {:.1} ms detecting \
             (tracking included), {:.1} ms restoring {per_face:.1} faces -> detector share {:.1} % with the tiny \
             model, {:.2} % with a GPEN-512",
            r.video_counters().detector_runs,
            ms(d),
            ms(rs),
            100.0 * d.as_secs_f64() / (d + rs).as_secs_f64(),
            100.0 * d.as_secs_f64() / (d.as_secs_f64() + real)
        );
    }
}
