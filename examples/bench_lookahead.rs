//! The core's look-ahead on its own, without GStreamer: the Hamilton clip's first frames,
//! decoded beforehand, begun, held for `latency` frames, batched and finished in order, with
//! GPEN-512 in the official shape (random weights), for each latency and, where frames are
//! held, with the generator on the worker thread (`overlap`) and on the caller's.
//!
//! ```text
//! cargo run --release --example bench_lookahead -- [--frames 16] [--latency 0,3] [--face-batch 4] \
//!     [--dtype fp32|bf16] [--threads 2] [--overlap true,false]
//! ```
//! Prints per run: wall time from the first frame begun to the last finished, the generator's
//! batches, faces and time, and their ratio (what the caller's work and the waits add to the
//! generator), and the time waited for the worker.

#[path = "common/batching.rs"]
mod batching;
#[path = "common/clip.rs"]
mod clip;

use batching::{random_gpen_512, scratch, shared, Args};
use std::time::{Duration, Instant};

use gstgpen::restorer::{DeviceSpec, Engine, FaceSettings, Held, Lookahead, Release, RestorerSettings, Stream};
use gstgpen::PackedLayout;

fn main() {
    let args = Args::parse();
    let (frames, face_batch, dtype, threads) = (args.frames, args.face_batch, args.dtype.clone(), args.threads);
    tch::set_num_threads(threads);
    gst::init().unwrap();
    let dir = scratch(env!("CARGO_CRATE_NAME"));
    let model = random_gpen_512(&dir);

    let (all, w, h) = clip::clip_frames(&shared());
    let clip: Vec<Vec<u8>> = all.into_iter().take(frames).collect();
    let layout = PackedLayout::rgb(w, h);
    let settings = RestorerSettings {
        model: Some(model.clone()),
        size: 512,
        fp16: dtype == "bf16",
        device: DeviceSpec::Cpu,
        faces: FaceSettings {
            detector_model: Some(shared().join("weights/retinaface-mnet025-fd1mb.pth")),
            face_batch: face_batch as usize,
            ..Default::default()
        },
        ..Default::default()
    };
    println!("Hamilton clip: {} frames of {w}x{h}, GPEN-512 {dtype}, {threads} threads, the core's look-ahead", clip.len());
    println!("| latency | overlap | face-batch | wall | generator batches / faces | generator time | wall / generator | waited |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let runs = args.runs();
    for (latency, overlap) in runs {
        let mut engine = Engine::new(&settings).unwrap();
        let mut stream = Stream::new(&engine, &settings).unwrap();
        let (mut ahead, error) = Lookahead::new(latency as usize, overlap);
        if let Some(e) = error {
            eprintln!("no worker: {e}");
        }
        let mut warn = |e| eprintln!("not restored ahead: {e}");
        let mut finished = 0;
        let started = Instant::now();
        let mut finish = |held: Held<Vec<u8>>, engine: &mut Engine, stream: &mut Stream| {
            let mut bytes = held.payload;
            let d = held.frame.unwrap().unwrap();
            stream.finish(engine, d, Some((&mut bytes, &layout))).unwrap();
            finished += 1;
        };
        for f in &clip {
            let begun = stream.begin(&engine, f, layout, 1.001 / 30.0);
            ahead.push(&engine, &stream, Held::new(f.clone(), begun, Duration::ZERO), &mut warn);
            while let Release::Ready(held) = ahead.release(&engine, &stream, false, &|| false, &mut warn) {
                finish(held, &mut engine, &mut stream);
            }
        }
        while let Release::Ready(held) = ahead.release(&engine, &stream, true, &|| false, &mut warn) {
            finish(held, &mut engine, &mut stream);
        }
        let wall = started.elapsed();
        assert_eq!(finished, clip.len());
        let runs = engine.generator_runs();
        println!(
            "| {latency} | {overlap} | {face_batch} | {:.2} s | {} / {} | {:.2} s | {:.3} | {:.2} s |",
            wall.as_secs_f64(),
            runs.batches,
            runs.faces,
            runs.time.as_secs_f64(),
            wall.as_secs_f64() / runs.time.as_secs_f64(),
            ahead.waited().as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
