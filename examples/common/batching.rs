//! What the batching benchmarks share: their arguments, their folders, and the GPEN-512
//! checkpoint (official shape, random weights) they run.

use std::path::{Path, PathBuf};

use gstgpen::gpen::{random_state_dict, GpenConfig};
use tch::Tensor;

/// The fixtures beside the repository.
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// A folder of this run of the benchmark `name`, for the checkpoint it writes.
pub fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gst-gpen-bench-{name}-{}", std::process::id()))
}

/// `[--frames 16] [--latency 0,3] [--face-batch 4] [--dtype fp32|bf16] [--threads 2] [--overlap true,false]`
pub struct Args {
    pub frames: usize,
    pub latencies: Vec<u32>,
    pub face_batch: u32,
    pub dtype: String,
    pub threads: i32,
    pub overlaps: Vec<bool>,
}

impl Args {
    pub fn parse() -> Args {
        let mut a =
            Args { frames: 16, latencies: vec![0, 3], face_batch: 4, dtype: "fp32".into(), threads: 2, overlaps: vec![true, false] };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--frames" => a.frames = value().parse().expect("--frames N"),
                "--latency" => a.latencies = value().split(',').map(|v| v.parse().expect("--latency N,M")).collect(),
                "--face-batch" => a.face_batch = value().parse().expect("--face-batch N"),
                "--dtype" => a.dtype = value(),
                "--threads" => a.threads = value().parse().expect("--threads N"),
                "--overlap" => a.overlaps = value().split(',').map(|v| v.parse().expect("--overlap true,false")).collect(),
                other => panic!("unknown argument {other}"),
            }
        }
        a
    }

    /// Each run: a latency, and whether batches overlap (latency 0 holds nothing to overlap).
    pub fn runs(&self) -> Vec<(u32, bool)> {
        self.latencies
            .iter()
            .flat_map(|&l| if l == 0 { vec![(0, false)] } else { self.overlaps.iter().map(|&o| (l, o)).collect() })
            .collect()
    }
}

/// GPEN-512 in the official shape with random weights, written into `dir`.
pub fn random_gpen_512(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let model = dir.join("GPEN-BFR-512.safetensors");
    let sd = random_state_dict(&GpenConfig::official(512), 0);
    let tensors: Vec<(String, Tensor)> = sd.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
    Tensor::write_safetensors(&tensors, &model).unwrap();
    model
}
