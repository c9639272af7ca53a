//! RRDBNet against GPEN's RealESRNet code (fixtures in `../shared/fixtures/rrdbnet`), and tiled
//! upscaling against untiled: within a level, and no seam on a real photo.

mod common;

use std::path::PathBuf;

use gstgpen::registry;
use gstgpen::upscale::{check_tiles, RrdbConfig, RrdbNet, TilePlan, Upscaler};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    common::shared().join("fixtures/rrdbnet").join(name)
}

fn manifest() -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("MANIFEST.json")).unwrap()).unwrap();
    v["models"].as_array().unwrap().clone()
}

/// An image as `1 x 3 x H x W` float 0..255. JPEG through libjpeg-turbo, as the fixtures were
/// made (OpenCV): the tiny random networks turn a level of decoder difference into many.
fn image(path: &std::path::Path) -> Tensor {
    let (rgb, w, h) = common::decode_like_opencv(path);
    common::rgb_tensor(&rgb, w, h)
}

fn to_levels(t: &Tensor) -> Tensor {
    t.round().clamp(0.0, 255.0).to_kind(Kind::Uint8)
}

fn max_level_diff(a: &Tensor, b: &Tensor) -> i64 {
    (a.to_kind(Kind::Int) - b.to_kind(Kind::Int)).abs().max().int64_value(&[])
}

#[test]
fn fixtures_load_with_their_configuration_and_match_the_reference() {
    for m in manifest() {
        let net = RrdbNet::new(&fixture(m["file"].as_str().unwrap()), Device::Cpu).unwrap();
        let cfg = net.config();
        assert_eq!(
            cfg,
            RrdbConfig {
                scale: m["scale"].as_i64().unwrap(),
                num_feat: m["num_feat"].as_i64().unwrap(),
                num_block: m["num_block"].as_i64().unwrap(),
                num_grow_ch: m["num_grow_ch"].as_i64().unwrap(),
            }
        );
        let expected = Tensor::read_safetensors(fixture(m["expected"].as_str().unwrap().split(' ').next().unwrap())).unwrap();
        let get = |n: &str| expected.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
        let out = net.forward(&get("input")).unwrap();
        let (max, mean) = common::diff(&out, &get("output"));
        println!("{}: max abs {max:.2e}, mean {mean:.2e}", m["file"]);
        assert!(max <= 1e-4, "{}: max abs {max}", m["file"]);
    }
}

#[test]
fn untiled_8bit_output_matches_gpen_within_a_level() {
    for m in manifest() {
        let up = Upscaler::with_net(
            registry::upscaler(&fixture(m["file"].as_str().unwrap()), Device::Cpu).unwrap(),
            m["scale"].as_i64().unwrap(),
        )
        .unwrap();
        let input = image(&common::shared().join(m["input_png"].as_str().unwrap()));
        let ours = to_levels(&up.upscale(&input, 0, 0).unwrap());
        let theirs = image(&fixture(m["outputs"]["untiled"].as_str().unwrap())).to_kind(Kind::Uint8);
        // GPEN's RealESRNet crops its padding off the output by the input's pad, not by the
        // pad times the scale: a 427 px wide frame gives 855 columns at x2, the last made from
        // the padding. Ours is exactly scale x input; the common part is compared.
        let (h, w) = (input.size()[2] * up.factor(), input.size()[3] * up.factor());
        assert_eq!(ours.size(), [1, 3, h, w]);
        assert!(theirs.size()[2] >= h && theirs.size()[3] >= w && theirs.size()[3] <= w + 1, "{:?}", theirs.size());
        let theirs = theirs.narrow(2, 0, h).narrow(3, 0, w);
        let max = max_level_diff(&ours, &theirs);
        println!("{}: untiled max {max} levels", m["file"]);
        assert!(max <= 1, "{}: {max} levels", m["file"]);
    }
}

#[test]
fn tiled_output_matches_untiled_within_a_level() {
    for m in manifest() {
        let up = Upscaler::with_net(
            registry::upscaler(&fixture(m["file"].as_str().unwrap()), Device::Cpu).unwrap(),
            m["scale"].as_i64().unwrap(),
        )
        .unwrap();
        let input = image(&common::shared().join(m["input_png"].as_str().unwrap()));
        let whole = to_levels(&up.upscale(&input, 0, 0).unwrap());
        for (tile, overlap) in [(96, 32), (128, 32), (64, 24)] {
            let tiled = to_levels(&up.upscale(&input, tile, overlap).unwrap());
            let max = max_level_diff(&tiled, &whole);
            let plan = TilePlan::new(input.size()[3], input.size()[2], tile, overlap, 2);
            println!("{}: tile {tile} overlap {overlap} ({} tiles): max {max} levels", m["file"], plan.tiles());
            assert!(plan.tiles() > 1);
            assert!(max <= 1, "{}: tile {tile} overlap {overlap}: {max} levels", m["file"]);
        }
    }
}

/// Mean absolute horizontal and vertical steps of the image at the given columns and rows
/// (the step from column c-1 to c), against the mean over all columns and rows.
fn steps(img: &Tensor, cols: &[i64], rows: &[i64]) -> (f64, f64) {
    let f = img.to_kind(Kind::Double);
    let dx = (f.narrow(3, 1, f.size()[3] - 1) - f.narrow(3, 0, f.size()[3] - 1)).abs();
    let dy = (f.narrow(2, 1, f.size()[2] - 1) - f.narrow(2, 0, f.size()[2] - 1)).abs();
    let mut at = Vec::new();
    for &c in cols {
        at.push(dx.narrow(3, c - 1, 1).mean(Kind::Double).double_value(&[]));
    }
    for &r in rows {
        at.push(dy.narrow(2, r - 1, 1).mean(Kind::Double).double_value(&[]));
    }
    let border = at.iter().sum::<f64>() / at.len() as f64;
    let all = (dx.mean(Kind::Double).double_value(&[]) + dy.mean(Kind::Double).double_value(&[])) / 2.0;
    (border, all)
}

#[test]
fn no_seam_on_a_real_photo() {
    let up = Upscaler::with_net(registry::upscaler(&fixture("rrdbnet-x2-tiny.pth"), Device::Cpu).unwrap(), 2).unwrap();
    let input = image(&common::shared().join("media/images/solvay_conference_1927.png"));
    let (tile, overlap) = (200, 32);
    let plan = TilePlan::new(input.size()[3], input.size()[2], tile, overlap, 2);
    assert!(plan.xs.len() >= 6 && plan.ys.len() >= 3, "{plan:?}");
    // Every place where a tile starts or ends inside the frame, in output pixels.
    let edges = |spans: &[gstgpen::upscale::Span]| -> Vec<i64> {
        let last = spans.last().unwrap().end();
        spans.iter().flat_map(|s| [s.start * 2, s.end() * 2]).filter(|&e| e > 0 && e < last * 2).collect()
    };
    let (cols, rows) = (edges(&plan.xs), edges(&plan.ys));
    let tiled = to_levels(&up.upscale(&input, tile, overlap).unwrap());
    let (border, all) = steps(&tiled, &cols, &rows);
    println!("feathered tiles: mean step across tile edges {border:.3} levels, everywhere {all:.3}");
    assert!(border <= all, "a seam: {border:.3} levels at tile edges against {all:.3} elsewhere");
    // The measure finds seams: the untiled output with every other tile column brightened by
    // 3 levels (a seam of the kind exposure or hard cuts leave) fails it.
    let whole = up.upscale(&input, 0, 0).unwrap();
    let seamed = whole.copy();
    for (i, x) in plan.xs.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let _ = (i, seamed.narrow(3, x.start * 2, x.len * 2).g_add_scalar_(3.0));
    }
    let (sb, sa) = steps(&to_levels(&seamed), &edges(&plan.xs), &[]);
    println!("artificial seams: {sb:.3} levels at tile edges, {sa:.3} everywhere");
    assert!(sb > sa, "the measure should see seams: {sb:.3} against {sa:.3}");
}

#[test]
fn bad_upscaler_input_is_refused_with_a_reason() {
    // Not an RRDBNet.
    let e = RrdbNet::new(&common::gpen_fixture("gpen-256-tiny.pth"), Device::Cpu).err().unwrap();
    assert!(matches!(e, gstgpen::Error::ModelMismatch { network: gstgpen::Network::RrdbNet, .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("gpen-256-tiny.pth") && e.contains("conv_first.weight") && e.contains("not an RRDBNet"), "{e}");
    // A scale that does not match.
    let e = Upscaler::with_net(registry::upscaler(&fixture("rrdbnet-x4-tiny.pth"), Device::Cpu).unwrap(), 2).err().unwrap().to_string();
    assert!(e.contains("RRDBNet x4 cannot upscale by 2") && e.contains("set the factor to 4"), "{e}");
    // Tiles smaller than twice the overlap.
    assert!(check_tiles(48, 32).unwrap_err().to_string().contains("twice the tile overlap"));
    // A truncated file.
    let dir = common::scratch("rrdb-bad");
    let bytes = std::fs::read(fixture("rrdbnet-x2-tiny.pth")).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = RrdbNet::new(&cut, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("cut.pth"), "{e}");
    // Bicubic needs no model.
    let up = Upscaler::Bicubic(2);
    let x = Tensor::full([1, 3, 5, 7], 100.0, (Kind::Float, Device::Cpu));
    let y = up.upscale(&x, 0, 0).unwrap();
    assert_eq!(y.size(), [1, 3, 10, 14]);
    assert!((y - 100.0).abs().max().double_value(&[]) < 1e-3);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn any_frame_size_from_one_pixel() {
    let up = Upscaler::with_net(registry::upscaler(&fixture("rrdbnet-x2-tiny.pth"), Device::Cpu).unwrap(), 2).unwrap();
    for (w, h) in [(1, 1), (2, 2), (3, 5), (97, 31)] {
        let x = Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu)) * 255.0;
        for tile in [0, 16, 1000] {
            let y = up.upscale(&x, tile, 4).unwrap();
            assert_eq!(y.size(), [1, 3, 2 * h, 2 * w], "{w}x{h} tile {tile}");
            assert!(y.isfinite().all().int64_value(&[]) == 1);
        }
    }
}

#[test]
fn bare_and_prefixed_safetensors_load_too() {
    let dir = common::scratch("rrdb-st");
    let sd = gstgpen::checkpoint::load(&fixture("rrdbnet-x2-tiny.pth"), None).unwrap();
    let x = Tensor::rand([1, 3, 32, 48], (Kind::Float, Device::Cpu));
    let reference = RrdbNet::new(&fixture("rrdbnet-x2-tiny.pth"), Device::Cpu).unwrap().forward(&x).unwrap();
    for prefix in ["", "params.", "params_ema."] {
        let tensors: Vec<(String, Tensor)> = sd.iter().map(|(n, t)| (format!("{prefix}{n}"), t.shallow_clone())).collect();
        let path = dir.join(format!("x2{prefix}safetensors"));
        Tensor::write_safetensors(&tensors, &path).unwrap();
        let net = RrdbNet::new(&path, Device::Cpu).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert_eq!(net.config().scale, 2);
        assert_eq!(net.forward(&x).unwrap(), reference, "{prefix}");
    }
    std::fs::remove_dir_all(dir).ok();
}
