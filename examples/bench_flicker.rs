//! Flicker: how much restored faces change from frame to frame against the input
//! (`flicker-amplification`: above 1 the restorer adds flicker), for each setting of
//! `temporal-smoothing` and `temporal-consistency`, and what registration and blending cost per face.
//!
//! ```text
//! cargo run --release --example bench_flicker -- [--frames N] [--threads 2] [--model tiny256|tiny512] [--sigma 0.3] [--shot K] [--color auto|restored|source] [--setting SMOOTHING:CONSISTENCY]...
//! ```
//! Clips: the sample clip, shot by shot (its cuts at frames 20, 82 and 211), and a still photo
//! (astronaut) with fresh noise in every frame (`--sigma`, 0.3 levels by default: most pixels
//! keep their level, as a codec's still background does), the nearly still face, and the same
//! photo drifting by sub-pixel steps (the slow half of `tests/common/motion.rs`'s path). Networks: the tiny GPEN fixtures (random weights in narrow official shapes) and the
//! RetinaFace-MobileNet detector.

#[path = "common/clip.rs"]
mod clip;
#[path = "../tests/common/motion.rs"]
mod motion;

use std::path::PathBuf;
use std::time::Duration;

use gstgpen::restorer::{ColorMode, DeviceSpec, FaceSettings, Flicker, LiveSettings, PackedLayout, Restorer, RestorerSettings};
use tch::{Kind, Tensor};

fn shared() -> PathBuf {
    std::env::var_os("GST_GPEN_SHARED").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared"))
}

/// A still photo with independent noise of `sigma` levels in each of `n` frames.
fn noisy_still(n: usize, sigma: f64) -> (Vec<Vec<u8>>, usize, usize) {
    let image = image::open(shared().join("media/images/astronaut.png")).expect("astronaut.png").to_rgb8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let photo = Tensor::from_slice(image.as_raw()).to_kind(Kind::Float);
    tch::manual_seed(7);
    let frames = (0..n)
        .map(|_| {
            let noisy = (&photo + photo.randn_like() * sigma).round().clamp(0.0, 255.0).to_kind(Kind::Uint8);
            Vec::<u8>::try_from(noisy).unwrap()
        })
        .collect();
    (frames, w, h)
}

/// The photo along the slow part of the test path of `tests/common/motion.rs` (sub-pixel drift
/// and zoom, as a nearly still talking head on a tripod), `n` frames.
fn drifting_still(n: usize) -> (Vec<Vec<u8>>, usize, usize) {
    let image = image::open(shared().join("media/images/astronaut.png")).expect("astronaut.png").to_rgb8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let photo = Tensor::from_slice(image.as_raw()).to_kind(Kind::Float).reshape([h as i64, w as i64, 3]).permute([2, 0, 1]).unsqueeze(0);
    (motion::path(2 * n).iter().take(n).map(|p| motion::render(&photo, p)).collect(), w, h)
}

struct Run {
    flicker: Flicker,
    faces: usize,
    temporal: Duration,
}

/// Restores `frames` as one stream (25 fps) with `live` settings.
fn run(model: &std::path::Path, size: i64, frames: &[Vec<u8>], w: usize, h: usize, live: LiveSettings) -> Run {
    let mut r = Restorer::new(&RestorerSettings {
        model: Some(model.to_path_buf()),
        size,
        device: DeviceSpec::Cpu,
        faces: FaceSettings { detector_model: Some(shared().join("weights/retinaface-mnet025-fd1mb.pth")), live, ..Default::default() },
        ..Default::default()
    })
    .expect("restorer");
    let layout = PackedLayout::rgb(w, h);
    let (mut faces, mut temporal) = (0, Duration::ZERO);
    for f in frames {
        let mut out = f.clone();
        let d = r.begin(f, layout, 1.0 / 25.0).expect("detect");
        let report = r.restore_faces(&d, &mut out, layout).expect("restore");
        faces += report.restored;
        temporal += report.timings.temporal + report.timings.registration;
    }
    Run { flicker: r.flicker().unwrap(), faces, temporal }
}

fn main() {
    let (mut frames, mut threads, mut model, mut sigma, mut only) = (usize::MAX, 2, "tiny256".to_owned(), 0.3, None);
    let mut color = ColorMode::Auto;
    let mut chosen: Vec<(f64, f64)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--frames" => frames = value().parse().expect("--frames N"),
            "--threads" => threads = value().parse().expect("--threads N"),
            "--model" => model = value(),
            "--sigma" => sigma = value().parse().expect("--sigma LEVELS"),
            "--shot" => only = Some(value().parse::<usize>().expect("--shot K")),
            "--setting" => {
                let v = value();
                let (a, b) = v.split_once(':').expect("--setting SMOOTHING:CONSISTENCY");
                chosen.push((a.parse().expect("smoothing"), b.parse().expect("consistency")));
            }
            "--color" => {
                color = match value().as_str() {
                    "auto" => ColorMode::Auto,
                    "restored" => ColorMode::Restored,
                    "source" => ColorMode::Source,
                    other => panic!("--color auto|restored|source, not {other}"),
                }
            }
            other => {
                panic!(
                    "unknown argument {other}; usage: [--frames N] [--threads N] [--model tiny256|tiny512] [--sigma LEVELS] [--shot K] \
                     [--color auto|restored|source] [--setting S:C]..."
                )
            }
        }
    }
    tch::set_num_threads(threads);
    let (file, size) = match model.as_str() {
        "tiny256" => ("gpen-256-tiny.pth", 256),
        "tiny512" => ("gpen-512-tiny.pth", 512),
        other => panic!("unknown model {other}"),
    };
    let model = shared().join("fixtures/gpen").join(file);
    let (mut clip, w, h) = clip::clip_frames(&shared());
    clip.truncate(frames);
    let cuts = [0, 20, 82, 211, clip.len()];
    let shots: Vec<(usize, usize)> = cuts
        .windows(2)
        .enumerate()
        .filter(|(k, c)| c[0] < c[1].min(clip.len()) && only.is_none_or(|o| o == *k))
        .map(|(_, c)| (c[0], c[1].min(clip.len())))
        .collect();
    let (still, sw, sh) = noisy_still(30.min(frames), sigma);
    let (drift, _, _) = drifting_still(30.min(frames));
    println!("flicker amplification (output change / input change inside the pasted region; pairs in brackets)");
    println!("GPEN fixture {file}, RetinaFace-MobileNet, CPU, {threads} threads, color={color:?}");
    println!(
        "clips: short_hamilton_clip.mp4 ({} frames of {w}x{h}) shot by shot; astronaut {sw}x{sh} still + noise sigma {sigma}, and drifting, {} frames each",
        clip.len(),
        still.len()
    );
    let settings = match chosen.is_empty() {
        true => vec![(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.5, 0.8), (0.5, 1.0)],
        false => chosen,
    };
    println!(
        "| temporal-smoothing | temporal-consistency | {} | Hamilton, all shots | still + noise | drift | registration and blending, ms a face |",
        shots.iter().map(|(a, b)| format!("shot {a}..{b}")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|{}---|---|---|---|", "---|".repeat(shots.len()));
    for (smoothing, consistency) in settings {
        let live = LiveSettings { smoothing, consistency, color, ..Default::default() };
        let mut pooled = Flicker::default();
        let (mut faces, mut temporal) = (0, Duration::ZERO);
        let mut cells = Vec::new();
        for &(a, b) in &shots {
            let r = run(&model, size, &clip[a..b], w, h, live);
            pooled = pooled.pooled(&r.flicker);
            faces += r.faces;
            temporal += r.temporal;
            cells.push(figure(&r.flicker));
        }
        let s = run(&model, size, &still, sw, sh, live);
        let d = run(&model, size, &drift, sw, sh, live);
        println!(
            "| {smoothing} | {consistency} | {} | {} | {} | {} | {:.2} |",
            cells.join(" | "),
            figure(&pooled),
            figure(&s.flicker),
            figure(&d.flicker),
            (temporal + s.temporal + d.temporal).as_secs_f64() * 1e3 / (faces + s.faces + d.faces).max(1) as f64
        );
    }
}

fn figure(f: &Flicker) -> String {
    match f.amplification() {
        Some(a) => format!("{a:.2} ({})", f.pairs),
        None => "- (0)".to_owned(),
    }
}
