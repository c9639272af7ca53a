//! Parity of the tch FullGenerator with the official GPEN code, on every fixture in
//! `../shared/fixtures/gpen` (expected tensors made by the official code, CPU fp32).

mod common;

use gstgpen::checkpoint;
use gstgpen::gpen::{Banding, FullGenerator, GpenConfig, Strips};
use tch::{Device, Kind, Tensor};

fn expected(model: &serde_json::Value) -> std::collections::HashMap<String, Tensor> {
    let path = common::gpen_fixture(model["expected"].as_str().unwrap());
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn load(model: &serde_json::Value, kind: Kind) -> FullGenerator {
    let path = common::gpen_fixture(model["file"].as_str().unwrap());
    FullGenerator::load(&path, None, Device::Cpu, kind).unwrap()
}

#[test]
fn config_is_read_from_every_fixture() {
    for m in common::manifest() {
        let path = common::gpen_fixture(m["file"].as_str().unwrap());
        let sd = checkpoint::load(&path, None).unwrap();
        let cfg = GpenConfig::from_state_dict(&sd).unwrap();
        assert_eq!(cfg.size, m["size"].as_i64().unwrap(), "{}", path.display());
        assert_eq!(cfg.channel_multiplier, m["channel_multiplier"].as_i64().unwrap());
        assert_eq!(cfg.narrow, m["narrow"].as_f64().unwrap());
        assert_eq!(cfg.style_dim, m["style_dim"].as_i64().unwrap());
        assert_eq!(cfg.n_mlp, m["n_mlp"].as_i64().unwrap());
        let params: i64 = sd.iter().filter(|(n, _)| !n.ends_with(".kernel")).map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(params, m["params"].as_i64().unwrap());
    }
}

#[test]
fn fp32_matches_the_official_code_on_every_fixture() {
    for m in common::manifest() {
        let name = m["file"].as_str().unwrap();
        let e = expected(&m);
        let model = load(&m, Kind::Float);
        let input = &e["input"];
        assert_eq!(input.size()[0], m["batch"].as_i64().unwrap());
        let out = model.forward_intermediates(input).unwrap();
        let mut worst = 0f64;
        for (i, f) in out.ecd.iter().enumerate() {
            let (max, _) = common::diff(f, &e[&format!("ecd{i}")]);
            assert!(max <= 1e-4, "{name}: ecd{i} max abs {max}");
            worst = worst.max(max);
        }
        assert_eq!(out.ecd.len(), e.keys().filter(|k| k.starts_with("ecd")).count(), "{name}");
        for (label, t) in [("z", &out.z), ("w", &out.w)] {
            let (max, _) = common::diff(t, &e[label]);
            assert!(max <= 1e-4, "{name}: {label} max abs {max}");
        }
        let (max, mean) = common::diff(&out.output, &e["output"]);
        println!("{name}: fp32 output max abs {max:.3e}, mean abs {mean:.3e}; features max {worst:.3e}");
        assert!(max <= 1e-4, "{name}: output max abs {max}");
    }
}

#[test]
fn banded_top_levels_match_the_official_output() {
    for m in common::manifest() {
        let name = m["file"].as_str().unwrap();
        let e = expected(&m);
        let model = load(&m, Kind::Float);
        let whole = model.forward_strips(&e["input"], None).unwrap();
        for levels in 1..=3 {
            // The thinnest bands (every level's rows cut), then uneven ones.
            for rows in [1 << levels, 40, 100] {
                let strips = Strips { levels, rows };
                let out = model.forward_strips(&e["input"], Some(strips)).unwrap();
                let (max, _) = common::diff(&out, &e["output"]);
                let (to_whole, _) = common::diff(&out, &whole);
                println!("{name}: {strips:?}: max abs {max:.3e} from the official output, {to_whole:.3e} from whole maps");
                assert!(max <= 1e-4, "{name} {strips:?}: {max}");
                assert!(to_whole <= 1e-5, "{name} {strips:?}: {to_whole} from whole maps");
            }
        }
    }
}

#[test]
fn banding_chosen_per_call_keeps_the_output() {
    for m in common::manifest() {
        let name = m["file"].as_str().unwrap();
        let e = expected(&m);
        let model = load(&m, Kind::Float);
        let (batch, cfg) = (e["input"].size()[0], model.config().clone());
        let off = model.forward_with(&e["input"], Banding::Off).unwrap();
        let default = model.forward(&e["input"]).unwrap();
        assert_eq!(Strips::plan_with(&cfg, batch, 4, Banding::Default), Strips::plan(&cfg, batch, 4));
        let (to_default, _) = common::diff(&off, &default);
        assert!(to_default <= 1e-5, "{name}: Off is {to_default} from Default");
        // The fixtures are small enough that the default bands nothing: a low threshold bands.
        let low = Banding::Above(256 << 10);
        let strips = Strips::plan_with(&cfg, batch, 4, low).expect("bands under a low threshold");
        let banded = model.forward_with(&e["input"], low).unwrap();
        let (to_off, _) = common::diff(&banded, &off);
        let (max, _) = common::diff(&off, &e["output"]);
        println!("{name}: Off {max:.3e} from the official output; {low:?} ({strips:?}) {to_off:.3e} from Off");
        assert!(max <= 1e-4, "{name}: Off {max}");
        assert!(to_off <= 1e-5, "{name} {strips:?}: {to_off} from whole maps");
    }
}

#[test]
fn bf16_on_cpu_stays_close_to_the_fp32_output() {
    for m in common::manifest() {
        let name = m["file"].as_str().unwrap();
        let e = expected(&m);
        let model = load(&m, Kind::BFloat16);
        let out = model.forward(&e["input"]).unwrap();
        assert_eq!(model.kind(), Kind::BFloat16);
        let (max, mean) = common::diff(&out, &e["output"]);
        println!("{name}: bf16 output max abs {max:.4}, mean abs {mean:.4} (|out| max {})", m["out_absmax"]);
        assert!(max <= 0.1 && mean <= 0.02, "{name}: bf16 max abs {max}, mean abs {mean}");
    }
}

#[test]
fn batch_of_two_equals_two_single_forwards() {
    let m = common::manifest().into_iter().find(|m| m["batch"].as_i64() == Some(2)).unwrap();
    let e = expected(&m);
    let model = load(&m, Kind::Float);
    let both = model.forward(&e["input"]).unwrap();
    for i in 0..2 {
        let one = model.forward(&e["input"].narrow(0, i, 1)).unwrap();
        let (max, _) = common::diff(&one, &both.narrow(0, i, 1));
        assert!(max <= 1e-5, "sample {i}: {max}");
    }
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let m = &common::manifest()[0];
    let model = load(m, Kind::Float);
    let err = model.forward(&Tensor::zeros([1, 3, 100, 100], (Kind::Float, Device::Cpu))).unwrap_err();
    assert!(err.to_string().contains("3 x 256 x 256"), "{err}");
}
