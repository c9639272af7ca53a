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
    // The progress counts the video's frames, not its duration times the frame rate.
    assert!(log.contains(&format!(", {frames_in} frames to restore")), "{log}");
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
    // Interrupt once some frames are written (into the partial file beside the output).
    let partial = dir.join(format!("restored.partial-{}.mkv", child.id()));
    let t = std::time::Instant::now();
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 100_000 && t.elapsed().as_secs() < 120 {
        assert!(!output.exists(), "the output appears only once complete");
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
    assert!(!partial.exists(), "renamed to the output");
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
        (vec!["/dev/null".into(), dir.join("o.mp4").display().to_string()], "not a video file"),
        (vec![dir.display().to_string(), dir.join("o.mp4").display().to_string()], "is a folder"),
        (vec![hamilton().display().to_string(), dir.join("nowhere/o.mp4").display().to_string()], "does not exist: create it"),
        (
            vec![hamilton().display().to_string(), dir.join("o.mkv").display().to_string(), "--segment".into(), "-1/3".into()],
            "counts from 0",
        ),
        (vec!["--join".into(), dir.join("o.mp4").display().to_string(), "s0.mkv".into()], "Add --audio-from INPUT"),
        (
            vec![hamilton().display().to_string(), dir.join("o.mp4").display().to_string(), "--upscaler-model".into(), "x.pth".into()],
            "only used with --upscale",
        ),
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
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(names.is_empty(), "nothing is written for a refused command: {names:?}");
    // --help states every exit code and what an interrupted run leaves.
    let help = Command::new(env!("CARGO_BIN_EXE_gst-gpen-restore")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for says in
        ["3 frames were dropped", "130 interrupted", "partial", "a second Ctrl-C", "--tile-overlap", "--keep-chroma", "--allow-drops"]
    {
        assert!(help.contains(says), "--help says {says:?}: {help}");
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

/// Runs the command, failing the test when it does not end within `secs`.
fn ends_within(mut c: Command, secs: u64) -> Output {
    let mut child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed().as_secs() > secs {
            let _ = child.kill();
            panic!("{c:?} did not end within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let dir = common::scratch("cli-same");
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let x = sub.join("x.mp4");
    std::fs::copy(hamilton(), &x).unwrap();
    std::os::unix::fs::symlink(&x, sub.join("link.mp4")).unwrap();
    std::fs::hard_link(&x, sub.join("hard.mp4")).unwrap();
    // A "segment" for the joins: any file the join would read.
    std::fs::copy(hamilton(), sub.join("s0.mkv")).unwrap();
    let (x_len, s_len) = (size(&x), size(&sub.join("s0.mkv")));
    let bin = env!("CARGO_BIN_EXE_gst-gpen-restore");
    let cases: Vec<Vec<&str>> = vec![
        vec!["x.mp4", "x.mp4"],
        vec!["x.mp4", "./x.mp4"],
        vec!["x.mp4", "../sub/x.mp4"],
        vec!["x.mp4", "link.mp4"],
        vec!["link.mp4", "hard.mp4"],
        vec!["x.mp4", "x.mp4", "--segment", "0/2"],
        vec!["--join", "x.mp4", "s0.mkv", "--audio-from", "x.mp4"],
        vec!["--join", "./s0.mkv", "s0.mkv", "--audio-from", "x.mp4"],
        vec!["--join", "link.mp4", "s0.mkv", "--audio-from", "x.mp4"],
    ];
    for args in cases {
        let mut c = Command::new(bin);
        c.current_dir(&sub).args(&args);
        let o = ends_within(c, 60);
        let log = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains("is the same file as the input"), "{args:?}: {log}");
        assert_eq!((size(&x), size(&sub.join("s0.mkv"))), (x_len, s_len), "{args:?}: the inputs are untouched");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn still_images_and_files_without_video_are_refused_at_once_leaving_nothing() {
    gst::init().unwrap();
    let dir = common::scratch("cli-still");
    // Sound only: the clip's AAC alone.
    let audio_only = dir.join("sound.mp4");
    let p = gst::parse::launch(&format!(
        "filesrc location={} ! qtdemux name=d d.audio_0 ! queue ! aacparse ! mp4mux ! filesink location={}",
        hamilton().display(),
        audio_only.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    common::run_to_eos(&p);
    let empty = dir.join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let images = common::shared().join("media/images");
    let cases = [
        (images.join("camera.png"), "imagefreeze"),
        (images.join("obama_small.jpg"), "imagefreeze"),
        (audio_only, "no video stream"),
        (empty, "empty"),
    ];
    for (input, says) in cases {
        let output = dir.join("out.mp4");
        let o = ends_within(restore_cmd(&input, &output), 60);
        let log = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {log}", input.display());
        assert!(log.contains(says), "{} should say {says:?}: {log}", input.display());
        let left: Vec<_> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with("out")).collect();
        assert!(left.is_empty(), "{}: no file is left: {left:?}", input.display());
    }
    std::fs::remove_dir_all(dir).ok();
}

/// `chroma-format` and `profile` of a file's H.264, as h264parse reads them.
fn h264_format(path: &Path) -> (String, String) {
    let p = gst::parse::launch(&format!("filesrc location={} ! parsebin ! h264parse name=h ! fakesink", path.display()))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s2 = seen.clone();
    p.by_name("h").unwrap().static_pad("src").unwrap().add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::EventView::Caps(c)) = info.event().map(|e| e.view()) {
            let s = c.caps().structure(0).unwrap();
            *s2.lock().unwrap() = Some((s.get::<String>("chroma-format").unwrap(), s.get::<String>("profile").unwrap()));
        }
        gst::PadProbeReturn::Ok
    });
    common::run_to_eos(&p);
    let got = seen.lock().unwrap().take();
    got.expect("caps")
}

#[test]
fn output_is_420_8bit_unless_the_source_chroma_is_asked_for() {
    gst::init().unwrap();
    let dir = common::scratch("cli-chroma");
    let input = dir.join("y444.mp4");
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=10 ! video/x-raw,format=Y444,width=160,height=120,framerate=10/1 ! x264enc ! mp4mux \
         ! filesink location={}",
        input.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    common::run_to_eos(&p);
    assert_eq!(h264_format(&input).0, "4:4:4", "the made input is 4:4:4");
    let plain = dir.join("plain.mp4");
    let o = restore_cmd(&input, &plain).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("output chroma 4:2:0 8-bit"), "says what it chose: {}", stderr(&o));
    let (chroma, profile) = h264_format(&plain);
    assert_eq!(chroma, "4:2:0");
    assert!(profile == "high" || profile == "main", "{profile}");
    let kept = dir.join("kept.mkv");
    let o = restore_cmd(&input, &kept).arg("--keep-chroma").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("output chroma Y444, as the source"), "{}", stderr(&o));
    assert_eq!(h264_format(&kept).0, "4:4:4");
    std::fs::remove_dir_all(dir).ok();
}

#[cfg(feature = "fault-injection")]
#[test]
fn drops_are_told_and_exit_3_unless_allowed() {
    let dir = common::scratch("cli-drops");
    for (allow, code) in [(false, 3), (true, 0)] {
        let output = dir.join(format!("dropped-{allow}.mkv"));
        let mut c = restore_cmd(&hamilton(), &output);
        c.args(["--memory-policy", "drop"]).env("GST_GPEN_FAIL_EVERY", "gpen:3");
        if allow {
            c.arg("--allow-drops");
        }
        let o = c.output().unwrap();
        let log = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{log}");
        // The element's WARNING, once then at most every few seconds, with count and reason.
        let warned = log.matches("frame(s) dropped by the memory policy").count();
        assert!(warned >= 1, "{log}");
        assert!(log.contains("warning from gpen: 1 frame(s) dropped"), "the first drop is told at once: {log}");
        let dropped: u64 = log.split(" dropped, ").next().and_then(|l| l.rsplit('(').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(dropped > 0 && (warned as u64) < dropped, "{warned} warnings for {dropped} drops: {log}");
        assert!(log.contains(&format!("{dropped} of 275 frames dropped")), "{log}");
        assert_eq!(count_frames(&output), 275 - dropped, "the output is kept, without the dropped frames");
    }
    // No memory at all: every frame with faces dropped, too few left for an MP4 reader to show
    // them beside the sound (qtdemux takes such a track for a preview). Exit 3, and no file.
    let output = dir.join("nothing.mp4");
    let o = restore_cmd(&hamilton(), &output).args(["--memory-policy", "drop", "--vram-budget", "1"]).output().unwrap();
    let log = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{log}");
    assert!(log.contains("nothing written: ") && log.contains("frames were dropped by the memory policy"), "{log}");
    let left: Vec<_> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with("nothing")).collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(dir).ok();
}

fn segment_cmd(input: &Path, output: &Path, segment: &str, extra: &[&str]) -> Output {
    let mut c = restore_cmd(input, output);
    c.args(["--segment", segment, "--preroll", "0"]).args(extra);
    c.output().unwrap()
}

#[test]
fn segments_know_their_input_and_settings() {
    let dir = common::scratch("cli-seg-id");
    let a = hamilton();
    // The same frames in another file (a free atom appended): the same cut points, another input.
    let b = dir.join("other.mp4");
    let mut bytes = std::fs::read(&a).unwrap();
    bytes.extend_from_slice(b"\0\0\0\x10freeanother!");
    std::fs::write(&b, bytes).unwrap();
    let (s0, s1) = (dir.join("s0.mkv"), dir.join("s1.mkv"));
    let o = segment_cmd(&a, &s0, "0/2", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = segment_cmd(&a, &s0, "0/2", &[]);
    assert!(stderr(&o).contains("already complete"), "{}", stderr(&o));
    // Segment 1 from the other input: the join refuses the mix, and writes nothing.
    let o = segment_cmd(&b, &s1, "1/2", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let joined = dir.join("joined.mp4");
    let o = Command::new(env!("CARGO_BIN_EXE_gst-gpen-restore"))
        .arg("--join")
        .arg(&joined)
        .arg(&s0)
        .arg(&s1)
        .arg("--audio-from")
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("restored from another input"), "{}", stderr(&o));
    assert!(!joined.exists());
    // Resuming segment 1 of the first input over the other input's: redone, and said so.
    let o = segment_cmd(&a, &s1, "1/2", &["--temporal-smoothing", "0.2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("was restored from another input") && stderr(&o).contains("redone"), "{}", stderr(&o));
    // Now of one input, but with other settings: the join refuses; a resume with the settings of
    // the other redoes it.
    let o = Command::new(env!("CARGO_BIN_EXE_gst-gpen-restore"))
        .arg("--join")
        .arg(&joined)
        .arg(&s0)
        .arg(&s1)
        .arg("--audio-from")
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));
    assert!(!joined.exists());
    let o = segment_cmd(&a, &s1, "1/2", &[]);
    assert!(stderr(&o).contains("was restored with other settings") && stderr(&o).contains("redone"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_gst-gpen-restore"))
        .arg("--join")
        .arg(&joined)
        .arg(&s0)
        .arg(&s1)
        .arg("--audio-from")
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(count_frames(&joined), count_frames(&a));
    std::fs::remove_dir_all(dir).ok();
}
