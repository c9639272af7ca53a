//! `gst-gpen-restore`: restores the faces of a video file, keeping its sound; or one segment of
//! it, and the join of the segments, so that many workers can share a long file (`--help`).
//!
//! Every video frame goes through `gpenfilter`; audio is remuxed as it is when the output
//! container takes it, re-encoded otherwise. Progress goes to stderr (a bar on a terminal,
//! plain lines otherwise); Ctrl-C finishes the file cleanly.
//!
//! Exit codes: 0 done; 1 the pipeline failed (the message says why); 2 bad arguments or an
//! input/output that cannot be handled; 130 interrupted by Ctrl-C (the output is finalised).

mod cli;
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

use streams::{configured_filter, make, on_stream, output_elements};

fn stat(s: &gst::Structure, f: &str) -> u64 {
    s.get::<u64>(f).unwrap_or(0)
}

fn run(args: Args) -> Result<i32, (i32, String)> {
    let usage = |m: String| (2, m);
    if !args.input.is_file() {
        return Err(usage(format!("{}: no such file", args.input.display())));
    }
    let (mux_name, video_enc, audio_enc) = output_elements(&args.output).map_err(usage)?;
    let filter = Arc::new(std::sync::Mutex::new(Some(configured_filter(&args.properties).map_err(usage)?)));
    eprintln!("gst-gpen-restore: video encoder {video_enc}, muxer {mux_name}");
    let pipeline = gst::Pipeline::new();
    let src = make("filesrc").map_err(usage)?;
    src.set_property("location", args.input.to_str().unwrap_or_default());
    let parse = make("parsebin").map_err(usage)?;
    let mux = make(&mux_name).map_err(usage)?;
    let sink = make("filesink").map_err(usage)?;
    sink.set_property("location", args.output.to_str().unwrap_or_default());
    pipeline.add_many([&src, &parse, &mux, &sink]).unwrap();
    src.link(&parse).unwrap();
    mux.link(&sink).unwrap();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        // The first Ctrl-C finishes the file; a second one quits at once.
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                eprintln!("\ngst-gpen-restore: interrupted twice, quitting without finishing the file");
                std::process::exit(130);
            }
        });
    }
    {
        let (pipeline, mux, filter, video_enc, audio_enc) =
            (pipeline.clone(), mux.clone(), filter.clone(), video_enc.clone(), audio_enc.clone());
        let interrupted = interrupted.clone();
        parse.connect_pad_added(move |_, pad| {
            if let Err(e) = on_stream(&pipeline, pad, &mux, &filter, &interrupted, &video_enc, audio_enc.as_deref()) {
                let _ = pipeline.post_message(gst::message::Error::builder(gst::CoreError::Negotiation, &e).src(&pipeline).build());
            }
        });
    }

    let started = Instant::now();
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The reason follows on the bus.
    }
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} frames  {msg}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let bus = pipeline.bus().unwrap();
    let mut total_frames = None;
    let mut eos_sent = false;
    let mut last_line = Instant::now();
    let mut failure = None;
    loop {
        if interrupted.load(Ordering::SeqCst) && !eos_sent {
            eprintln!("\ngst-gpen-restore: interrupted, finishing the file");
            // The streams end at their queues (end_on_interrupt); the source too, for streams
            // not yet linked.
            pipeline.send_event(gst::event::Eos::new());
            eos_sent = true;
        }
        let filter = pipeline.by_name("gpen");
        if total_frames.is_none() {
            total_frames = frame_count(&pipeline, filter.as_ref());
            if let (Some(b), Some(n)) = (&bar, total_frames) {
                b.set_length(n);
            }
        }
        if let Some(f) = &filter {
            let s = f.property::<gst::Structure>("stats");
            let done = stat(&s, "frames-in");
            let fps = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let msg = format!("{} faces, {fps:.1} fps", stat(&s, "faces-restored"));
            match &bar {
                Some(b) => {
                    b.set_position(done);
                    b.set_message(msg);
                }
                None if last_line.elapsed() >= Duration::from_secs(5) => {
                    let left =
                        total_frames.map(|t| format!(", {:.0} s left", t.saturating_sub(done) as f64 / fps.max(1e-3))).unwrap_or_default();
                    eprintln!("gst-gpen-restore: {done}{} frames, {msg}{left}", total_frames.map(|t| format!("/{t}")).unwrap_or_default());
                    last_line = Instant::now();
                }
                None => {}
            }
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else { continue };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                failure = Some(format!("{}{}", e.error(), e.debug().map(|d| format!(" ({d})")).unwrap_or_default()));
                break;
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
        return Err((1, e));
    }
    if let Some(s) = stats {
        eprintln!(
            "gst-gpen-restore: {} frames ({} dropped, {} passed through unprocessed, {} without faces), {} faces restored, \
             {:.1} s wall ({:.2} fps), plan {} -> {}",
            stat(&s, "frames-out"),
            stat(&s, "frames-dropped") + stat(&s, "frames-late-dropped"),
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
    } else {
        return Err((1, format!("{}: no video stream was found", args.input.display())));
    }
    Ok(if eos_sent { 130 } else { 0 })
}

/// Frames in the input: the video stream's duration (asked upstream of the filter, since the
/// sound may last longer) times the frame rate negotiated at the filter.
fn frame_count(pipeline: &gst::Pipeline, filter: Option<&gst::Element>) -> Option<u64> {
    let pad = filter?.static_pad("sink")?;
    let duration = pad.peer_query_duration::<gst::ClockTime>().or_else(|| pipeline.query_duration::<gst::ClockTime>())?;
    let caps = pad.current_caps()?;
    let fps = caps.structure(0)?.get::<gst::Fraction>("framerate").ok()?;
    if fps.numer() <= 0 {
        return None;
    }
    Some((duration.nseconds() as f64 * fps.numer() as f64 / fps.denom() as f64 / 1e9).round() as u64)
}

/// The input restored in one process.
struct Args {
    input: PathBuf,
    output: PathBuf,
    /// gpenfilter properties, as name and value strings.
    properties: Vec<(String, String)>,
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
        cli::Mode::Whole { input, output } => run(Args { input, output, properties: cli.properties() }),
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
