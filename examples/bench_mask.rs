//! What the face-parsing mask costs beside the rectangle: one frame with one face (astronaut,
//! 512x512) restored by GPEN-512 with random weights in the official shapes, pasted through the
//! rectangle and through ParseNet (official configuration, random weights), beside ParseNet's
//! own forward; and what the estimator predicts for parse at 512, fp16, 1080p, 8 faces.
//!
//! ```text
//! cargo run --release --example bench_mask -- --dtype fp32|bf16 --threads 2 --reps 2
//! cargo run --release --example bench_mask -- --clip [--frames N]   # the Hamilton clip, tiny test networks
//! ```
//! With `--clip`, the sample clip is restored end to end with each mask by the tiny GPEN-512 and
//! ParseNet fixtures, and the frame-to-frame change of each track's parsing mask is reported.

#[path = "common/clip.rs"]
mod clip;
use std::path::PathBuf;
use std::time::Instant;

use gstgpen::gpen::{random_state_dict, GpenConfig};
use gstgpen::memory::{mib, Estimator, Plan};
use gstgpen::parse::{ParseConfig, ParseNet};
use gstgpen::restorer::{DeviceSpec, FaceSettings, MaskMode, MaskSettings, PackedLayout, Restorer, RestorerSettings};
use tch::{Device, Kind, Tensor};

fn shared() -> PathBuf {
    std::env::var_os("GST_GPEN_SHARED").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (mut dtype, mut threads, mut reps, mut clip, mut frames) = ("fp32".to_owned(), 2, 2, false, usize::MAX);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--dtype" => dtype = value(),
            "--threads" => threads = value().parse().expect("--threads N"),
            "--reps" => reps = value().parse().expect("--reps N"),
            "--clip" => clip = true,
            "--frames" => frames = value().parse().expect("--frames N"),
            other => panic!("unknown argument {other}; usage: --dtype fp32|bf16 --threads N --reps N"),
        }
    }
    tch::set_num_threads(threads);
    if clip {
        return hamilton(frames);
    }
    let dir = std::env::temp_dir().join(format!("gst-gpen-bench-mask-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, sd: gstgpen::checkpoint::StateDict| {
        let tensors: Vec<(String, Tensor)> = sd.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
        let path = dir.join(name);
        Tensor::write_safetensors(&tensors, &path).unwrap();
        path
    };
    let gpen = write("GPEN-BFR-512.safetensors", random_state_dict(&GpenConfig::official(512), 0));
    let cfg = ParseConfig::default();
    let parser = write("ParseNet-latest.safetensors", gstgpen::parse::random_state_dict(&cfg, 0));
    let image = image::open(shared().join("media/images/astronaut.png")).expect("astronaut.png").to_rgb8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let input = image.into_raw();
    let layout = PackedLayout::rgb(w, h);
    let mut per_frame = Vec::new();
    for mode in [MaskMode::Rectangle, MaskMode::Parse] {
        let mut r = Restorer::new(&RestorerSettings {
            model: Some(gpen.clone()),
            size: 512,
            fp16: dtype == "bf16",
            device: DeviceSpec::Cpu,
            faces: FaceSettings {
                detector_model: Some(shared().join("weights/retinaface-mnet025-fd1mb.pth")),
                mask: MaskSettings { mode, parse_model: Some(parser.clone()), ..Default::default() },
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("restorer");
        let d = r.detect(&input, layout).expect("detect");
        assert_eq!(d.faces.len(), 1);
        let mut times = Vec::new();
        for _ in 0..=reps {
            let mut out = input.clone();
            let t = Instant::now();
            r.restore_faces(&d, &mut out, layout).expect("restore");
            times.push(t.elapsed().as_secs_f64());
        }
        times.remove(0); // warm-up
        per_frame.push(median(times));
    }
    let kind = if dtype == "bf16" { Kind::BFloat16 } else { Kind::Float };
    let net = ParseNet::load(&parser, Device::Cpu, kind).expect("ParseNet");
    let x = Tensor::rand([1, 3, 512, 512], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let _ = net.forward(&x).unwrap();
    let alone = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                let _ = net.forward(&x).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let (rect, parse) = (per_frame[0], per_frame[1]);
    println!(
        "{dtype}, {threads} threads: one face restored and pasted: rectangle {rect:.2} s, parse {parse:.2} s; the parse path adds \
         {:.2} s, ParseNet's own forward {alone:.2} s (ratio {:.2})",
        parse - rect,
        (parse - rect) / alone
    );
    let plan = Plan { size: 512, half: true, face_batch: 4, tile: None, parse: true };
    let c = GpenConfig::official(512);
    let e = Estimator::default();
    println!(
        "estimate, 512 fp16 face-batch 4, 1920x1080 with 8 faces: parse {} MiB, rectangle {} MiB (ParseNet {} MiB of it)",
        mib(e.peak_bytes(&c, &plan, 8, (1920, 1080))),
        mib(e.peak_bytes(&c, &Plan { parse: false, ..plan }, 8, (1920, 1080))),
        mib(Estimator::parse_bytes(4, 2))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn hamilton(first: usize) {
    let (mut frames, w, h) = clip::clip_frames(&shared());
    frames.truncate(first);
    let layout = PackedLayout::rgb(w, h);
    println!("short_hamilton_clip.mp4: {} frames of {w}x{h}, tiny GPEN-512 and ParseNet fixtures, fp32", frames.len());
    for mode in [MaskMode::Rectangle, MaskMode::Parse] {
        let mut r = Restorer::new(&RestorerSettings {
            model: Some(shared().join("fixtures/gpen/gpen-512-tiny.pth")),
            size: 512,
            device: DeviceSpec::Cpu,
            faces: FaceSettings {
                detector_model: Some(shared().join("weights/retinaface-mnet025-fd1mb.pth")),
                mask: MaskSettings { mode, parse_model: Some(shared().join("fixtures/parsenet/parsenet-tiny.pth")), ..Default::default() },
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("restorer");
        let (t, mut faces) = (Instant::now(), 0);
        for f in &frames {
            let mut out = f.clone();
            if let gstgpen::restorer::Outcome::Restored { faces: n, .. } = r.process(&mut out, layout, 1.0 / 25.0).unwrap() {
                faces += n;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let change = r.mask_change().unwrap();
        println!(
            "{mode:?}: {faces} faces restored in {secs:.1} s ({:.1} ms a frame); parsing mask change per frame of a track: as \
             parsed {:.4}, pasted {:.4} ({} pairs)",
            secs * 1e3 / frames.len() as f64,
            change.raw,
            change.pasted,
            change.pairs
        );
    }
}
