//! Times one GPEN forward (batch 1) with random weights in the official shapes; with
//! `--net parsenet`, one forward of GPEN's face-parsing network (official configuration, 512).
//!
//! ```text
//! cargo run --release --example bench_gpen -- --size 512 --dtype bf16 --threads 2 --reps 3
//! cargo run --release --example bench_gpen -- --net parsenet --dtype fp32 --threads 2 --reps 3
//! ```
//! Prints one JSON line like `gpen_reference.py bench`, so `scripts/bench.sh` can put the two
//! side by side (median seconds per forward, peak RSS of the process).

use std::time::Instant;

use gstgpen::gpen::{random_state_dict, Banding, FullGenerator, GpenConfig};
use gstgpen::parse::{ParseConfig, ParseNet};
use tch::{Device, Kind, Tensor};

/// One forward of the network under test.
type Forward = Box<dyn Fn(&Tensor) -> Tensor>;

/// A `kB` field of /proc/self/status, in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Resets the peak resident size (VmHWM) to the current one, so that the peak of the forward
/// passes is measured apart from loading (which briefly holds the weights twice).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    let mut size = 512;
    let mut dtype = "fp32".to_owned();
    let mut threads = 2;
    let mut reps = 5;
    let mut net = "gpen".to_owned();
    let mut banding = Banding::Default;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--size" => size = value().parse().expect("--size N"),
            "--dtype" => dtype = value(),
            "--threads" => threads = value().parse().expect("--threads N"),
            "--reps" => reps = value().parse().expect("--reps N"),
            "--net" => net = value(),
            "--banding" => {
                banding = match value().as_str() {
                    "off" => Banding::Off,
                    "default" => Banding::Default,
                    bytes => Banding::Above(bytes.parse().expect("--banding off|default|BYTES")),
                }
            }
            other => panic!("unknown argument {other}; usage: [--net gpen|parsenet] --size N --dtype fp32|bf16|fp16 --threads N --reps N"),
        }
    }
    let kind = match dtype.as_str() {
        "fp32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        "fp16" => Kind::Half,
        d => panic!("unknown dtype {d}"),
    };
    tch::set_num_threads(threads);
    let (model, size): (Forward, i64) = match net.as_str() {
        "gpen" => {
            let sd = random_state_dict(&GpenConfig::official(size), 0);
            let model = FullGenerator::from_state_dict(&sd, Device::Cpu, kind).expect("build model");
            (Box::new(move |x| model.forward_with(x, banding).expect("forward")), size)
        }
        "parsenet" => {
            let cfg = ParseConfig::default();
            let sd = gstgpen::parse::random_state_dict(&cfg, 0);
            let model = ParseNet::from_state_dict(&sd, cfg, Device::Cpu, kind).expect("build ParseNet");
            (Box::new(move |x| model.forward(x).expect("forward")), cfg.in_size)
        }
        n => panic!("unknown net {n}: gpen or parsenet"),
    };
    let x = Tensor::rand([1, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    reset_peak_rss();
    let resident = status_mib("VmRSS:");
    let _warm = model(&x);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let _out = model(&x);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    // peak_rss_mib: the peak while restoring, weights resident; resident_mib: before the first
    // forward (runtime and weights).
    println!(
        "{{\"impl\": \"gst-gpen-tch\", \"net\": \"{net}\", \"size\": {size}, \"dtype\": \"{dtype}\", \"threads\": {threads}, \
         \"median_s\": {median:.4}, \"min_s\": {:.4}, \"peak_rss_mib\": {:.1}, \"resident_mib\": {resident:.1}}}",
        times[0],
        status_mib("VmHWM:")
    );
}
