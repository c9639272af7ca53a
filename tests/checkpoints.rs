//! The checkpoint reader on every file of `../shared` and on damaged copies of them.

mod common;

use std::path::Path;

use gstgpen::checkpoint::{self, CheckpointError};

#[test]
fn every_gpen_fixture_loads_with_all_its_tensors() {
    for m in common::manifest() {
        let path = common::gpen_fixture(m["file"].as_str().unwrap());
        let sd = checkpoint::load(&path, None).unwrap();
        // Narrow 256 configurations have the official 256 key set (144, of which 18 buffers).
        let want = if m["size"] == 512 { 163 } else { 144 };
        assert_eq!(sd.len(), want, "{}", path.display());
        assert!(sd.iter().all(|(_, t)| t.kind() == tch::Kind::Float));
    }
}

#[test]
fn wrapped_checkpoint_is_found_automatically_and_by_key() {
    let path = common::gpen_fixture("gpen-256-tiny-gema.pth");
    let auto = checkpoint::load(&path, None).unwrap();
    let keyed = checkpoint::load(&path, Some("g_ema")).unwrap();
    assert_eq!(auto.len(), keyed.len());
    for (name, t) in auto.iter() {
        assert!(t.equal(keyed.get(name).unwrap()), "{name}");
    }
    let err = checkpoint::load(&path, Some("params_ema")).unwrap_err().to_string();
    assert!(err.contains("no key `params_ema`") && err.contains("`g_ema`"), "{err}");
}

#[test]
fn zip_and_legacy_detectors_load() {
    // The two RetinaFace files are legacy pickles with Long buffers (num_batches_tracked).
    for name in ["retinaface-mnet025-fd1mb.pth", "retinaface-mnet025-std.pth"] {
        let sd = checkpoint::load(&common::shared().join("weights").join(name), None).unwrap();
        assert_eq!(sd.len(), 300, "{name}");
        assert!(sd.iter().any(|(_, t)| t.kind() == tch::Kind::Int64), "{name}");
    }
}

fn expect_error(path: &Path, bytes: &[u8]) -> CheckpointError {
    match checkpoint::load_bytes(path, bytes, None) {
        Ok(sd) => panic!("{}: accepted a damaged file with {} tensors", path.display(), sd.len()),
        Err(e) => e,
    }
}

#[test]
fn truncated_files_are_named_errors() {
    for name in ["gpen-256-tiny.pth", "gpen-256-tiny-legacy.pth"] {
        let path = common::gpen_fixture(name);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 1, 9, 100, 1000, bytes.len() / 2, bytes.len() - 200, bytes.len() - 1] {
            let e = expect_error(&path, &bytes[..cut]).to_string();
            assert!(e.starts_with(&path.display().to_string()), "{e}");
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    // Damage the pickle and headers (the first and last KiB hold the structure in both layouts);
    // any outcome but a panic is fine, most are errors.
    for name in ["gpen-256-tiny.pth", "gpen-256-tiny-legacy.pth"] {
        let path = common::gpen_fixture(name);
        let bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        let mut state = 0x9e3779b97f4a7c15u64;
        for _ in 0..150 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let region = if state & 1 == 0 { 0..4096.min(n) } else { n.saturating_sub(40_000)..n };
            let at = region.start + (state >> 8) as usize % region.len();
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << ((state >> 3) & 7);
            let _ = checkpoint::load_bytes(&path, &damaged, None);
        }
    }
}

#[test]
fn safetensors_with_a_bad_header_is_refused() {
    let mut bytes = Vec::new();
    let header = br#"{"a":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#;
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    let e = expect_error(Path::new("claims-too-much.safetensors"), &bytes).to_string();
    assert!(e.contains("claims-too-much.safetensors") && e.contains("safetensors"), "{e}");
}

#[test]
fn not_a_checkpoint_says_what_was_expected() {
    let e = expect_error(Path::new("notes.txt"), b"hello, this is text and not a model").to_string();
    assert!(e.contains("notes.txt") && e.contains("zip") && e.contains("safetensors"), "{e}");
}
