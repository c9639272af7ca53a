//! `gst-gpen-restore` on real files: every frame kept, the duration kept, the sound kept,
//! Ctrl-C finishing a playable file, and the documented exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gst::prelude::*;

fn restore_cmd(input: &Path, output: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gst-gpen-restore"));
    c.arg(input).arg(output).args([
        "--size",
        "256",
        "--device",
        "cpu",
        "--model",
        common::gpen_fixture("gpen-256-tiny.pth").to_str().unwrap(),
        "--detector-model",
        common::detector().to_str().unwrap(),
    ]);
    c
}

fn hamilton() -> PathBuf {
    common::shared().join("media/videos/short_hamilton_clip.mp4")
}

struct Streams {
    duration: gst::ClockTime,
    video: usize,
    audio: usize,
}

fn discover(path: &Path) -> Streams {
    gst::init().unwrap();
    let d = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(30)).unwrap();
    let uri = glib::filename_to_uri(path, None).unwrap();
    let info = d.discover_uri(&uri).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Streams { duration: info.duration().expect("a duration"), video: info.video_streams().len(), audio: info.audio_streams().len() }
}

/// Decoded video frames of a file.
fn count_frames(path: &Path) -> u64 {
    common::count_buffers(&format!("filesrc location={} ! decodebin ! video/x-raw ! fakesink name=sink", path.display()))
}

/// The sample clip remuxed: its video with the sound re-encoded to Vorbis in Matroska (which
/// MP4 cannot take as it is), or its video alone.
fn remuxed(dir: &Path, with_vorbis: bool) -> PathBuf {
    let (out, tail) = if with_vorbis {
        (dir.join("hamilton-vorbis.mkv"), "d.audio_0 ! queue ! aacparse ! avdec_aac ! audioconvert ! vorbisenc ! queue ! m.")
    } else {
        (dir.join("hamilton-silent.mkv"), "")
    };
    let p = gst::parse::launch(&format!(
        "filesrc location={} ! qtdemux name=d d.video_0 ! queue ! h264parse ! matroskamux name=m ! filesink location={} {tail}",
        hamilton().display(),
        out.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    common::run_to_eos(&p);
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the command and checks the output against the input: every frame, the same duration,
/// sound where the input has it. Returns the command's log.
fn restore_and_compare(input: &Path, output: &Path) -> String {
    let src = discover(input);
    let frames_in = count_frames(input);
    let o = restore_cmd(input, output).output().unwrap();
    let log = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    assert!(log.contains("video encoder x264enc"), "says which encoder it picked: {log}");
    assert!(log.contains(&format!(" {frames_in} frames (0 dropped")), "summary counts every frame: {log}");
    assert!(log.contains("faces restored"), "{log}");
    let out = discover(output);
    assert_eq!((out.video, out.audio), (1, src.audio), "{}: video, and sound where the input has it", output.display());
    let d = out.duration.nseconds() as f64 - src.duration.nseconds() as f64;
    // Containers round the last frame's or audio packet's duration differently.
    assert!(d.abs() < 50e6, "{}: duration {} against {}", output.display(), out.duration, src.duration);
    assert_eq!(count_frames(output), frames_in, "{}: every frame is in the output", output.display());
    log
}

#[test]
fn restores_every_frame_and_keeps_the_sound() {
    let dir = common::scratch("cli");
    // The sample clip has AAC sound: MP4 and Matroska both take it as it is.
    assert_eq!(discover(&hamilton()).audio, 1);
    for ext in ["mp4", "mkv"] {
        let log = restore_and_compare(&hamilton(), &dir.join(format!("restored.{ext}")));
        assert!(log.contains("copied as it is"), "{log}");
        // The clip's shots have faces in consecutive frames: the flicker figure is measured.
        let figure = log.split("flicker amplification ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("");
        assert!(figure.parse::<f64>().is_ok_and(|a| a.is_finite() && a > 0.0), "summary gives the flicker amplification: {log}");
    }
    // Vorbis cannot go into MP4: it is re-encoded.
    let vorbis = remuxed(&dir, true);
    assert_eq!(discover(&vorbis).audio, 1, "the made input has sound");
    let log = restore_and_compare(&vorbis, &dir.join("from-vorbis.mp4"));
    assert!(log.contains("re-encoded with"), "{log}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn video_without_sound_gives_video_without_sound() {
    let dir = common::scratch("cli-silent");
    let silent = remuxed(&dir, false);
    assert_eq!(discover(&silent).audio, 0);
    restore_and_compare(&silent, &dir.join("restored.mp4"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn ctrl_c_finishes_a_playable_file() {
    let dir = common::scratch("cli-int");
    let output = dir.join("restored.mkv");
    let child = restore_cmd(&hamilton(), &output).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Interrupt once some frames are written.
    let t = std::time::Instant::now();
    while std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0) < 100_000 && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let log = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{log}");
    assert!(log.contains("interrupted"), "{log}");
    let n = count_frames(&output);
    assert!(n > 0 && n < count_frames(&hamilton()), "a finalised, shorter file: {n} frames");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_arguments_exit_with_2_and_say_why() {
    let dir = common::scratch("cli-bad");
    let cases: Vec<(Vec<String>, &str)> = vec![
        // clap's wording, after the usage.
        (vec![], "required arguments were not provided"),
        (vec![hamilton().display().to_string()], "INPUT and OUTPUT"),
        (vec!["/nonexistent.mp4".into(), dir.join("o.mp4").display().to_string()], "no such file"),
        (vec![hamilton().display().to_string(), dir.join("o.avi").display().to_string()], ".mp4 or .mkv"),
        (
            vec![hamilton().display().to_string(), dir.join("o.mp4").display().to_string(), "--memory-policy".into(), "sometimes".into()],
            "memory-policy",
        ),
        (vec![hamilton().display().to_string(), dir.join("o.mp4").display().to_string(), "--size".into(), "300".into()], "size"),
        (
            vec![hamilton().display().to_string(), dir.join("o.mp4").display().to_string(), "--frobnicate".into()],
            "unexpected argument '--frobnicate'",
        ),
    ];
    for (args, says) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_gst-gpen-restore")).args(&args).output().unwrap();
        let log = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(says), "{args:?} should say {says:?}: {log}");
        assert!(!log.contains("panicked"), "{log}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_missing_model_exits_with_1_and_names_it() {
    let dir = common::scratch("cli-nomodel");
    let o = Command::new(env!("CARGO_BIN_EXE_gst-gpen-restore"))
        .arg(hamilton())
        .arg(dir.join("o.mp4"))
        .args(["--model", "/nonexistent/GPEN-BFR-512.pth", "--device", "cpu"])
        .output()
        .unwrap();
    let log = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(log.contains("/nonexistent/GPEN-BFR-512.pth"), "{log}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn upscale_doubles_the_picture_and_keeps_every_frame() {
    gst::init().unwrap();
    let dir = common::scratch("cli-up");
    let input = dir.join("test.mp4");
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=20 ! video/x-raw,width=160,height=120,framerate=10/1 ! x264enc ! mp4mux ! filesink location={}",
        input.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    common::run_to_eos(&p);
    let output = dir.join("up.mkv");
    let o = restore_cmd(&input, &output)
        .args(["--upscale", "2", "--tile-size", "64", "--upscaler-model"])
        .arg(common::shared().join("fixtures/rrdbnet/rrdbnet-x2-tiny.pth"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("tile-size=64"), "the plan shows the tiles: {}", stderr(&o));
    let d = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(30)).unwrap();
    let info = d.discover_uri(&glib::filename_to_uri(&output, None).unwrap()).unwrap();
    let v = info.video_streams().into_iter().next().unwrap();
    assert_eq!((v.width(), v.height()), (320, 240));
    assert_eq!(count_frames(&output), 20);
    std::fs::remove_dir_all(dir).ok();
}
