//! Times one GPEN forward (batch 1) with random weights in the official shapes; with
//! `--net parsenet`, one forward of GPEN's face-parsing network (official configuration, 512).
//!
//! ```text
//! cargo run --release --example bench_gpen -- --size 512 --dtype bf16 --threads 2 --reps 3
//! cargo run --release --example bench_gpen -- --net parsenet --dtype fp32 --threads 2 --reps 3
//! cargo run --release --example bench_gpen -- --device cuda --dtype fp16 --batch 1,4,16,32 --banding off
//! ```
//! Prints one JSON line like `gpen_reference.py bench`, so `scripts/bench.sh` can put the two
//! side by side (median seconds per forward, peak RSS of the process). With `--batch`, one line
//! per batch size, with faces per second. On CUDA (`--device cuda`) every timed forward is
//! followed by a wait on the stream (a warm-up forward comes first), and the line also gives
//! the caching allocator's peak over the timed forwards (`peak_alloc_mib`, weights included);
//! `scripts/device-check.sh` runs it there. Exits with status 1 if a batch failed.

use std::time::Instant;

use gstgpen::gpen::{random_state_dict, Banding, FullGenerator, GpenConfig};
use gstgpen::parse::{ParseConfig, ParseNet};
use tch::{Device, Kind, Tensor};

/// One forward of the network under test.
type Forward = Box<dyn Fn(&Tensor) -> Result<Tensor, String>>;

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

/// Waits for the device's queued work (nothing to do on the CPU).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        gstgpen::sys::accelerator_synchronize(i).expect("wait for the CUDA stream");
    }
}

/// The caching allocator's peak since the last reset, in MiB (`None` on the CPU).
fn peak_alloc_mib(device: Device) -> Option<f64> {
    let Device::Cuda(i) = device else { return None };
    gstgpen::sys::accelerator_allocator_stats(i).ok().map(|(_, _, peak)| peak as f64 / (1u64 << 20) as f64)
}

fn main() {
    let mut size = 512;
    let mut dtype = "fp32".to_owned();
    let mut threads = 2;
    let mut reps = 5;
    let mut net = "gpen".to_owned();
    let mut banding = Banding::Default;
    let mut device_name = "cpu".to_owned();
    let mut batches: Vec<i64> = vec![1];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--size" => size = value().parse().expect("--size N"),
            "--dtype" => dtype = value(),
            "--threads" => threads = value().parse().expect("--threads N"),
            "--reps" => reps = value().parse().expect("--reps N"),
            "--net" => net = value(),
            "--device" => device_name = value(),
            "--batch" => batches = value().split(',').map(|b| b.trim().parse().expect("--batch N[,N...]")).collect(),
            "--banding" => {
                banding = match value().as_str() {
                    "off" => Banding::Off,
                    "default" => Banding::Default,
                    bytes => Banding::Above(bytes.parse().expect("--banding off|default|BYTES")),
                }
            }
            other => panic!(
                "unknown argument {other}; usage: [--net gpen|parsenet] --size N --dtype fp32|bf16|fp16 --threads N --reps N \
                 [--device cpu|cuda] [--batch N[,N...]] [--banding off|default|BYTES]"
            ),
        }
    }
    let kind = match dtype.as_str() {
        "fp32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        "fp16" => Kind::Half,
        d => panic!("unknown dtype {d}"),
    };
    let device = match device_name.as_str() {
        "cpu" => Device::Cpu,
        // sys loads the CUDA backend before libtorch is asked (it answers once for the process).
        "cuda" if gstgpen::sys::cuda_is_available() => Device::Cuda(0),
        "cuda" => {
            eprintln!("bench_gpen: no usable CUDA device (no GPU, no driver, or libtorch without CUDA)");
            std::process::exit(2);
        }
        d => panic!("unknown device {d}: cpu or cuda"),
    };
    tch::set_num_threads(threads);
    let (model, size): (Forward, i64) = match net.as_str() {
        "gpen" => {
            let sd = random_state_dict(&GpenConfig::official(size), 0);
            let model = FullGenerator::from_state_dict(&sd, device, kind).expect("build model");
            (Box::new(move |x| model.forward_with(x, banding).map_err(|e| e.to_string())), size)
        }
        "parsenet" => {
            let cfg = ParseConfig::default();
            let sd = gstgpen::parse::random_state_dict(&cfg, 0);
            let model = ParseNet::from_state_dict(&sd, cfg, device, kind).expect("build ParseNet");
            (Box::new(move |x| model.forward(x).map_err(|e| e.to_string())), cfg.in_size)
        }
        n => panic!("unknown net {n}: gpen or parsenet"),
    };
    let mut failed = false;
    for &batch in &batches {
        let x = Tensor::rand([batch, 3, size, size], (Kind::Float, device)) * 2.0 - 1.0;
        reset_peak_rss();
        let resident = status_mib("VmRSS:");
        let run = || -> Result<Vec<f64>, String> {
            drop(model(&x)?); // warm-up, freed before the peak is reset
            sync(device);
            gstgpen::memory::reset_peak(device);
            let mut times = Vec::with_capacity(reps);
            for _ in 0..reps {
                let t = Instant::now();
                let _out = model(&x)?;
                sync(device);
                times.push(t.elapsed().as_secs_f64());
            }
            Ok(times)
        };
        let mut times = match run() {
            Ok(t) if !t.is_empty() => t,
            Ok(_) => panic!("--reps must be at least 1"),
            Err(e) => {
                println!("{{\"impl\": \"gst-gpen-tch\", \"net\": \"{net}\", \"size\": {size}, \"batch\": {batch}, \"error\": {e:?}}}");
                failed = true;
                gstgpen::memory::release_cached();
                continue;
            }
        };
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let peak_alloc = peak_alloc_mib(device).map_or("null".to_owned(), |m| format!("{m:.0}"));
        // peak_rss_mib: the peak while restoring, weights resident; resident_mib: before the first
        // forward (runtime and weights).
        println!(
            "{{\"impl\": \"gst-gpen-tch\", \"net\": \"{net}\", \"size\": {size}, \"dtype\": \"{dtype}\", \"threads\": {threads}, \
             \"device\": \"{device_name}\", \"batch\": {batch}, \"median_s\": {median:.4}, \"min_s\": {:.4}, \
             \"faces_per_s\": {:.1}, \"peak_alloc_mib\": {peak_alloc}, \"peak_rss_mib\": {:.1}, \"resident_mib\": {resident:.1}}}",
            times[0],
            batch as f64 / median,
            status_mib("VmHWM:")
        );
        drop(x);
        gstgpen::memory::release_cached();
    }
    if failed {
        std::process::exit(1);
    }
}
