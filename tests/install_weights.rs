//! `scripts/install-weights.py` against a local HTTP server: checksums verified, an interrupted
//! download resumed with a Range request, wrong files refused, failures named. The project's
//! manifest itself is checked for what the element needs of it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// What the server does with a request for the file.
#[derive(Clone, Copy)]
enum Serve {
    /// Sends the first `n` bytes under the full Content-Length, then closes the connection.
    CutAfter(usize),
    Whole,
    /// Same length, one byte changed.
    Corrupt,
}

/// Serves `body` at any path with Range support, one behaviour per request in turn (then
/// `Whole`); returns its address and the Range headers it saw.
fn serve(body: Vec<u8>, plan: Vec<Serve>) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            let mut path = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if line.starts_with("GET ") {
                    path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                }
            }
            seen.lock().unwrap().push(range.map(|r| r.to_string()));
            if path.contains("missing") {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let mut data = body.clone();
            let how = plan.get(i).copied().unwrap_or(Serve::Whole);
            if let Serve::Corrupt = how {
                data[1000] ^= 0xff;
            }
            let start = range.unwrap_or(0).min(data.len());
            let head = if range.is_some() {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    data.len() - start,
                    data.len() - 1,
                    data.len()
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len())
            };
            let _ = stream.write_all(head.as_bytes());
            let end = match how {
                Serve::CutAfter(n) => (start + n).min(data.len()),
                _ => data.len(),
            };
            let _ = stream.write_all(&data[start..end]);
        }
    });
    (addr, ranges)
}

/// A manifest with the real fd1mb detector's size and sha256, served from `url`.
fn manifest(dir: &Path, url: &str) -> PathBuf {
    let project: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/manifest.json")).unwrap())
            .unwrap();
    let mut m = project["models"].as_array().unwrap().iter().find(|m| m["name"] == "retinaface-mnet025-fd1mb").unwrap().clone();
    m["urls"] = serde_json::json!([url]);
    let p = dir.join("manifest.json");
    std::fs::write(&p, serde_json::json!({ "models": [m] }).to_string()).unwrap();
    p
}

fn install(manifest: &Path, dir: &Path) -> Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-weights.py"))
        .args(["--manifest", manifest.to_str().unwrap(), "--dir", dir.to_str().unwrap(), "--timeout", "10"])
        .arg("retinaface-mnet025-fd1mb")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn detector_bytes() -> Vec<u8> {
    std::fs::read(common::shared().join("weights/retinaface-mnet025-fd1mb.pth")).unwrap()
}

#[test]
fn an_interrupted_download_resumes_and_is_verified() {
    let dir = common::scratch("weights-resume");
    let body = detector_bytes();
    let (addr, ranges) = serve(body.clone(), vec![Serve::CutAfter(700_000), Serve::Whole]);
    let m = manifest(&dir, &format!("{addr}/mobilenet0.25_Final.pth"));
    let dest = dir.join("models");

    let first = install(&m, &dest);
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    assert!(text(&first).contains("FAILED retinaface-mnet025-fd1mb"), "{}", text(&first));
    assert!(text(&first).contains("run again to resume"), "{}", text(&first));
    let part = dest.join("retinaface-mnet025-fd1mb.pth.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 700_000, "the partial download is kept");
    assert!(!dest.join("retinaface-mnet025-fd1mb.pth").exists());

    let second = install(&m, &dest);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert_eq!(ranges.lock().unwrap().as_slice(), [None, Some("700000".to_owned())], "resumed with a Range request");
    assert_eq!(std::fs::read(dest.join("retinaface-mnet025-fd1mb.pth")).unwrap(), body);
    assert!(!part.exists());

    // Installed and right: nothing is downloaded again.
    let third = install(&m, &dest);
    assert_eq!(third.status.code(), Some(0));
    assert!(text(&third).contains("already installed"), "{}", text(&third));
    assert_eq!(ranges.lock().unwrap().len(), 2);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_file_with_the_wrong_checksum_is_refused() {
    let dir = common::scratch("weights-corrupt");
    let (addr, _) = serve(detector_bytes(), vec![Serve::Corrupt]);
    let m = manifest(&dir, &format!("{addr}/mobilenet0.25_Final.pth"));
    let dest = dir.join("models");
    let o = install(&m, &dest);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("sha256") && text(&o).contains("expected ed6fa7d4"), "{}", text(&o));
    assert!(!dest.join("retinaface-mnet025-fd1mb.pth").exists(), "not installed");
    assert!(!dest.join("retinaface-mnet025-fd1mb.pth.part").exists(), "not kept for resuming either");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unreachable_and_missing_files_are_named() {
    let dir = common::scratch("weights-missing");
    let (addr, _) = serve(detector_bytes(), vec![]);
    let m = manifest(&dir, &format!("{addr}/missing.pth"));
    let o = install(&m, &dir.join("models"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("404"), "{}", text(&o));
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let m = manifest(&dir, &format!("http://{closed}/x.pth"));
    let o = install(&m, &dir.join("models"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAILED retinaface-mnet025-fd1mb") && text(&o).contains("refused"), "{}", text(&o));
    let o = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-weights.py"))
        .args(["--dir", dir.to_str().unwrap(), "GPEN-BFR-999"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown model"), "{}", text(&o));
    std::fs::remove_dir_all(dir).ok();
}

/// The manifest names every model the project knows, with what the element needs.
#[test]
fn the_manifest_lists_the_known_models() {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/manifest.json")).unwrap())
            .unwrap();
    let models = v["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    for n in [
        "GPEN-BFR-256",
        "GPEN-BFR-512",
        "GPEN-BFR-1024",
        "GPEN-BFR-2048",
        "RetinaFace-R50",
        "retinaface-mnet025-fd1mb",
        "retinaface-mnet025-std",
        "realesrnet_x2",
        "realesrnet_x4",
        "RealESRGAN_x4plus",
        "RealESRGAN_x2plus",
        "ParseNet-latest",
    ] {
        assert!(names.contains(&n), "{n} is missing from the manifest");
    }
    for m in models {
        for field in ["file", "licence", "architecture", "variant"] {
            assert!(m[field].as_str().is_some_and(|s| !s.is_empty()), "{}: {field}", m["name"]);
        }
        assert!(m["urls"].as_array().is_some_and(|u| !u.is_empty()), "{}: urls", m["name"]);
    }
    // The parsing network is installed by default, under the name the element looks for.
    let parse = models.iter().find(|m| m["name"] == "ParseNet-latest").unwrap();
    assert_eq!(parse["file"], gstgpen::restorer::PARSE_FILE);
    assert_eq!(parse["default"], true);
    // The GPEN files carry the names the element looks up in a folder.
    for size in [256, 512, 1024, 2048] {
        let m = models.iter().find(|m| m["name"] == format!("GPEN-BFR-{size}")).unwrap();
        assert_eq!(m["file"].as_str().unwrap(), gstgpen::restorer::official_file_name(size));
    }
    // The two known checksums are those of the files in ../shared/weights.
    for (name, file) in
        [("retinaface-mnet025-fd1mb", "retinaface-mnet025-fd1mb.pth"), ("retinaface-mnet025-std", "retinaface-mnet025-std.pth")]
    {
        use sha2::Digest;
        let bytes = std::fs::read(common::shared().join("weights").join(file)).unwrap();
        let m = models.iter().find(|m| m["name"] == name).unwrap();
        assert_eq!(m["size"].as_u64(), Some(bytes.len() as u64));
        assert_eq!(m["sha256"].as_str().unwrap(), format!("{:x}", sha2::Sha256::digest(&bytes)));
    }
}
