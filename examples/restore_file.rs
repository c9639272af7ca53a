//! Restores the faces of a video file with `gpenfilter` and prints what it did.
//!
//! ```text
//! cargo run --release --example restore_file -- INPUT OUTPUT.mp4 [PROPERTY=VALUE ...]
//! ```
//! The properties go to `gpenfilter` (e.g. `size=512 fp16=true model=/path/GPEN-BFR-512.pth`).
//! The video is re-encoded with x264 into MP4.

use std::time::{Duration, Instant};

use gst::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: restore_file INPUT OUTPUT.mp4 [gpenfilter PROPERTY=VALUE ...]");
        std::process::exit(2);
    }
    gst::init().expect("GStreamer initialises");
    gstgpen::plugin_register_static().expect("the gpen plugin registers");
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let description = format!(
        "filesrc location={} ! decodebin ! videoconvert ! gpenfilter name=g {} ! videoconvert ! \
         x264enc pass=quant quantizer=18 speed-preset=faster ! mp4mux ! filesink location={}",
        quote(&args[0]),
        args[2..].join(" "),
        quote(&args[1])
    );
    let pipeline = match gst::parse::launch(&description) {
        Ok(p) => p.downcast::<gst::Pipeline>().unwrap(),
        Err(e) => {
            eprintln!("restore_file: cannot build the pipeline: {e}");
            std::process::exit(2);
        }
    };
    let filter = pipeline.by_name("g").unwrap();
    let started = Instant::now();
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The reason is on the bus.
    }
    let bus = pipeline.bus().unwrap();
    let mut failed = None;
    let mut last = Instant::now();
    loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(500)) else {
            if last.elapsed() >= Duration::from_secs(2) {
                let s = filter.property::<gst::Structure>("stats");
                eprintln!("restore_file: {} frames, {} faces restored", s.get::<u64>("frames-in").unwrap_or(0), s.get::<u64>("faces-restored").unwrap_or(0));
                last = Instant::now();
            }
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                failed = Some(format!("{}", e.error()));
                break;
            }
            _ => {}
        }
    }
    let stats = filter.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    if let Some(e) = failed {
        eprintln!("restore_file: failed: {e}");
        std::process::exit(1);
    }
    let frames = stats.get::<u64>("frames-in").unwrap_or(0);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "restore_file: {frames} frames ({} without faces, passed through), {} faces detected, {} restored, \
         {secs:.1} s ({:.2} frames/s) -> {}",
        stats.get::<u64>("frames-without-faces").unwrap_or(0),
        stats.get::<u64>("faces-detected").unwrap_or(0),
        stats.get::<u64>("faces-restored").unwrap_or(0),
        frames as f64 / secs,
        args[1]
    );
}
