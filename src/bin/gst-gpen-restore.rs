//! `gst-gpen-restore`: restores the faces of a video file, keeping its sound.
//!
//! ```text
//! gst-gpen-restore INPUT OUTPUT.{mp4,mkv} [--size 512] [--fp16] [--model PATH] [--detector-model PATH]
//!                  [--upscale 1|2|4] [--upscaler-model PATH] [--tile-size PX]
//!                  [--temporal-smoothing 0..1] [--temporal-consistency 0..1] [--detection-interval N]
//!                  [--memory-policy degrade|drop|passthrough|error] [--vram-budget MIB] [--device auto|cpu|cuda:N]
//! ```
//!
//! Every video frame goes through `gpenfilter`; audio is remuxed as it is when the output
//! container takes it, re-encoded otherwise. Progress goes to stderr (a bar on a terminal,
//! plain lines otherwise); Ctrl-C finishes the file cleanly.
//!
//! Exit codes: 0 done; 1 the pipeline failed (the message says why); 2 bad arguments or an
//! input/output that cannot be handled; 130 interrupted by Ctrl-C (the output is finalised).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gst::prelude::*;

const USAGE: &str = "usage: gst-gpen-restore INPUT OUTPUT.{mp4,mkv} [--size 256|512|1024|2048] [--fp16] \
[--model PATH] [--detector-model PATH] [--upscale 1|2|4] [--upscaler-model PATH] [--tile-size PX] \
[--temporal-smoothing 0..1] [--temporal-consistency 0..1] [--detection-interval N] [--mask auto|parse|rectangle] [--parse-model PATH] \
[--mask-regions skin+nose+eyes+...] \
[--memory-policy degrade|drop|passthrough|error] [--vram-budget MIB] [--device auto|cpu|cuda:N]";

struct Args {
    input: PathBuf,
    output: PathBuf,
    /// gpenfilter properties, as name and value strings.
    properties: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut properties = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{a} needs a value")).map(|v| (name.to_owned(), v));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--size" => properties.push(value("size")?),
            "--fp16" => properties.push(("fp16".into(), "true".into())),
            "--model" => properties.push(value("model")?),
            "--detector-model" => properties.push(value("detector-model")?),
            "--upscale" => properties.push(value("upscale")?),
            "--upscaler-model" => properties.push(value("upscaler-model")?),
            "--tile-size" => properties.push(value("tile-size")?),
            "--temporal-smoothing" => properties.push(value("temporal-smoothing")?),
            "--temporal-consistency" => properties.push(value("temporal-consistency")?),
            "--detection-interval" => properties.push(value("detection-interval")?),
            "--memory-policy" => properties.push(value("memory-policy")?),
            "--vram-budget" => properties.push(value("vram-budget")?),
            "--device" => properties.push(value("device")?),
            "--mask" => properties.push(value("mask")?),
            "--parse-model" => properties.push(value("parse-model")?),
            "--mask-regions" => properties.push(value("mask-regions")?),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [input, output]: [PathBuf; 2] = positional.try_into().map_err(|_| "INPUT and OUTPUT are needed".to_owned())?;
    Ok(Args { input, output, properties })
}

/// The first of `names` that this GStreamer installation has.
fn first_available(names: &[&str]) -> Option<String> {
    names.iter().find(|n| gst::ElementFactory::find(n).is_some()).map(|n| n.to_string())
}

fn make(name: &str) -> Result<gst::Element, String> {
    gst::ElementFactory::make(name).build().map_err(|_| format!("the GStreamer element {name} is not installed"))
}

/// Muxer, video encoder and audio encoder for the output's container.
fn output_elements(output: &Path) -> Result<(String, String, Option<String>), String> {
    let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    let (mux, video, audio): (&str, &[&str], &[&str]) = match ext.as_str() {
        "mp4" | "m4v" | "mov" => ("mp4mux", &["x264enc", "openh264enc", "avenc_mpeg4"], &["avenc_aac", "fdkaacenc", "lamemp3enc"]),
        "mkv" => ("matroskamux", &["x264enc", "openh264enc", "vp8enc"], &["opusenc", "vorbisenc", "avenc_aac"]),
        _ => return Err(format!("{}: the output must end in .mp4 or .mkv", output.display())),
    };
    if gst::ElementFactory::find(mux).is_none() {
        return Err(format!("the GStreamer muxer {mux} is not installed"));
    }
    let video = first_available(video).ok_or_else(|| format!("no video encoder for .{ext} is installed (tried {video:?})"))?;
    Ok((mux.into(), video, first_available(audio)))
}

fn video_encoder(name: &str) -> Result<gst::Element, String> {
    let enc = make(name)?;
    if name == "x264enc" {
        // Constant quality close to visually lossless; restoration is what the user is after.
        enc.set_property_from_str("pass", "qual");
        enc.set_property("quantizer", 18u32);
        enc.set_property_from_str("speed-preset", "medium");
    }
    Ok(enc)
}

/// Links `src` into the pipeline as restored video or audio, as its caps say.
fn on_stream(
    pipeline: &gst::Pipeline,
    src: &gst::Pad,
    mux: &gst::Element,
    filter: &std::sync::Mutex<Option<gst::Element>>,
    interrupted: &Arc<AtomicBool>,
    video_enc: &str,
    audio_enc: Option<&str>,
) -> Result<(), String> {
    let caps = src.current_caps().or_else(|| Some(src.query_caps(None))).unwrap();
    let name = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
    let add = |names: &[gst::Element]| -> Result<(), String> {
        pipeline.add_many(names).map_err(|e| e.to_string())?;
        gst::Element::link_many(names).map_err(|e| format!("cannot link {name}: {e}"))
    };
    // Only compressed data waits in these queues: unbounded, so that the encoder's lookahead
    // (dozens of frames in x264enc) never stalls the other stream at the muxer.
    let queue = || {
        let q = make("queue")?;
        q.set_property("max-size-buffers", 0u32);
        q.set_property("max-size-bytes", 0u32);
        q.set_property("max-size-time", 0u64);
        Ok::<_, String>(q)
    };
    if name.starts_with("video/") {
        let Some(filter) = filter.lock().unwrap().take() else {
            eprintln!("gst-gpen-restore: a second video stream ({name}) is left out: only the first is restored");
            return discard(pipeline, src);
        };
        let chain = [queue()?, make("decodebin")?];
        add(&chain)?;
        end_on_interrupt(&chain[0], interrupted.clone());
        src.link(&chain[0].static_pad("sink").unwrap()).map_err(|e| format!("video: {e:?}"))?;
        let tail = [make("videoconvert")?, filter, make("videoconvert")?, video_encoder(video_enc)?, queue()?];
        pipeline.add_many(&tail).map_err(|e| e.to_string())?;
        gst::Element::link_many(&tail).map_err(|e| e.to_string())?;
        let sink = tail[0].static_pad("sink").unwrap();
        chain[1].connect_pad_added(move |_, pad| {
            if pad.query_caps(None).structure(0).is_some_and(|s| s.name().starts_with("video/")) && !sink.is_linked() {
                let _ = pad.link(&sink);
            }
        });
        tail.last().unwrap().link(mux).map_err(|e| format!("video into the muxer: {e}"))?;
        for e in chain.iter().chain(tail.iter()) {
            e.sync_state_with_parent().map_err(|e| e.to_string())?;
        }
    } else if name.starts_with("audio/") {
        let q = queue()?;
        pipeline.add(&q).map_err(|e| e.to_string())?;
        end_on_interrupt(&q, interrupted.clone());
        src.link(&q.static_pad("sink").unwrap()).map_err(|e| format!("audio: {e:?}"))?;
        let qsrc = q.static_pad("src").unwrap();
        if let Some(mux_pad) = mux.compatible_pad(&qsrc, Some(&caps)) {
            // The container takes this audio as it is: remux it.
            eprintln!("gst-gpen-restore: audio {name}: copied as it is");
            qsrc.link(&mux_pad).map_err(|e| format!("audio into the muxer: {e:?}"))?;
            q.sync_state_with_parent().map_err(|e| e.to_string())?;
        } else {
            let Some(enc) = audio_enc else {
                eprintln!("gst-gpen-restore: audio {name} cannot go into this container and no encoder is installed: left out");
                pipeline.remove(&q).map_err(|e| e.to_string())?;
                return discard(pipeline, src);
            };
            eprintln!("gst-gpen-restore: audio {name}: re-encoded with {enc}");
            let dec = make("decodebin")?;
            let tail = [make("audioconvert")?, make("audioresample")?, make(enc)?, queue()?];
            pipeline.add(&dec).map_err(|e| e.to_string())?;
            q.link(&dec).map_err(|e| e.to_string())?;
            pipeline.add_many(&tail).map_err(|e| e.to_string())?;
            gst::Element::link_many(&tail).map_err(|e| e.to_string())?;
            tail.last().unwrap().link(mux).map_err(|e| format!("audio into the muxer: {e}"))?;
            let sink = tail[0].static_pad("sink").unwrap();
            dec.connect_pad_added(move |_, pad| {
                if !sink.is_linked() {
                    let _ = pad.link(&sink);
                }
            });
            for e in [&q, &dec].into_iter().chain(tail.iter()) {
                e.sync_state_with_parent().map_err(|e| e.to_string())?;
            }
        }
    } else {
        eprintln!("gst-gpen-restore: stream {name} is left out (neither video nor audio)");
        return discard(pipeline, src);
    }
    Ok(())
}

/// After Ctrl-C, ends the stream leaving `queue`: what is still queued is dropped and EOS
/// follows, so the muxer finalises the file with the frames done so far.
fn end_on_interrupt(queue: &gst::Element, interrupted: Arc<AtomicBool>) {
    let ended = AtomicBool::new(false);
    queue.static_pad("src").unwrap().add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
        if !interrupted.load(Ordering::SeqCst) {
            return gst::PadProbeReturn::Ok;
        }
        if !ended.swap(true, Ordering::SeqCst) {
            pad.push_event(gst::event::Eos::new());
        }
        gst::PadProbeReturn::Drop
    });
}

/// Sends a stream nobody writes into a fakesink, so that it does not stall the others.
fn discard(pipeline: &gst::Pipeline, src: &gst::Pad) -> Result<(), String> {
    let sink = make("fakesink")?;
    sink.set_property("sync", false);
    sink.set_property("async", false);
    pipeline.add(&sink).map_err(|e| e.to_string())?;
    src.link(&sink.static_pad("sink").unwrap()).map_err(|e| format!("{e:?}"))?;
    sink.sync_state_with_parent().map_err(|e| e.to_string())
}

/// The gpenfilter with the user's settings; a value it does not take is a usage error.
fn configured_filter(properties: &[(String, String)]) -> Result<gst::Element, String> {
    let filter = make("gpenfilter")?;
    filter.set_property("name", "gpen");
    for (k, v) in properties {
        let pspec = filter.find_property(k).ok_or_else(|| format!("gpenfilter has no property {k}"))?;
        let value = glib::Value::deserialize_with_pspec(v, &pspec)
            .ok()
            .filter(|value| pspec.value_is_valid(value))
            .ok_or_else(|| format!("--{k} {v}: not a valid value ({})", pspec.blurb().unwrap_or_default()))?;
        filter.set_property_from_value(k, &value);
    }
    Ok(filter)
}

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

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("gst-gpen-restore: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = gst::init() {
        eprintln!("gst-gpen-restore: GStreamer does not start: {e}");
        std::process::exit(2);
    }
    if let Err(e) = gstgpen::plugin_register_static() {
        eprintln!("gst-gpen-restore: the gpen plugin does not register: {e}");
        std::process::exit(2);
    }
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err((code, e)) => {
            eprintln!("gst-gpen-restore: {e}");
            std::process::exit(code);
        }
    }
}
