//! Whole frames through the element against the generator's own time: the Hamilton clip's
//! first frames, decoded beforehand, through `appsrc ! gpenfilter ! videoconvert ! x264enc !
//! fakesink`, with GPEN-512 in the official shape (random weights), for each `batch-latency`
//! and, where frames are held, with the generator on the worker thread (`overlap=true`) and on
//! the streaming thread (`false`).
//!
//! ```text
//! cargo run --release --example bench_batching -- [--frames 16] [--latency 0,3] [--face-batch 4] \
//!     [--dtype fp32|bf16] [--threads 2] [--overlap true,false]
//! ```
//! Prints per run: wall time from the first frame in to EOS out, the generator's batches, faces
//! and time (the element's `generator-ms`), and their ratio, the issue's figure of merit
//! (end to end at most 1.1 times the generator); with overlap, the frames analysed while a
//! forward ran and the time the streaming thread waited for the worker.

#[path = "common/batching.rs"]
mod batching;
#[path = "common/clip.rs"]
mod clip;

use batching::{random_gpen_512, scratch, shared, Args};
use std::time::Instant;

use gst::prelude::*;

fn main() {
    let args = Args::parse();
    let (frames, face_batch, dtype, threads) = (args.frames, args.face_batch, args.dtype.clone(), args.threads);
    tch::set_num_threads(threads);
    gst::init().unwrap();
    gstgpen::plugin_register_static().unwrap();
    let dir = scratch(env!("CARGO_CRATE_NAME"));
    let model = random_gpen_512(&dir);

    let t = Instant::now();
    let (all, w, h) = clip::clip_frames(&shared());
    let decode = t.elapsed() / all.len() as u32;
    let clip: Vec<Vec<u8>> = all.into_iter().take(frames).collect();
    println!("Hamilton clip: {} frames of {w}x{h} (decode {decode:.2?} a frame), GPEN-512 {dtype}, {threads} threads", clip.len());
    println!("| batch-latency | overlap | face-batch | wall | generator batches / faces | generator time | wall / generator | frames overlapped | waited |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let runs = args.runs();
    for (latency, overlap) in runs {
        let pipeline = gst::parse::launch(&format!(
            "appsrc name=src format=time caps=video/x-raw,format=RGB,width={w},height={h},framerate=30000/1001 \
             ! gpenfilter name=g model={} size=512 fp16={} device=cpu detector-model={} face-batch={face_batch} \
             batch-latency={latency} overlap={overlap} ! videoconvert ! x264enc speed-preset=ultrafast ! fakesink sync=false",
            model.display(),
            dtype == "bf16",
            shared().join("weights/retinaface-mnet025-fd1mb.pth").display()
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let src = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
        src.set_max_buffers(4);
        src.set_block(true);
        // The models load in the state change, before the clock starts.
        pipeline.set_state(gst::State::Paused).unwrap();
        let started = Instant::now();
        pipeline.set_state(gst::State::Playing).unwrap();
        let feeder = {
            let (src, clip) = (src.clone(), clip.clone());
            std::thread::spawn(move || {
                for (i, f) in clip.into_iter().enumerate() {
                    let mut b = gst::Buffer::from_mut_slice(f);
                    b.get_mut().unwrap().set_pts(gst::ClockTime::from_nseconds(i as u64 * 1_001_000_000 / 30_000));
                    if src.push_buffer(b).is_err() {
                        return;
                    }
                }
                let _ = src.end_of_stream();
            })
        };
        for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::NONE) {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
                _ => {}
            }
        }
        let wall = started.elapsed();
        feeder.join().unwrap();
        let s = pipeline.by_name("g").unwrap().property::<gst::Structure>("stats");
        pipeline.set_state(gst::State::Null).unwrap();
        let count = |f: &str| s.get::<u64>(f).unwrap();
        let gen = s.get::<f64>("generator-ms").unwrap() / 1e3;
        assert_eq!(count("frames-out"), clip.len() as u64, "{s}");
        println!(
            "| {latency} | {overlap} | {face_batch} | {:.2} s | {} / {} | {gen:.2} s | {:.3} | {} | {:.2} s |",
            wall.as_secs_f64(),
            count("generator-batches"),
            count("generator-faces"),
            wall.as_secs_f64() / gen,
            count("frames-overlapped"),
            s.get::<f64>("ahead-wait-ms").unwrap() / 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
