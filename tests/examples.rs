//! The embedding examples run as documented: the Rust one (built by `cargo test` with the other
//! examples) and the Python one through Debian's PyGObject, both on a short clip with faces,
//! both reporting every frame in their final statistics line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Ten frames of a still photo with two faces, as H.264 in MP4 (even height for 4:2:0).
fn short_clip(dir: &Path) -> PathBuf {
    let out = dir.join("two-people.mp4");
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", common::shared().join("media/images/two_people.jpg").display()))
        .args([
            "!",
            "jpegdec",
            "!",
            "videoconvert",
            "!",
            "videoscale",
            "!",
            "video/x-raw,width=1126,height=662",
            "!",
            "imagefreeze",
            "num-buffers=10",
            "!",
            "video/x-raw,framerate=10/1",
        ])
        .args(["!", "videoconvert", "!", "x264enc", "!", "mp4mux", "!", "filesink"])
        .arg(format!("location={}", out.display()))
        .status()
        .expect("gst-launch-1.0 is installed");
    assert!(status.success());
    out
}

fn properties() -> Vec<String> {
    vec![
        format!("model={}", common::gpen_fixture("gpen-256-tiny.pth").display()),
        "size=256".into(),
        "device=cpu".into(),
        format!("detector-model={}", common::detector().display()),
    ]
}

/// The last statistics line says all ten frames went in and out, with faces restored.
fn check_final_line(stdout: &str) {
    let last = stdout.lines().rfind(|l| l.starts_with("stats (final)")).unwrap_or_else(|| panic!("no final stats line in:\n{stdout}"));
    assert!(last.contains("frames in 10 out 10 dropped 0 passed-through 0"), "{last}");
    let faces: u64 = last.split("faces restored ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(faces >= 10, "two people in ten frames: {last}");
}

/// `target/<profile>/`, where cargo puts the plugin and the examples.
fn profile_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn rust_example_reads_statistics_from_the_bus() {
    let dir = common::scratch("example-rs");
    let clip = short_clip(&dir);
    let exe = profile_dir().join("examples/bus_stats");
    assert!(exe.exists(), "{} not built", exe.display());
    let o = Command::new(exe).arg(&clip).args(properties()).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    check_final_line(&stdout);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn python_example_reads_statistics_from_the_bus() {
    // Debian's PyGObject (python3-gi, installed by scripts/setup.sh) lives with Debian's Python.
    let python = "/usr/bin/python3";
    let gi = Command::new(python).args(["-c", "import gi; gi.require_version('Gst', '1.0')"]).status();
    assert!(gi.is_ok_and(|s| s.success()), "PyGObject missing: run scripts/setup.sh (python3-gi, gir1.2-gstreamer-1.0)");
    let dir = common::scratch("example-py");
    let clip = short_clip(&dir);
    let so = profile_dir().join("libgstgpen.so");
    assert!(so.exists(), "{} not built (cargo build --lib)", so.display());
    let o = run_python("bus_stats.py", &clip, &properties(), &dir);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    check_final_line(&stdout);
    // Bad input is answered with the usage code, not a traceback.
    let o = run_python("bus_stats.py", &clip, &["no-such-property=1".to_owned()], &dir);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn python_example_reads_face_metas_from_an_appsink() {
    let dir = common::scratch("example-metas");
    let clip = short_clip(&dir);
    let o = run_python("face_metas.py", &clip, &properties(), &dir);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    // Two people in each of the ten frames, restored, each with its ten landmark values.
    assert!(stdout.lines().any(|l| l == "faces (final): 20 in 10 frames"), "{stdout}");
    let faces: Vec<&str> = stdout.lines().filter(|l| l.starts_with("frame ")).collect();
    assert_eq!(faces.len(), 20, "{stdout}");
    for l in faces {
        let landmarks = l.split("landmarks [").nth(1).unwrap().trim_end_matches(']');
        assert_eq!(landmarks.split(", ").count(), 10, "{l}");
        assert!(l.contains("restored True"), "{l}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Runs the PyGObject example `script` on `clip` with `args`, against the plugin just built.
fn run_python(script: &str, clip: &Path, args: &[String], dir: &Path) -> std::process::Output {
    Command::new("/usr/bin/python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(script))
        .arg(clip)
        .args(args)
        .env("GST_PLUGIN_PATH", profile_dir())
        .env("GST_REGISTRY", dir.join("registry.bin"))
        .output()
        .unwrap()
}
