//! Where the time of one GPEN forward goes: wall time per stage (encoder levels, mapping,
//! decoder levels), the floating-point work of each (from the weights' shapes) and the rate
//! achieved, beside this CPU's measured ceilings (a large GEMM, a large copy). The source of
//! `docs/profile.md`.
//!
//! ```text
//! cargo run --release --example profile_gpen -- --size 512 --dtype fp32 --threads 2 --reps 3 [--banding off]
//! ```
//! Random weights in the official shapes; batch 1 unless `--batch`; medians over `--reps` forwards after a warm-up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gstgpen::checkpoint::StateDict;
use gstgpen::gpen::{profile, random_state_dict, Banding, FullGenerator, GpenConfig};
use tch::{Device, Kind, Tensor};

/// Multiply-adds of the weight `name` (`(1, out, in, k, k)` or `(out, in, k, k)`) applied at
/// `pixels` output positions, as floating-point operations (2 per multiply-add).
fn conv_flops(sd: &StateDict, name: &str, pixels: f64) -> f64 {
    let s = sd.get(name).unwrap_or_else(|| panic!("no {name}")).size();
    let n: i64 = s.iter().product();
    2.0 * n as f64 * pixels
}

/// The work of a decoder level of side `r` (up-sampling conv, conv, RGB skip, blurs).
fn level_flops(sd: &StateDict, r: i64) -> f64 {
    let k = (r.trailing_zeros() - 3) as usize;
    let up = format!("generator.convs.{}.conv.weight", 2 * k);
    let out = sd.get(&up).unwrap().size()[1];
    let rr = (r * r) as f64;
    // The transposed conv's taps fall on the input grid (a quarter of the output's), then a
    // 4x4 depthwise blur over the output.
    conv_flops(sd, &up, rr / 4.0)
        + 2.0 * 16.0 * out as f64 * ((r + 1) * (r + 1)) as f64
        + conv_flops(sd, &format!("generator.convs.{}.conv.weight", 2 * k + 1), rr)
        + conv_flops(sd, &format!("generator.to_rgbs.{k}.conv.weight"), rr)
        + 2.0 * 16.0 * 3.0 * rr
}

/// The work of the stage named by the profile (see `src/gpen/model.rs`).
fn stage_flops(sd: &StateDict, size: i64, name: &str) -> f64 {
    let encoder = |i: i64| {
        // ecd{i}: blur (pad 2) then a 3x3 conv of stride 2 from side size >> (i - 1).
        let side = size >> (i - 1);
        let w = format!("ecd{i}.0.1.weight");
        let cin = sd.get(&w).unwrap().size()[1];
        2.0 * 16.0 * (cin * (side + 1) * (side + 1)) as f64 + conv_flops(sd, &w, ((side / 2) * (side / 2)) as f64)
    };
    let side = |s: &str| s.parse::<i64>().unwrap();
    let log = |r: i64| r.trailing_zeros() as i64;
    if let Some(r) = name.strip_prefix("encoder ") {
        return match r.split_once('-') {
            Some(_) => conv_flops(sd, "ecd0.0.0.weight", (size * size) as f64) + encoder(1),
            None => encoder(log(size) - log(side(r))),
        };
    }
    if name == "final_linear + mapping" {
        let mut f = conv_flops(sd, "final_linear.0.weight", 1.0);
        for j in 1.. {
            let key = format!("generator.style.{j}.weight");
            if sd.get(&key).is_none() {
                break;
            }
            f += conv_flops(sd, &key, 1.0);
        }
        return f;
    }
    if name == "decoder 4" {
        return conv_flops(sd, "generator.conv1.conv.weight", 16.0) + conv_flops(sd, "generator.to_rgb1.conv.weight", 16.0);
    }
    let levels = name.trim_start_matches("decoder ").trim_end_matches(" in bands");
    let (lo, hi) = levels.split_once('-').map_or_else(|| (side(levels), side(levels)), |(a, b)| (side(a), side(b)));
    let mut f = 0.0;
    let mut r = lo;
    while r <= hi {
        f += level_flops(sd, r);
        r *= 2;
    }
    f
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The best of three timings of `f`, in seconds.
fn best_of(f: impl Fn()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let (mut size, mut dtype, mut threads, mut reps, mut banding, mut batch) = (512, "fp32".to_owned(), 2, 3, Banding::Default, 1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--size" => size = value().parse().expect("--size N"),
            "--dtype" => dtype = value(),
            "--threads" => threads = value().parse().expect("--threads N"),
            "--reps" => reps = value().parse().expect("--reps N"),
            "--batch" => batch = value().parse().expect("--batch N"),
            "--banding" => banding = if value() == "off" { Banding::Off } else { Banding::Default },
            other => panic!("unknown argument {other}; usage: --size N --dtype fp32|bf16 --threads N --reps N [--batch N] [--banding off]"),
        }
    }
    let kind = match dtype.as_str() {
        "fp32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        d => panic!("unknown dtype {d}: fp32 or bf16"),
    };
    tch::set_num_threads(threads);
    let _guard = tch::no_grad_guard();

    // Ceilings: a 2048^3 GEMM in the compute precision, and a 256 MiB copy.
    let a = Tensor::rand([2048, 2048], (Kind::Float, Device::Cpu)).to_kind(kind);
    let gemm = 2.0 * 2048f64.powi(3) / best_of(|| drop(a.matmul(&a))) / 1e9;
    let big = Tensor::rand([64 << 20], (Kind::Float, Device::Cpu));
    let copy = 2.0 * (256u64 << 20) as f64 / best_of(|| drop(big.copy())) / 1e9;
    drop((a, big));

    let sd = random_state_dict(&GpenConfig::official(size), 0);
    let model = FullGenerator::from_state_dict(&sd, Device::Cpu, kind).expect("build model");
    let x = Tensor::rand([batch, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let _warm = model.forward_with(&x, banding).expect("forward");
    let mut stages: BTreeMap<usize, (String, Vec<f64>)> = BTreeMap::new();
    let mut totals = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let (out, spans) = profile::record(|| model.forward_with(&x, banding).expect("forward"));
        drop(out);
        totals.push(t.elapsed().as_secs_f64());
        for (i, (name, d)) in spans.into_iter().enumerate() {
            stages.entry(i).or_insert_with(|| (name, Vec::new())).1.push(d.as_secs_f64());
        }
    }
    let total = median(totals);
    println!(
        "GPEN-{size} {dtype}, batch {batch}, {threads} threads, banding {banding:?}; ceilings: GEMM {gemm:.0} GFLOP/s, copy {copy:.1} GB/s (read + write)"
    );
    println!("{:<28} {:>9} {:>7} {:>9} {:>9} {:>8}", "stage", "ms", "share", "GFLOP", "GFLOP/s", "of GEMM");
    let mut flops_sum = 0.0;
    let mut spent = Duration::ZERO;
    for (name, times) in stages.into_values() {
        let t = median(times);
        let f = batch as f64 * stage_flops(&sd, size, &name);
        flops_sum += f;
        spent += Duration::from_secs_f64(t);
        println!(
            "{name:<28} {:>9.1} {:>6.1}% {:>9.2} {:>9.1} {:>7.0}%",
            t * 1e3,
            100.0 * t / total,
            f / 1e9,
            f / t / 1e9,
            100.0 * f / t / 1e9 / gemm
        );
    }
    println!(
        "{:<28} {:>9.1} {:>6.1}% {:>9.2} {:>9.1} {:>7.0}%",
        "forward",
        total * 1e3,
        100.0 * spent.as_secs_f64() / total,
        flops_sum / 1e9,
        flops_sum / total / 1e9,
        100.0 * flops_sum / total / 1e9 / gemm
    );
}
