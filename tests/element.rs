//! `gpenfilter` in real pipelines: aligned-face restoration against the official outputs,
//! every accepted format, timestamps and metadata, and errors on bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{init, level_diff};
use gst::prelude::*;

/// Runs a pipeline to EOS; on failure returns the text of the first error on the bus.
fn run(description: &str) -> Result<(), String> {
    init();
    let pipeline = gst::parse::launch(description).map_err(|e| format!("parse: {e}"))?;
    let bus = pipeline.bus().unwrap();
    let started = pipeline.set_state(gst::State::Playing);
    let mut result = Err("no EOS and no error within 120 s".to_owned());
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                result = Ok(());
                break;
            }
            gst::MessageView::Error(e) => {
                result = Err(format!("{} ({})", e.error(), e.debug().unwrap_or_default()));
                break;
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    if result.is_ok() {
        started.map_err(|e| format!("state change: {e}"))?;
    }
    result
}

/// Decodes an image file to packed RGB bytes (width * 3 per row, no padding for our sizes).
fn decode_rgb(path: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.rgb", path.file_name().unwrap().to_string_lossy()));
    run(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! video/x-raw,format=RGB ! filesink location={}",
        path.display(),
        out.display()
    ))
    .unwrap();
    std::fs::read(out).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    common::gpen_fixture(name)
}

#[test]
fn aligned_faces_match_the_official_outputs() {
    let dir = common::scratch("e2e");
    // The 512 fixture, both 256 inputs, and the legacy and g_ema-wrapped checkpoints.
    let cases = [
        ("gpen-512-tiny", 0, "512"),
        ("gpen-256-tiny", 0, "256"),
        ("gpen-256-tiny", 1, "256"),
        ("gpen-256-tiny-legacy", 0, "256"),
        ("gpen-256-tiny-gema", 0, "256"),
    ];
    for (name, i, size) in cases {
        let out = dir.join(format!("{name}.out{i}.png"));
        run(&format!(
            "filesrc location={input} ! pngdec ! videoconvert ! gpenfilter aligned=true size={size} model={model} \
             device=cpu ! videoconvert ! pngenc ! filesink location={out}",
            input = fixture(&format!("{name}.input{i}.png")).display(),
            model = fixture(&format!("{name}.pth")).display(),
            out = out.display()
        ))
        .unwrap();
        let got = decode_rgb(&out, &dir);
        let want = decode_rgb(&fixture(&format!("{name}.output{i}.png")), &dir);
        let input = decode_rgb(&fixture(&format!("{name}.input{i}.png")), &dir);
        let (mean, max) = level_diff(&got, &want);
        println!("{name} input{i}: mean abs {mean:.4} levels, max {max}");
        assert!(mean <= 0.5 && max <= 2, "{name} input{i}: mean {mean}, max {max}");
        // Not a pass-through: the random-weight model changes the picture a lot.
        assert!(level_diff(&got, &input).0 > 10.0, "{name}: output looks like the input");
    }
}

#[test]
fn every_format_gives_the_same_restoration() {
    let dir = common::scratch("formats");
    let input = fixture("gpen-256-tiny.input0.png");
    let model = fixture("gpen-256-tiny.pth");
    let mut want: Option<Vec<u8>> = None;
    for format in ["RGB", "BGR", "RGBx", "BGRx", "xRGB", "xBGR", "RGBA", "BGRA", "ARGB", "ABGR"] {
        let out = dir.join(format!("{format}.rgb"));
        run(&format!(
            "filesrc location={} ! pngdec ! videoconvert ! video/x-raw,format={format} ! gpenfilter aligned=true size=256 \
             model={} device=cpu ! videoconvert ! video/x-raw,format=RGB ! filesink location={}",
            input.display(),
            model.display(),
            out.display()
        ))
        .unwrap();
        let got = std::fs::read(&out).unwrap();
        match &want {
            None => want = Some(got),
            Some(w) => assert!(&got == w, "{format} differs from RGB"),
        }
    }
    // And that restoration is the official one, not the input passed through.
    assert_restored_like_the_official_output(&want.unwrap(), "RGB");
}

/// `got` (packed RGB of `gpen-256-tiny.input0.png` through the element) is within the
/// tolerance of `aligned_faces_match_the_official_outputs` of the official output, and far
/// from the input.
fn assert_restored_like_the_official_output(got: &[u8], label: &str) {
    let (want, _, _) = common::decode_image(&fixture("gpen-256-tiny.output0.png"));
    let (input, _, _) = common::decode_image(&fixture("gpen-256-tiny.input0.png"));
    let (mean, max) = level_diff(got, &want);
    assert!(mean <= 0.5 && max <= 2, "{label}: mean {mean}, max {max} levels from the official output");
    assert!(level_diff(got, &input).0 > 10.0, "{label}: output looks like the input");
}

#[test]
fn frames_of_another_size_are_resized_and_keep_their_caps() {
    let dir = common::scratch("resize");
    let (inp, out) = (dir.join("in.rgb"), dir.join("out.rgb"));
    let model = fixture("gpen-256-tiny.pth");
    // 200x160 frames, not the model's 256x256: resized in, restored, resized back.
    run(&format!(
        "videotestsrc num-buffers=3 pattern=smpte ! video/x-raw,format=RGB,width=200,height=160 ! tee name=t \
         t. ! queue ! filesink location={} \
         t. ! queue ! gpenfilter aligned=true size=256 model={} device=cpu ! video/x-raw,format=RGB,width=200,height=160 \
         ! filesink location={}",
        inp.display(),
        model.display(),
        out.display()
    ))
    .unwrap();
    let (input, got) = (std::fs::read(&inp).unwrap(), std::fs::read(&out).unwrap());
    let frame = 200 * 160 * 3; // 600-byte rows: packed
    assert_eq!((input.len(), got.len()), (3 * frame, 3 * frame));
    // The reference: bilinear to 256, the generator, bilinear back (as the restorer does).
    let _guard = tch::no_grad_guard();
    let g = gstgpen::gpen::FullGenerator::load(&model, None, tch::Device::Cpu, tch::Kind::Float).unwrap();
    for (n, (i, o)) in input.chunks(frame).zip(got.chunks(frame)).enumerate() {
        let x = common::rgb_tensor(i, 200, 160) / 127.5 - 1.0;
        let y = g.forward(&x.upsample_bilinear2d([256, 256], false, None, None)).unwrap();
        let y = y.upsample_bilinear2d([160, 200], false, None, None);
        let want = common::rgb_bytes(&((y.clamp(-1.0, 1.0) + 1.0) * 127.5));
        let (mean, max) = level_diff(o, &want);
        println!("frame {n}: mean abs {mean:.4} levels from the reference, max {max}");
        assert!(mean <= 0.5 && max <= 2, "frame {n}: mean {mean}, max {max} levels from the reference");
        assert!(level_diff(o, i).0 > 10.0, "frame {n}: output looks like the input");
    }
}

#[test]
fn timestamps_flags_and_metadata_are_preserved() {
    init();
    // Properties first: the harness starts the element as soon as it wraps it.
    let element = common::tiny_element(true);
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgbx, 256, 256).fps(gst::Fraction::new(25, 1)).build().unwrap();
    h.set_src_caps(info.to_caps().unwrap());
    for n in 0..3u64 {
        let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            b.map_writable().unwrap().iter_mut().enumerate().for_each(|(i, v)| *v = (i * 7 % 251) as u8);
            b.set_pts(gst::ClockTime::from_mseconds(40 * n + 1000));
            b.set_dts(gst::ClockTime::from_mseconds(40 * n + 1000));
            b.set_duration(gst::ClockTime::from_mseconds(40));
            b.set_offset(n);
            b.set_flags(gst::BufferFlags::DISCONT);
            gst_video::VideoRegionOfInterestMeta::add(b, "face", (10, 20, 30, 40));
        }
        let input = buffer.map_readable().unwrap().to_vec();
        let out = h.push_and_pull(buffer).unwrap();
        assert_eq!(out.pts(), Some(gst::ClockTime::from_mseconds(40 * n + 1000)));
        assert_eq!(out.dts(), Some(gst::ClockTime::from_mseconds(40 * n + 1000)));
        assert_eq!(out.duration(), Some(gst::ClockTime::from_mseconds(40)));
        assert_eq!(out.offset(), n);
        assert!(out.flags().contains(gst::BufferFlags::DISCONT));
        let roi = out.meta::<gst_video::VideoRegionOfInterestMeta>().expect("ROI meta kept");
        assert_eq!(roi.rect(), (10, 20, 30, 40));
        let data = out.map_readable().unwrap();
        // RGBx: the padding byte is left alone, the colours are restored.
        assert!(data.chunks(4).zip(input.chunks(4)).all(|(o, i)| o[3] == i[3]));
        assert_ne!(&data[..], &input[..]);
    }
}

/// Starts a pipeline with these gpenfilter properties and returns the error on the bus.
fn start_error(properties: &str) -> String {
    let err = run(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=64 ! gpenfilter device=cpu {properties} ! fakesink"
    ))
    .expect_err("the pipeline must not start");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_input_gives_a_clear_error_on_the_bus() {
    let dir = common::scratch("bad");
    let tiny = fixture("gpen-256-tiny.pth");
    let bytes = std::fs::read(&tiny).unwrap();

    let missing = dir.join("missing.pth");
    let e = start_error(&format!("model={}", missing.display()));
    assert!(e.contains("missing.pth") && e.contains("no such file"), "{e}");

    let empty_dir = dir.join("weights");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let e = start_error(&format!("model={} size=1024", empty_dir.display()));
    assert!(e.contains("GPEN-BFR-1024.pth") && e.contains("no such file"), "{e}");

    let truncated = dir.join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let e = start_error(&format!("model={} size=256", truncated.display()));
    assert!(e.contains("truncated.pth") && e.contains("corrupt or truncated"), "{e}");

    let legacy = std::fs::read(fixture("gpen-256-tiny-legacy.pth")).unwrap();
    let truncated_legacy = dir.join("truncated-legacy.pth");
    std::fs::write(&truncated_legacy, &legacy[..legacy.len() - 1000]).unwrap();
    let e = start_error(&format!("model={} size=256", truncated_legacy.display()));
    assert!(e.contains("truncated-legacy.pth") && e.contains("corrupt or truncated"), "{e}");

    let garbage = dir.join("garbage.pth");
    std::fs::write(&garbage, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect::<Vec<_>>()).unwrap();
    let e = start_error(&format!("model={} size=256", garbage.display()));
    assert!(e.contains("garbage.pth") && e.contains("not a checkpoint"), "{e}");

    let detector = common::detector();
    let e = start_error(&format!("model={} size=256", detector.display()));
    assert!(
        e.contains("retinaface-mnet025-fd1mb.pth") && e.contains("does not match the GPEN generator") && e.contains("no `ecd0.0.0.weight`"),
        "{e}"
    );

    let e = start_error(&format!("model={} size=512", tiny.display()));
    assert!(e.contains("gpen-256-tiny.pth") && e.contains("GPEN-256") && e.contains("property size") && e.contains("512"), "{e}");

    let e = start_error(&format!("model={} size=256 device=tpu:0", tiny.display()));
    assert!(e.contains("unknown device `tpu:0`"), "{e}");
    if tch::Cuda::device_count() < 8 {
        let e = start_error(&format!("model={} size=256 device=cuda:7", tiny.display()));
        assert!(e.contains("cuda:7") && e.contains("CUDA device"), "{e}");
    }

    let e = start_error(&format!("model={} size=256 detector-model={}", tiny.display(), missing.display()));
    assert!(e.contains("missing.pth") && e.contains("property detector-model") && e.contains("no such file"), "{e}");

    // A MobileNet detector that is not one of the published files: its variant cannot be told.
    let sd = gstgpen::checkpoint::load(&common::detector(), None).unwrap();
    let tensors: Vec<(String, tch::Tensor)> = sd.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
    let unknown = dir.join("my-detector.safetensors");
    tch::Tensor::write_safetensors(&tensors, &unknown).unwrap();
    let e = start_error(&format!("model={} size=256 detector-model={}", tiny.display(), unknown.display()));
    assert!(e.contains("my-detector.safetensors") && e.contains("detector variant") && e.contains("fd1mb"), "{e}");
    // Named, it loads.
    run(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=64 ! gpenfilter model={} size=256 \
         detector-model={} detector-variant=fd1mb device=cpu ! fakesink",
        tiny.display(),
        unknown.display()
    ))
    .unwrap();

    // A GPEN checkpoint given as the detector.
    let e = start_error(&format!("model={} size=256 detector-model={}", tiny.display(), tiny.display()));
    assert!(e.contains("does not match the RetinaFace detector") && e.contains("no `body.stage1.0.0.weight`"), "{e}");
}

#[test]
fn mis_shaped_checkpoint_lists_every_problem() {
    let dir = common::scratch("misshaped");
    let sd = gstgpen::checkpoint::load(&fixture("gpen-256-tiny.pth"), None).unwrap();
    let mut tensors: Vec<(String, tch::Tensor)> =
        sd.iter().filter(|(n, _)| *n != "generator.style.2.bias").map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
    for (n, t) in tensors.iter_mut() {
        if n == "ecd1.0.1.weight" {
            *t = tch::Tensor::zeros([3, 3, 3, 3], (tch::Kind::Float, tch::Device::Cpu));
        }
    }
    tensors.push(("generator.extra".into(), tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu))));
    let path = dir.join("broken.safetensors");
    tch::Tensor::write_safetensors(&tensors, &path).unwrap();
    let e = start_error(&format!("model={} size=256", path.display()));
    assert!(e.contains("broken.safetensors"), "{e}");
    assert!(e.contains("1 missing: generator.style.2.bias"), "{e}");
    assert!(e.contains("1 unexpected: generator.extra"), "{e}");
    assert!(e.contains("ecd1.0.1.weight (expected [16, 8, 3, 3], found [3, 3, 3, 3])"), "{e}");
}

#[test]
fn safetensors_and_wrapped_checkpoints_restore_like_the_pth() {
    // The same weights as safetensors, under a `g_ema.` prefix selected with model-key.
    let dir = common::scratch("st");
    let sd = gstgpen::checkpoint::load(&fixture("gpen-256-tiny.pth"), None).unwrap();
    let tensors: Vec<(String, tch::Tensor)> = sd.iter().map(|(n, t)| (format!("g_ema.{n}"), t.shallow_clone())).collect();
    let path = dir.join("wrapped.safetensors");
    tch::Tensor::write_safetensors(&tensors, &path).unwrap();
    let input = fixture("gpen-256-tiny.input0.png");
    let mut outputs = Vec::new();
    for (model, key) in [(fixture("gpen-256-tiny.pth"), ""), (path.clone(), " model-key=g_ema")] {
        let out = dir.join(format!("out{}.rgb", outputs.len()));
        run(&format!(
            "filesrc location={} ! pngdec ! videoconvert ! gpenfilter aligned=true size=256 model={}{key} device=cpu ! \
             videoconvert ! video/x-raw,format=RGB ! filesink location={}",
            input.display(),
            model.display(),
            out.display()
        ))
        .unwrap();
        outputs.push(std::fs::read(out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_restored_like_the_official_output(&outputs[1], "wrapped safetensors");
    let e = start_error(&format!("model={} size=256 model-key=params", path.display()));
    assert!(e.contains("no tensors under `params.`"), "{e}");
}

#[test]
fn gst_inspect_shows_metadata_and_every_property() {
    // The cdylib next to this test binary (target/<profile>/), loaded by a fresh registry with no
    // LD_LIBRARY_PATH: this also proves the rpath to libtorch.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let so = profile_dir.join("libgstgpen.so");
    assert!(so.exists(), "{} not built", so.display());
    let registry = common::scratch("inspect").join("registry.bin");
    let out = std::process::Command::new("gst-inspect-1.0")
        .arg("gpenfilter")
        .env("GST_PLUGIN_PATH", profile_dir)
        .env("GST_REGISTRY", &registry)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("gst-inspect-1.0 is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["GPEN face restoration", "Filter/Effect/Video", "gst-plugin-gpen", "Restores faces with GPEN"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    for (property, default) in [
        ("model ", "Default: null"),
        ("model-key", "Default: null"),
        ("size", "Default: 512"),
        ("fp16", "Default: false"),
        ("device", "Default: \"auto\""),
        ("aligned", "Default: false"),
        ("detector-model", "Default: null"),
        ("detector-variant", "Default: 0, \"auto\""),
        ("detection-threshold", "Range: 0 - 1 Default: 0.9"),
        ("detection-size", "Range: 0 - 16384 Default: 1920"),
        ("max-faces", "Range: 0 - 4096 Default: 32"),
        ("min-face-size", "Range: 0 - 16384 Default: 16"),
        ("alpha", "Range: 0 - 1 Default: 1"),
        ("color", "Default: 0, \"auto\""),
        ("temporal-consistency", "Range: 0 - 1 Default: 0.8"),
        ("face-batch", "Range: 1 - 256 Default: 4"),
        ("batch-latency", "Range: 0 - 120 Default: 0"),
        ("overlap", "Default: true"),
        ("vram-budget", "Range: 0 - 4294967295 Default: 0"),
        ("memory-policy", "Default: 0, \"degrade\""),
        ("post-messages", "Default: false"),
        ("upscale", "Default: 1, \"1\""),
        ("upscaler-model", "Default: null"),
        ("tile-size", "Range: 0 - 65536 Default: 0"),
        ("tile-overlap", "Range: 0 - 4096 Default: 32"),
        ("mask ", "Default: 0, \"auto\""),
        ("parse-model", "Default: null"),
        ("mask-regions", "Default: 0x00001dfe"),
        ("face-metas", "Default: true"),
        ("faces-from", "Default: 0, \"detector\""),
        ("restore ", "Default: true"),
    ] {
        let at = text.find(&format!("  {property}")).unwrap_or_else(|| panic!("no property {property}"));
        let block: String = text[at..].lines().take(3).collect::<Vec<_>>().join(" ");
        let block = block.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(block.contains(default), "{property}: {block}");
        assert!(
            block.contains("changeable only in NULL or READY state")
                || block.contains("changeable in NULL, READY, PAUSED or PLAYING state"),
            "{property}: {block}"
        );
    }
    for size in ["(256)", "(512)", "(1024)", "(2048)"] {
        assert!(text.contains(size), "size value {size} not listed");
    }

    let dynamic = std::process::Command::new("readelf").args(["-d"]).arg(&so).output().unwrap();
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(dynamic.contains("RUNPATH") && dynamic.contains("libtorch"), "{dynamic}");
    // The CUDA backend is opened at run time where a driver exists (src/cuda.rs), not linked.
    assert!(!dynamic.contains("libtorch_cuda.so"), "libtorch_cuda linked:\n{dynamic}");
}

#[test]
fn no_panic_when_a_frame_cannot_be_restored() {
    // A 1x1 frame is upscaled to the model size and back: it must still work, not crash.
    let dir = common::scratch("tiny-frame");
    let out = dir.join("out.rgb");
    run(&format!(
        "videotestsrc num-buffers=2 ! video/x-raw,format=RGB,width=1,height=1 ! gpenfilter aligned=true size=256 model={} \
         device=cpu ! filesink location={}",
        fixture("gpen-256-tiny.pth").display(),
        out.display()
    ))
    .unwrap();
    assert_eq!(std::fs::metadata(out).unwrap().len(), 2 * 4); // 1 pixel, rows padded to 4 bytes
}

#[test]
fn a_buffer_smaller_than_its_caps_passes_through_counted_and_said() {
    init();
    // RGB rows are padded to 4 bytes: a 6x4 frame needs 4 rows of 20 bytes, not 72 bytes.
    let (pipeline, src, sink) = common::app_pipeline(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width=6,height=4,framerate=30/1 ! gpenfilter name=g size=256 \
         model={} detector-model={} device=cpu ! appsink name=sink sync=false wait-on-eos=false",
        fixture("gpen-256-tiny.pth").display(),
        common::detector().display()
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let short: Vec<u8> = (0..72).map(|i| i as u8).collect();
    for i in 0..3 {
        let mut b = gst::Buffer::from_slice(short.clone());
        b.get_mut().unwrap().set_pts(gst::ClockTime::from_mseconds(33 * i));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let mut warnings = Vec::new();
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            gst::MessageView::Warning(w) => warnings.push(format!("{} {:?}", w.error(), w.debug())),
            _ => {}
        }
    }
    let mut out = Vec::new();
    while let Some(s) = sink.try_pull_sample(gst::ClockTime::ZERO) {
        out.push(s.buffer().unwrap().map_readable().unwrap().to_vec());
    }
    let stats = pipeline.by_name("g").unwrap().property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(out, vec![short; 3], "each frame goes out as it came");
    assert_eq!(common::count(&stats, "frames-passed-through"), 3, "{stats}");
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().all(|w| w.contains("72 bytes") && w.contains("needs 80") && w.contains("videoconvert")), "{warnings:?}");
}

#[test]
fn an_upscaler_model_without_upscaling_is_said_to_be_ignored() {
    init();
    let (model, detector) = (common::gpen_fixture("gpen-256-tiny.pth"), common::detector());
    let props = [
        ("model", model.to_str().unwrap()),
        ("size", "256"),
        ("device", "cpu"),
        ("detector-model", detector.to_str().unwrap()),
        ("upscaler-model", "/nonexistent/realesrnet_x2.pth"),
    ];
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 64, 48).build().unwrap();
    let frames = [(vec![0u8; 64 * 48 * 3], gst_video::VideoBufferFlags::empty())];
    let (out, _, _, messages) = common::run_buffers(&info.to_caps().unwrap(), &props, &frames);
    assert_eq!(out.len(), 1, "{messages:#?}");
    assert!(messages.iter().any(|m| m.starts_with("warning") && m.contains("upscaler-model") && m.contains("upscale=2")), "{messages:#?}");
}
