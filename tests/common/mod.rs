//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the repository root (override with `GST_GPEN_SHARED`).
pub fn shared() -> PathBuf {
    let p = std::env::var_os("GST_GPEN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(p.join("fixtures/gpen/MANIFEST.json").exists(), "../shared is missing at {}", p.display());
    p
}

pub fn gpen_fixture(name: &str) -> PathBuf {
    shared().join("fixtures/gpen").join(name)
}

/// The models listed in `fixtures/gpen/MANIFEST.json`.
pub fn manifest() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(gpen_fixture("MANIFEST.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["models"].as_array().unwrap().clone()
}

/// A scratch directory unique to this test process.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gst-gpen-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Max and mean absolute difference.
pub fn diff(a: &tch::Tensor, b: &tch::Tensor) -> (f64, f64) {
    assert_eq!(a.size(), b.size());
    let d = (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs();
    (d.max().double_value(&[]), d.mean(tch::Kind::Double).double_value(&[]))
}
