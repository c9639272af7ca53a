//! Peak memory and time of upscaling one 1920x1080 frame x2 with an RRDBNet in the official
//! RealESRNet shape (num_feat 32, 23 blocks, random weights), in tiles against the whole frame.
//!
//! ```text
//! cargo run --release --example bench_upscale -- [--tile 256] [--overlap 32] [--width 1920 --height 1080]
//! ```
//! The CPU's peak resident size cannot be reset, so each run is its own process (this program
//! starts itself twice); peaks are reported above the resident size with the weights loaded.

use std::process::Command;
use std::time::Instant;

use gstgpen::memory;
use gstgpen::upscale::{rrdbnet::random_state_dict, RrdbConfig, RrdbNet, Upscaler};
use tch::{Device, Kind, Tensor};

fn run_one(width: i64, height: i64, tile: i64, overlap: i64) {
    tch::set_num_threads(2);
    let cfg = RrdbConfig { scale: 2, num_feat: 32, num_block: 23, num_grow_ch: 32 };
    let net = RrdbNet::from_state_dict(&random_state_dict(&cfg, 0), cfg, Device::Cpu).expect("model");
    let up = Upscaler::Net(std::sync::Arc::new(net));
    let frame = Tensor::rand([1, 3, height, width], (Kind::Float, Device::Cpu)) * 255.0;
    let before = memory::figures(Device::Cpu).unwrap().allocated;
    let t = Instant::now();
    let out = up.upscale(&frame, tile, overlap).expect("upscale");
    let secs = t.elapsed().as_secs_f64();
    let peak = memory::figures(Device::Cpu).unwrap().peak;
    assert_eq!(out.size(), [1, 3, 2 * height, 2 * width]);
    println!(
        "RESULT tile={tile} seconds={secs:.2} peak_extra_mib={} peak_mib={}",
        memory::mib(peak.saturating_sub(before)),
        memory::mib(peak)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut tile, mut overlap, mut width, mut height, mut child) = (256i64, 32i64, 1920i64, 1080i64, false);
    while let Some(a) = args.next() {
        let mut v = || args.next().and_then(|v| v.parse::<i64>().ok()).unwrap_or_else(|| panic!("{a} needs a number"));
        match a.as_str() {
            "--tile" => tile = v(),
            "--overlap" => overlap = v(),
            "--width" => width = v(),
            "--height" => height = v(),
            "--child" => child = true,
            other => panic!("unknown argument {other}"),
        }
    }
    if child {
        return run_one(width, height, tile, overlap);
    }
    println!("RRDBNet x2 (num_feat 32, 23 blocks, random weights), {width}x{height}, CPU, 2 threads");
    let mut results = Vec::new();
    for t in [tile, 0] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--child", "--tile", &t.to_string(), "--overlap", &overlap.to_string()])
            .args(["--width", &width.to_string(), "--height", &height.to_string()])
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("RESULT"))
            .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            .to_owned();
        println!("{line}");
        let field = |k: &str| line.split_whitespace().find_map(|f| f.strip_prefix(k)).unwrap().parse::<f64>().unwrap();
        results.push((field("seconds="), field("peak_extra_mib=")));
    }
    let ((ts, tm), (ws, wm)) = (results[0], results[1]);
    println!(
        "tile {tile} overlap {overlap} against the whole frame: peak {:.2} (target <= 0.3), time {:.2} (target <= 1.3)",
        tm / wm,
        ts / ws
    );
}
