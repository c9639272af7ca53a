//! The elements of a restoring pipeline: encoders and muxers for the output's container, the
//! video and audio branches, and the configured gpenfilter.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gst::prelude::*;

/// The first of `names` that this GStreamer installation has.
pub fn first_available(names: &[&str]) -> Option<String> {
    names.iter().find(|n| gst::ElementFactory::find(n).is_some()).map(|n| n.to_string())
}

pub fn make(name: &str) -> Result<gst::Element, String> {
    gst::ElementFactory::make(name).build().map_err(|_| format!("the GStreamer element {name} is not installed"))
}

/// Muxer, video encoder and audio encoder for the output's container.
pub fn output_elements(output: &Path) -> Result<(String, String, Option<String>), String> {
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

pub fn video_encoder(name: &str) -> Result<gst::Element, String> {
    let enc = make(name)?;
    if name == "x264enc" {
        // Constant quality close to visually lossless; restoration is what the user is after.
        enc.set_property_from_str("pass", "qual");
        enc.set_property("quantizer", 18u32);
        enc.set_property_from_str("speed-preset", "medium");
        // No B-frames. With them the first frame's decode time comes before its presentation
        // time, and GStreamer 1.22's mp4mux then starts the whole video that much late (2 frames,
        // 67 ms at 30 fps) against its sound. Segments need it too: the join puts their streams
        // one after the other, and reordering would make decode times go back at each join.
        enc.set_property("bframes", 0u32);
    }
    Ok(enc)
}

/// Whether a stream is moving pictures: `video/*`, or `image/*` with a frame rate (MJPEG).
/// A still image (PNG, JPEG) has none.
pub fn is_video(caps: &gst::Caps) -> bool {
    caps.structure(0).is_some_and(|s| {
        s.name().starts_with("video/")
            || (s.name().starts_with("image/") && s.get::<gst::Fraction>("framerate").is_ok_and(|f| f.numer() > 0))
    })
}

/// Whether a stream is a still picture (an image file, or a cover).
pub fn is_still(caps: &gst::Caps) -> bool {
    caps.structure(0).is_some_and(|s| s.name().starts_with("image/")) && !is_video(caps)
}

/// Caps for the encoder's input: 4:2:0 8-bit (H.264 High or Main, which every player decodes).
pub fn chroma_420() -> gst::Caps {
    gst::Caps::builder("video/x-raw").field("format", "I420").build()
}

/// The restored video's encoding: the encoder's name, and whether the source's chroma format
/// is kept (`--keep-chroma`) instead of 4:2:0 8-bit.
pub struct VideoOut<'a> {
    pub encoder: &'a str,
    pub keep_chroma: bool,
}

/// Links `src` into the pipeline as restored video or audio, as its caps say.
pub fn on_stream(
    pipeline: &gst::Pipeline,
    src: &gst::Pad,
    mux: &gst::Element,
    filter: &std::sync::Mutex<Option<gst::Element>>,
    interrupted: &Arc<AtomicBool>,
    video: &VideoOut,
    audio_enc: Option<&str>,
) -> Result<(), String> {
    let caps = src.current_caps().or_else(|| Some(src.query_caps(None))).unwrap();
    let name = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
    let add = |names: &[gst::Element]| -> Result<(), String> {
        pipeline.add_many(names).map_err(|e| e.to_string())?;
        gst::Element::link_many(names).map_err(|e| format!("cannot link {name}: {e}"))
    };
    if is_video(&caps) {
        let Some(filter) = filter.lock().unwrap().take() else {
            eprintln!("gst-gpen-restore: a second video stream ({name}) is left out: only the first is restored");
            return discard(pipeline, src);
        };
        let chain = [unbounded_queue()?, make("decodebin")?];
        add(&chain)?;
        end_on_interrupt(&chain[0], interrupted.clone());
        src.link(&chain[0].static_pad("sink").unwrap()).map_err(|e| format!("video: {e:?}"))?;
        let chroma = make("capsfilter")?;
        chroma.set_property("caps", chroma_420());
        let encoder = video_encoder(video.encoder)?;
        let tail = [make("videoconvert")?, filter, make("videoconvert")?, chroma.clone(), encoder.clone(), unbounded_queue()?];
        pipeline.add_many(&tail).map_err(|e| e.to_string())?;
        gst::Element::link_many(&tail).map_err(|e| e.to_string())?;
        let sink = tail[0].static_pad("sink").unwrap();
        let keep = video.keep_chroma;
        chain[1].connect_pad_added(move |_, pad| {
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            if !caps.structure(0).is_some_and(|s| s.name().starts_with("video/")) || sink.is_linked() {
                return;
            }
            choose_chroma(&caps, &chroma, &encoder, keep);
            let _ = pad.link(&sink);
        });
        tail.last().unwrap().link(mux).map_err(|e| format!("video into the muxer: {e}"))?;
        for e in chain.iter().chain(tail.iter()) {
            e.sync_state_with_parent().map_err(|e| e.to_string())?;
        }
    } else if name.starts_with("audio/") {
        link_audio(pipeline, src, &caps, mux, interrupted, audio_enc)?;
    } else if is_still(&caps) {
        // A cover picture beside the video; a file that is only an image never gets here (main
        // refuses it before, from the scan).
        eprintln!("gst-gpen-restore: still picture {name} is left out (only moving video is restored)");
        return discard(pipeline, src);
    } else {
        eprintln!("gst-gpen-restore: stream {name} is left out (neither video nor audio)");
        return discard(pipeline, src);
    }
    Ok(())
}

/// Sets the encoder's input format: 4:2:0 8-bit, or with `keep` the decoded source's format
/// where the encoder takes it; says which.
fn choose_chroma(decoded: &gst::Caps, chroma: &gst::Element, encoder: &gst::Element, keep: bool) {
    let source = decoded.structure(0).and_then(|s| s.get::<String>("format").ok()).unwrap_or_default();
    if keep && !source.is_empty() && source != "I420" {
        let wanted = gst::Caps::builder("video/x-raw").field("format", &source).build();
        let takes = encoder.static_pad("sink").is_some_and(|p| p.pad_template_caps().can_intersect(&wanted));
        if takes {
            chroma.set_property("caps", wanted);
            eprintln!("gst-gpen-restore: output chroma {source}, as the source (--keep-chroma; not every player decodes it)");
            return;
        }
        eprintln!("gst-gpen-restore: the encoder does not take the source's {source}: output chroma 4:2:0 8-bit (I420)");
        return;
    }
    eprintln!(
        "gst-gpen-restore: output chroma 4:2:0 8-bit (I420, H.264 High), which every player decodes (source {}; --keep-chroma keeps the source's)",
        if source.is_empty() { "unknown" } else { &source }
    );
}

/// After Ctrl-C, ends the stream leaving `queue`: what is still queued is dropped and EOS
/// follows, so the muxer finalises the file with the frames done so far.
pub fn end_on_interrupt(queue: &gst::Element, interrupted: Arc<AtomicBool>) {
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
pub fn discard(pipeline: &gst::Pipeline, src: &gst::Pad) -> Result<(), String> {
    let sink = make("fakesink")?;
    sink.set_property("sync", false);
    sink.set_property("async", false);
    pipeline.add(&sink).map_err(|e| e.to_string())?;
    src.link(&sink.static_pad("sink").unwrap()).map_err(|e| format!("{e:?}"))?;
    sink.sync_state_with_parent().map_err(|e| e.to_string())
}

/// The gpenfilter with the user's settings; a value it does not take is a usage error.
pub fn configured_filter(properties: &[(String, String)]) -> Result<gst::Element, String> {
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

/// Links the audio stream `src` into `mux`: as it is when the container takes it, re-encoded
/// with `audio_enc` otherwise, left out when neither is possible.
pub fn link_audio(
    pipeline: &gst::Pipeline,
    src: &gst::Pad,
    caps: &gst::Caps,
    mux: &gst::Element,
    interrupted: &Arc<AtomicBool>,
    audio_enc: Option<&str>,
) -> Result<(), String> {
    let name = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
    let q = unbounded_queue()?;
    pipeline.add(&q).map_err(|e| e.to_string())?;
    end_on_interrupt(&q, interrupted.clone());
    src.link(&q.static_pad("sink").unwrap()).map_err(|e| format!("audio: {e:?}"))?;
    let qsrc = q.static_pad("src").unwrap();
    if let Some(mux_pad) = mux.compatible_pad(&qsrc, Some(caps)) {
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
        let tail = [make("audioconvert")?, make("audioresample")?, make(enc)?, unbounded_queue()?];
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
    Ok(())
}

/// A queue with no limits. Only compressed data waits in these queues: unbounded, so that the
/// encoder's lookahead (dozens of frames in x264enc) never stalls the other stream at the muxer.
pub fn unbounded_queue() -> Result<gst::Element, String> {
    let q = make("queue")?;
    q.set_property("max-size-buffers", 0u32);
    q.set_property("max-size-bytes", 0u32);
    q.set_property("max-size-time", 0u64);
    Ok(q)
}
