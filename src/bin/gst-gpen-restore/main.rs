//! `gst-gpen-restore`: restores the faces of a video file, keeping its sound; or one segment of
//! it, and the join of the segments, so that many workers can share a long file (`--help`).
//!
//! Every video frame goes through `gpenfilter`; audio is remuxed as it is when the output
//! container takes it, re-encoded otherwise. Progress goes to stderr (a bar on a terminal,
//! plain lines otherwise); Ctrl-C finishes the file cleanly.
//!
//! Exit codes: 0 done; 1 the pipeline failed (the message says why); 2 bad arguments or an
//! input/output that cannot be handled; 3 the memory policy dropped frames (the output is kept,
//! shorter; `--allow-drops` makes it 0); 130 interrupted by Ctrl-C (the output is finalised).
//!
//! Outputs are written beside the target and renamed once complete ([`files`]): a failure leaves
//! no file, and an output is never one of the inputs.

mod cli;
mod files;
mod identity;
mod join;
mod plan;
mod segment;
mod streams;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use gst::prelude::*;

use streams::{configured_filter, make, on_stream, output_elements, VideoOut};

fn stat(s: &gst::Structure, f: &str) -> u64 {
    s.get::<u64>(f).unwrap_or(0)
}

/// Exit code when the memory policy dropped frames (the output is kept, shorter), unless
/// `--allow-drops`.
const DROPPED: i32 = 3;

/// How long the restore may go without a frame before it is given up as stuck.
const STALL: Duration = Duration::from_secs(600);

fn run(args: Args) -> Result<i32, (i32, String)> {
    let usage = |m: String| (2, m);
    files::check_input(&args.input)?;
    files::check_output(&args.output, &[&args.input])?;
    let (mux_name, video_enc, audio_enc) = output_elements(&args.output).map_err(usage)?;
    // The video's frames, counted from its packets: also refuses, before anything is written, a
    // file without video (a still image, sound only).
    let total_frames = plan::scan(&args.input)?.frames() as u64;
    let filter = Arc::new(std::sync::Mutex::new(Some(configured_filter(&args.properties).map_err(usage)?)));
    eprintln!("gst-gpen-restore: video encoder {video_enc}, muxer {mux_name}, {total_frames} frames to restore");
    let partial = files::Partial::new(&args.output);
    let pipeline = gst::Pipeline::new();
    let src = make("filesrc").map_err(usage)?;
    src.set_property("location", args.input.to_str().unwrap_or_default());
    let parse = make("parsebin").map_err(usage)?;
    let mux = make(&mux_name).map_err(usage)?;
    let sink = make("filesink").map_err(usage)?;
    sink.set_property("location", partial.path.to_str().unwrap_or_default());
    pipeline.add_many([&src, &parse, &mux, &sink]).unwrap();
    src.link(&parse).unwrap();
    mux.link(&sink).unwrap();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        // The first Ctrl-C finishes the file; a second one quits at once, leaving no file.
        let (flag, path) = (interrupted.clone(), partial.path.clone());
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                let _ = std::fs::remove_file(&path);
                eprintln!("\ngst-gpen-restore: interrupted twice, quitting: no output written");
                std::process::exit(130);
            }
        });
    }
    {
        let (pipeline, mux, filter, audio_enc) = (pipeline.clone(), mux.clone(), filter.clone(), audio_enc.clone());
        let (video_enc, keep_chroma) = (video_enc.clone(), args.keep_chroma);
        let interrupted = interrupted.clone();
        parse.connect_pad_added(move |_, pad| {
            let video = VideoOut { encoder: &video_enc, keep_chroma };
            if let Err(e) = on_stream(&pipeline, pad, &mux, &filter, &interrupted, &video, audio_enc.as_deref()) {
                let _ = pipeline.post_message(gst::message::Error::builder(gst::CoreError::Negotiation, &e).src(&pipeline).build());
            }
        });
    }

    let started = Instant::now();
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The reason follows on the bus.
    }
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total_frames);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} frames  {msg}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let bus = pipeline.bus().unwrap();
    let mut eos_sent = false;
    let mut last_line = Instant::now();
    let (mut last_done, mut last_progress) = (0, Instant::now());
    let mut failure = None;
    loop {
        if interrupted.load(Ordering::SeqCst) && !eos_sent {
            eprintln!("\ngst-gpen-restore: interrupted, finishing the file");
            // The streams end at their queues (end_on_interrupt); the source too, for streams
            // not yet linked.
            pipeline.send_event(gst::event::Eos::new());
            eos_sent = true;
        }
        if let Some(f) = pipeline.by_name("gpen") {
            let s = f.property::<gst::Structure>("stats");
            let done = stat(&s, "frames-in");
            if done != last_done {
                (last_done, last_progress) = (done, Instant::now());
            }
            let fps = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let msg = format!("{} faces, {fps:.1} fps", stat(&s, "faces-restored"));
            match &bar {
                Some(b) => {
                    b.set_position(done);
                    b.set_message(msg);
                }
                None if last_line.elapsed() >= Duration::from_secs(5) => {
                    let left = total_frames.saturating_sub(done) as f64 / fps.max(1e-3);
                    eprintln!("gst-gpen-restore: {done}/{total_frames} frames, {msg}, {left:.0} s left");
                    last_line = Instant::now();
                }
                None => {}
            }
        }
        if last_progress.elapsed() > STALL {
            failure =
                Some(format!("no frame went through in {} s: the pipeline is stuck; run with GST_DEBUG=2 to see where", STALL.as_secs()));
            break;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else { continue };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                failure = Some(format!("{}{}", e.error(), e.debug().map(|d| format!(" ({d})")).unwrap_or_default()));
                break;
            }
            gst::MessageView::Warning(w) => {
                let from = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                let line = format!("gst-gpen-restore: warning from {from}: {}", w.error());
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            _ => {}
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let stats = pipeline.by_name("gpen").map(|f| f.property::<gst::Structure>("stats"));
    pipeline.set_state(gst::State::Null).unwrap();
    if let Some(e) = failure {
        // The partial file goes with `partial`: a failure leaves no output.
        return Err((1, e));
    }
    let Some(s) = stats else {
        return Err((1, format!("{}: no video stream was found", args.input.display())));
    };
    let dropped = stat(&s, "frames-dropped") + stat(&s, "frames-late-dropped");
    if stat(&s, "frames-out") == 0 {
        let why = if dropped > 0 {
            format!(
                "all {dropped} frames were dropped by the memory policy: give more memory (--vram-budget), a smaller --size, \
                 --fp16, or --memory-policy passthrough to keep every frame unrestored"
            )
        } else {
            "no frame came out of the filter".to_owned()
        };
        return Err((if dropped > 0 { DROPPED } else { 1 }, format!("{}: nothing written: {why}", args.output.display())));
    }
    // Renamed only when it reads back with video frames in it.
    let written = plan::scan(&partial.path).map(|w| w.frames()).map_err(|(_, e)| match dropped {
        0 => (1, format!("the output does not read back: {e}")),
        // qtdemux, for one, skips a video track under a fifth of the file's duration as a preview.
        _ => (
            DROPPED,
            format!(
                "{}: nothing written: {dropped} of {} frames were dropped by the memory policy, and what is left does not \
                 read back as video ({e}); give more memory (--vram-budget), a smaller --size, --fp16, or --memory-policy \
                 passthrough",
                args.output.display(),
                stat(&s, "frames-in")
            ),
        ),
    })?;
    if written == 0 {
        return Err((1, format!("{}: no frame was written", args.output.display())));
    }
    partial.commit()?;
    eprintln!(
        "gst-gpen-restore: {} frames ({dropped} dropped, {} passed through unprocessed, {} without faces), {} faces restored, \
         {:.1} s wall ({:.2} fps), plan {} -> {}",
        stat(&s, "frames-out"),
        stat(&s, "frames-passed-through"),
        stat(&s, "frames-without-faces"),
        stat(&s, "faces-restored"),
        started.elapsed().as_secs_f64(),
        stat(&s, "frames-in") as f64 / started.elapsed().as_secs_f64().max(1e-3),
        s.get::<String>("plan").unwrap_or_default(),
        args.output.display()
    );
    // Frame-to-frame change of the pasted faces against the input's there (above 1: flicker
    // added by the restorer).
    match s.get::<f64>("flicker-amplification").ok().filter(|a| a.is_finite()) {
        Some(a) => eprintln!(
            "gst-gpen-restore: flicker amplification {a:.2} ({} pairs of frames with pasted faces; 1 = no flicker added)",
            stat(&s, "flicker-pairs")
        ),
        None => eprintln!("gst-gpen-restore: flicker amplification not measured (no two consecutive frames with pasted faces)"),
    }
    if eos_sent {
        return Ok(130);
    }
    if dropped > 0 {
        let advice = "the output is shorter than the input; give more memory (--vram-budget), a smaller --size, --fp16, \
                      or --memory-policy passthrough to keep every frame unrestored";
        if args.allow_drops {
            eprintln!("gst-gpen-restore: {dropped} of {} frames dropped (--allow-drops): {advice}", stat(&s, "frames-in"));
        } else {
            eprintln!(
                "gst-gpen-restore: {dropped} of {} frames dropped: exit {DROPPED}; {advice} (--allow-drops: exit 0)",
                stat(&s, "frames-in")
            );
            return Ok(DROPPED);
        }
    }
    Ok(0)
}

/// The input restored in one process.
struct Args {
    input: PathBuf,
    output: PathBuf,
    /// gpenfilter properties, as name and value strings.
    properties: Vec<(String, String)>,
    /// Keep the source's chroma format instead of 4:2:0 8-bit.
    keep_chroma: bool,
    /// Exit 0 even when the memory policy dropped frames.
    allow_drops: bool,
}

fn main() {
    // clap prints --help and --version to stdout (exit 0) and usage errors to stderr (exit 2).
    let cli = cli::Cli::parse();
    let mode = cli.mode();
    if let Err(e) = gst::init() {
        eprintln!("gst-gpen-restore: GStreamer does not start: {e}");
        std::process::exit(2);
    }
    if let Err(e) = gstgpen::plugin_register_static() {
        eprintln!("gst-gpen-restore: the gpen plugin does not register: {e}");
        std::process::exit(2);
    }
    let result = match mode {
        cli::Mode::Whole { input, output } => {
            run(Args { input, output, properties: cli.properties(), keep_chroma: cli.keep_chroma, allow_drops: cli.allow_drops })
        }
        cli::Mode::Segment { input, output, index, count } => {
            segment::run(&segment::Job { input, output, index, count, preroll: cli.preroll, properties: cli.properties() })
        }
        cli::Mode::Join { output, segments, input } => join::run(&output, &segments, &input),
        cli::Mode::Plan { input, count } => plan::print(&input, count),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err((code, e)) => {
            eprintln!("gst-gpen-restore: {e}");
            std::process::exit(code);
        }
    }
}
