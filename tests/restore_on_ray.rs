//! Restoring in segments (issue 16): `gst-gpen-restore --segment/--join/--plan` and
//! `scripts/restore-on-ray.py` on a local Ray. The segmented restore equals the one-process one;
//! a killed worker's segment is redone by Ray's retry; a restarted run redoes only unfinished
//! segments; bad arguments exit 2 with a message.
//!
//! The Ray tests need `ray` in `.venv` (scripts/setup.sh installs it) and fail, not skip, without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gst::prelude::*;

/// One local Ray at a time: the machine has few cores.
static RAY: Mutex<()> = Mutex::new(());

const BIN: &str = env!("CARGO_BIN_EXE_gst-gpen-restore");

fn hamilton() -> PathBuf {
    common::shared().join("media/videos/short_hamilton_clip.mp4")
}

/// The restoring options of the tests: the tiny GPEN-256 fixture on the CPU.
fn restore_options() -> Vec<String> {
    vec![
        "--size".into(),
        "256".into(),
        "--device".into(),
        "cpu".into(),
        "--model".into(),
        common::gpen_fixture("gpen-256-tiny.pth").display().to_string(),
        "--detector-model".into(),
        common::detector().display().to_string(),
    ]
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = Command::new(&py).args(["-c", "import ray"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{} cannot import ray: run scripts/setup.sh (it installs ray into .venv)", py.display());
    py
}

fn ray_script(args: &[String]) -> Command {
    let mut c = Command::new(python());
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/restore-on-ray.py"))
        .args(args)
        .args(["--num-cpus", "2", "--command", BIN])
        .arg("--")
        .args(restore_options());
    c
}

/// Decoded frames of a file as packed RGB with their times.
fn decoded(path: &Path) -> Vec<(u64, Vec<u8>)> {
    gst::init().unwrap();
    let p = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! video/x-raw,format=RGB ! fakesink name=sink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let frames = std::sync::Arc::new(Mutex::new(Vec::new()));
    let f = frames.clone();
    p.by_name("sink").unwrap().static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let b = info.buffer().unwrap();
        f.lock().unwrap().push((b.pts().unwrap().nseconds(), b.map_readable().unwrap().to_vec()));
        gst::PadProbeReturn::Ok
    });
    common::run_to_eos(&p);
    let v = std::mem::take(&mut *frames.lock().unwrap());
    v
}

/// Packets of the first audio stream and the duration of a file.
fn audio_packets_and_duration(path: &Path) -> (usize, usize, gst::ClockTime) {
    gst::init().unwrap();
    let d = gst_pbutils::Discoverer::new(gst::ClockTime::from_seconds(30)).unwrap();
    let info = d.discover_uri(&glib::filename_to_uri(path, None).unwrap()).unwrap();
    let packets = common::count_buffers(&format!("filesrc location={} ! qtdemux name=d d.audio_0 ! fakesink name=sink", path.display()));
    (info.audio_streams().len(), packets as usize, info.duration().unwrap())
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).modified().unwrap()
}

/// Waits until a file whose name starts with `prefix` appears in `dir`: a segment being written
/// (x264enc's lookahead holds the first frames back, so its size says little).
fn wait_for_partial(dir: &Path, prefix: &str) -> PathBuf {
    let t = Instant::now();
    loop {
        // The folder may not be made yet.
        let found = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix));
        if let Some(p) = found {
            return p;
        }
        assert!(t.elapsed() < Duration::from_secs(240), "no {prefix}* in {}", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_segments_on_ray_equal_the_one_process_restore_and_a_restart_redoes_only_the_unfinished() {
    let _ray = RAY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::scratch("ray-equal");
    let whole = dir.join("whole.mp4");
    let o = Command::new(BIN).arg(hamilton()).arg(&whole).args(restore_options()).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // What an interrupted earlier run leaves: segment 0 finished, segment 1 killed half-way.
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let seg = |i: u32| work.join(format!("segment-{i:04}-of-0003.mkv"));
    let o = Command::new(BIN).arg(hamilton()).arg(seg(0)).args(["--segment", "0/3"]).args(restore_options()).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut killed = Command::new(BIN).arg(hamilton()).arg(seg(1)).args(["--segment", "1/3"]).args(restore_options()).spawn().unwrap();
    let partial = wait_for_partial(&work, "segment-0001-of-0003.partial-");
    std::thread::sleep(Duration::from_secs(3));
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(partial.exists() && !seg(1).exists(), "a killed segment leaves only its partial file");
    let finished_before = mtime(&seg(0));

    let out = dir.join("joined.mp4");
    let started = std::time::SystemTime::now();
    let args: Vec<String> = vec![
        hamilton().display().to_string(),
        out.display().to_string(),
        "--segments".into(),
        "3".into(),
        "--workdir".into(),
        work.display().to_string(),
        "--keep-segments".into(),
    ];
    let o = ray_script(&args).output().unwrap();
    let log = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    // The restart: segment 0 is not redone, 1 and 2 are, and the partial file is gone.
    assert_eq!(mtime(&seg(0)), finished_before, "the finished segment 0 was redone: {log}");
    assert!(log.contains("segment 0/3: already done"), "{log}");
    assert!(log.contains("3/3 segments, 275/275 frames"), "progress of segments and frames: {log}");
    assert!(mtime(&seg(1)) > started && mtime(&seg(2)) > started, "{log}");
    assert!(!partial.exists(), "the killed run's partial file is cleared");

    // The joined file against the one-process one: every frame at the same time, each within
    // 2 levels on average (each segment has its own encoder), the sound once, the duration.
    let (a, b) = (decoded(&whole), decoded(&out));
    assert_eq!(a.len(), 275);
    assert_eq!(b.len(), a.len(), "frame count");
    for (i, ((ta, fa), (tb, fb))) in a.iter().zip(&b).enumerate() {
        assert_eq!(ta, tb, "frame {i}: time");
        let (mean, _) = common::level_diff(fa, fb);
        assert!(mean <= 2.0, "frame {i} at {ta} ns: {mean:.2} levels from the one-process restore");
    }
    let input = decoded(&hamilton());
    for (i, ((ti, _), (tb, _))) in input.iter().zip(&b).enumerate() {
        // MP4 time scales round to a microsecond or so; a re-timed frame would be a frame off.
        assert!(ti.abs_diff(*tb) < 100_000, "frame {i}: {tb} ns, the input's is at {ti} ns");
    }
    let (streams_in, packets_in, duration_in) = audio_packets_and_duration(&hamilton());
    let (streams_out, packets_out, duration_out) = audio_packets_and_duration(&out);
    assert_eq!((streams_out, packets_out), (streams_in, packets_in), "the sound, once");
    let frame = 1_001_000_000_000 / 30_000; // ns
    assert!(duration_out.nseconds().abs_diff(duration_in.nseconds()) <= frame, "duration {duration_out} against {duration_in}");
    std::fs::remove_dir_all(dir).ok();
}

/// A 40-frame clip of a still photo with two faces, a keyframe every 10 frames.
fn two_people_clip(dir: &Path) -> PathBuf {
    gst::init().unwrap();
    let out = dir.join("two-people.mp4");
    let p = gst::parse::launch(&format!(
        "filesrc location={} ! jpegdec ! videoconvert ! videoscale ! video/x-raw,width=640,height=376 ! imagefreeze num-buffers=40 \
         ! video/x-raw,framerate=10/1 ! videoconvert ! x264enc key-int-max=10 ! mp4mux ! filesink location={}",
        common::shared().join("media/images/two_people.jpg").display(),
        out.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    common::run_to_eos(&p);
    out
}

/// The process whose command line has all of `words`, and its parent.
fn find_process(words: &[&str]) -> Option<(u32, u32)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if words.iter().all(|w| args.iter().any(|a| a == w)) {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
            return Some((pid, ppid));
        }
    }
    None
}

/// Whether a process runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|state| state != "Z"))
}

#[test]
fn a_worker_killed_mid_segment_is_retried_and_the_job_completes() {
    let _ray = RAY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::scratch("ray-kill");
    // Two inputs: their segments share one job, each output named after its input.
    let clip = two_people_clip(&dir);
    let again = dir.join("again.mp4");
    std::fs::copy(&clip, &again).unwrap();
    let (out, work) = (dir.join("out"), dir.join("work"));
    std::fs::create_dir_all(&out).unwrap();
    let args: Vec<String> = vec![
        clip.display().to_string(),
        again.display().to_string(),
        out.display().to_string(),
        "--segments".into(),
        "2".into(),
        "--workdir".into(),
        work.display().to_string(),
        "--keep-segments".into(),
    ];
    let child = ray_script(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Mid-segment: segment 1 of the first input is writing. Its Ray worker is the command's parent.
    let work = work.join("two-people");
    wait_for_partial(&work, "segment-0001-of-0002.partial-");
    let (cmd, worker) = find_process(&["--segment", "1/2", clip.to_str().unwrap()]).expect("the segment's command runs");
    let status = Command::new("kill").args(["-KILL", &worker.to_string()]).status().unwrap();
    assert!(status.success());
    // The command dies with its worker at once (it must not write the segment beside the retry).
    let t = Instant::now();
    while alive(cmd) && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(cmd), "the killed worker's command lives on");
    let o = child.wait_with_output().unwrap();
    let log = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    assert!(log.contains("4/4 segments, 80/80 frames"), "one job for both inputs: {log}");
    let attempts = std::fs::read_to_string(work.join("attempts.log")).unwrap();
    assert_eq!(attempts.lines().filter(|l| l.starts_with("segment 1/2")).count(), 2, "segment 1 retried once: {attempts}");
    for name in ["two-people-restored.mp4", "again-restored.mp4"] {
        assert_eq!(decoded(&out.join(name)).len(), 40, "{name}: {log}");
    }

    // The join refuses segments that would leave frames out or twice.
    let seg = |i: u32| work.join(format!("segment-{i:04}-of-0002.mkv")).display().to_string();
    for (segments, says) in [(vec![seg(1), seg(0)], "out of order"), (vec![seg(0), seg(0)], "out of order"), (vec![seg(0)], "frames")] {
        let o = Command::new(BIN).arg("--join").arg(dir.join("bad.mkv")).args(&segments).arg("--audio-from").arg(&clip).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{segments:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{segments:?} should say {says:?}: {}", stderr(&o));
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn more_segments_than_keyframes_is_an_error_and_the_plan_takes_fewer() {
    // The Hamilton clip has 6 keyframes (0, 2.0, 4.0, 5.4, 7.0 and 9.0 s).
    let o = Command::new(BIN).arg(hamilton()).arg("/tmp/never.mkv").args(["--segment", "0/10"]).args(restore_options()).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("at most 6 segments"), "{}", stderr(&o));
    let o = Command::new(BIN).args(["--plan", "10"]).arg(hamilton()).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let segments = plan["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 6, "{plan}");
    assert!(stderr(&o).contains("6 segments, not 10"), "{}", stderr(&o));
    assert_eq!(segments.iter().map(|s| s["frames"].as_u64().unwrap()).sum::<u64>(), 275);
    // Three segments: cut on the keyframes nearest to thirds of the clip, the same every time.
    let o = Command::new(BIN).args(["--plan", "3"]).arg(hamilton()).output().unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let starts: Vec<u64> = plan["segments"].as_array().unwrap().iter().map(|s| s["start_ns"].as_u64().unwrap()).collect();
    assert_eq!(starts, vec![0, 4_004_004_004, 5_438_772_105]);
}

#[test]
fn help_and_version_go_to_stdout_and_bad_arguments_exit_2() {
    let o = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    // Every option, with its default.
    let options: Vec<&str> = help.lines().map(str::trim).filter(|l| l.starts_with("--") && !l.starts_with("--help")).collect();
    assert!(options.len() >= 20, "{help}");
    let sections: Vec<&str> = help.split("\n      --").skip(1).collect();
    for s in sections.iter().filter(|s| !s.starts_with("help") && !s.starts_with("version")) {
        assert!(s.contains("[default"), "no default in --help for --{s}");
    }
    let o = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("gst-gpen-restore "));

    let h = hamilton().display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&h, "o.mkv", "--segment", "3/3"], "is not I/N"),
        (vec![&h, "o.mkv", "--segment", "one"], "is not I/N"),
        (vec![&h, "o.mkv", "--segment", "0/2", "--preroll", "soon"], "seconds"),
        (vec!["--join", "o.mp4", "a.mkv"], "--audio-from"),
        (vec!["--join", "o.mp4", "/nonexistent.mkv", "--audio-from", &h], "no such file"),
        (vec!["--plan", "0", &h], "--plan"),
        (vec!["--plan", "2", &h, "o.mp4"], "one INPUT"),
        (vec![&h], "INPUT and OUTPUT"),
    ];
    for (args, says) in cases {
        let o = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?} should say {says:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }

    // The script: argparse's conventions.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/restore-on-ray.py");
    let o = Command::new(python()).arg(&script).arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    for option in ["--segments", "--address", "--gpus-per-task", "--workdir", "(default: 4)"] {
        assert!(help.contains(option), "{option} missing from --help: {help}");
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "the following arguments are required"),
        (vec![&h], "at least one INPUT and the OUTPUT"),
        (vec!["/nonexistent.mp4", "o.mp4"], "no such file"),
        (vec![&h, "o.avi"], ".mp4 or .mkv"),
        (vec![&h, "o.mp4", "--segments", "0"], "--segments"),
        (vec![&h, "o.mp4", "--frobnicate"], "unrecognized arguments"),
    ];
    for (args, says) in cases {
        let o = Command::new(python()).arg(&script).args(&args).args(["--command", BIN]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?} should say {says:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("Traceback"), "{}", stderr(&o));
    }
}
