//! The memory guidance of docs/memory.md, from the estimator: for cards of 4, 8, 12 and 24 GB, which
//! `size`, `fp16` and `face-batch` fit a 1920x1080 frame with 8 faces, and the `vram-budget`
//! to set. Prints a Markdown table.
//!
//! ```text
//! cargo run --release --example memory_guide
//! ```
//! The card's memory less a CUDA context (about 500 MiB) and 10% headroom for the caching
//! allocator's fragmentation is what a plan may use. The estimate is the uncalibrated one; the
//! element calibrates it with one measured forward at start on CUDA.

use gstgpen::gpen::GpenConfig;
use gstgpen::memory::{self, Estimator, Plan};
use gstgpen::upscale::{rrdbnet::random_state_dict, RrdbConfig, RrdbNet, Upscaler};

const CONTEXT_MIB: u64 = 500;

fn main() {
    let (frame, faces) = ((1920, 1080), 8);
    println!("| card | `size` | `fp16` | `face-batch` | predicted peak | `vram-budget` |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for card_gb in [4u64, 8, 12, 24] {
        let usable = ((card_gb * 1000 * 1000 * 1000 / (1 << 20)).saturating_sub(CONTEXT_MIB) as f64 * 0.9) as u64;
        let mut rows = 0;
        // Largest face first; within a size, fp32 where it fits with some batching, else fp16.
        for size in [2048i64, 1024, 512, 256] {
            let cfg = GpenConfig::official(size);
            for half in [false, true] {
                let Some((batch, peak)) = [8usize, 4, 2, 1].into_iter().find_map(|b| {
                    let p = memory::mib(Estimator::default().peak_bytes(
                        &cfg,
                        &Plan { size, half, face_batch: b, tile: None, parse: false },
                        faces,
                        frame,
                    ));
                    (p <= usable).then_some((b, p))
                }) else {
                    continue;
                };
                println!("| {card_gb} GB | {size} | {half} | {batch} | {peak} MiB | {usable} |");
                rows += 1;
                break;
            }
            if rows == 2 {
                break;
            }
        }
        if rows == 0 {
            println!("| {card_gb} GB | none fits | | | | |");
        }
    }

    // The upscaler's share with upscale=2 (RealESRNet's shape: num_feat 32, 23 blocks), by tile.
    let cfg = RrdbConfig { scale: 2, num_feat: 32, num_block: 23, num_grow_ch: 32 };
    let net = RrdbNet::from_state_dict(&random_state_dict(&cfg, 0), cfg, tch::Device::Cpu).expect("model");
    let up = Upscaler::Net(std::sync::Arc::new(net));
    println!();
    println!("| upscale=2, RealESRNet, 1920x1080 input | `tile-size=0` | `tile-size=512` | `tile-size=256` |");
    println!("| --- | --- | --- | --- |");
    let mibs: Vec<String> = [0, 512, 256].iter().map(|&t| format!("{} MiB", memory::mib(up.peak_bytes(t, frame)))).collect();
    println!("| predicted upscaler peak | {} |", mibs.join(" | "));
}
