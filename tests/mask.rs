//! The paste mask as a user meets it: `mask=auto|parse|rectangle`, `parse-model`,
//! `mask-regions`; bad parsing checkpoints refused at start with the file and the problem; the
//! rectangle as a rung of the memory ladder.

mod common;

use gst::prelude::*;
use gstgpen::restorer::{
    DeviceSpec, FaceSettings, MaskMode, MaskRegions, MaskSettings, MemorySettings, Outcome, PackedLayout, Restorer, RestorerSettings,
};

fn parsenet() -> std::path::PathBuf {
    common::shared().join("fixtures/parsenet/parsenet-tiny.pth")
}

fn settings(mask: MaskSettings) -> RestorerSettings {
    RestorerSettings {
        model: Some(common::gpen_fixture("gpen-512-tiny.pth")),
        size: 512,
        device: DeviceSpec::Cpu,
        faces: FaceSettings { detector_model: Some(common::detector()), mask, ..Default::default() },
        ..Default::default()
    }
}

/// The error a pipeline posts when gpenfilter cannot start with `properties`.
fn start_error(properties: &str) -> String {
    common::init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=64 ! gpenfilter device=cpu size=512 model={} \
         detector-model={} {properties} ! fakesink",
        common::gpen_fixture("gpen-512-tiny.pth").display(),
        common::detector().display()
    ))
    .unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let mut error = None;
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Error(e) => {
                error = Some(format!("{} ({})", e.error(), e.debug().unwrap_or_default()));
                break;
            }
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let e = error.unwrap_or_else(|| panic!("{properties}: the pipeline must not start"));
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn auto_uses_the_parsing_mask_only_where_a_checkpoint_is_found() {
    // The GPEN fixtures' folder holds no ParseNet-latest.pth: auto falls back to the rectangle.
    let r = Restorer::new(&settings(MaskSettings::default())).unwrap();
    assert_eq!(r.parse_model(), None);
    assert!(!r.plan().parse);
    // Named, it is used, and the plan says so.
    let r = Restorer::new(&settings(MaskSettings { parse_model: Some(parsenet()), ..Default::default() })).unwrap();
    assert_eq!(r.parse_model(), Some(parsenet().as_path()));
    assert!(r.plan().parse && r.plan().to_string().contains("mask=parse"), "{}", r.plan());
    // In a folder beside the GPEN model, under its official name.
    let dir = common::scratch("parse-folder");
    std::fs::copy(common::gpen_fixture("gpen-512-tiny.pth"), dir.join("GPEN-BFR-512.pth")).unwrap();
    std::fs::copy(parsenet(), dir.join(gstgpen::restorer::PARSE_FILE)).unwrap();
    let r = Restorer::new(&RestorerSettings { model: Some(dir.clone()), ..settings(MaskSettings::default()) }).unwrap();
    assert_eq!(r.parse_model(), Some(dir.join(gstgpen::restorer::PARSE_FILE).as_path()));
    // rectangle never loads it.
    let r =
        Restorer::new(&RestorerSettings { model: Some(dir), ..settings(MaskSettings { mode: MaskMode::Rectangle, ..Default::default() }) })
            .unwrap();
    assert_eq!(r.parse_model(), None);
}

#[test]
fn bad_parsing_checkpoints_are_refused_at_start_by_name() {
    let e = start_error("mask=parse");
    assert!(e.contains("ParseNet-latest.pth") && e.contains("property parse-model") && e.contains("fixtures/gpen"), "{e}");
    let e = start_error("mask=parse parse-model=/nonexistent/parser.pth");
    assert!(e.contains("/nonexistent/parser.pth") && e.contains("no face-parsing checkpoint"), "{e}");
    // A parse-model that is named but missing is an error with auto too.
    let e = start_error("parse-model=/nonexistent/parser.pth");
    assert!(e.contains("/nonexistent/parser.pth"), "{e}");
    let gpen = common::gpen_fixture("gpen-256-tiny.pth");
    let e = start_error(&format!("mask=parse parse-model={}", gpen.display()));
    assert!(e.contains("gpen-256-tiny.pth") && e.contains("ParseNet"), "{e}");
    let dir = common::scratch("bad-parse");
    let bytes = std::fs::read(parsenet()).unwrap();
    let truncated = dir.join("truncated-parsenet.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = start_error(&format!("mask=parse parse-model={}", truncated.display()));
    assert!(e.contains("truncated-parsenet.pth") && e.contains("corrupt or truncated"), "{e}");
}

#[test]
fn regions_choose_what_the_restored_face_replaces_and_memory_drops_parsing_first() {
    let (input, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let layout = PackedLayout::rgb(w, h);
    let changed = |regions: MaskRegions| {
        let mut r = Restorer::new(&settings(MaskSettings { mode: MaskMode::Parse, parse_model: Some(parsenet()), regions })).unwrap();
        let d = r.detect(&input, layout).unwrap();
        let mut out = input.clone();
        r.restore_faces(&d, &mut out, layout).unwrap();
        out.chunks(3).zip(input.chunks(3)).filter(|(a, b)| a != b).count()
    };
    let (gpen, skin_only, nothing) = (changed(MaskRegions::GPEN), changed(MaskRegions(1 << 1)), changed(MaskRegions(0)));
    println!("pixels changed: GPEN's regions {gpen}, skin only {skin_only}, no region {nothing}");
    assert!(nothing == 0 && skin_only > 0 && skin_only < gpen, "{gpen} {skin_only} {nothing}");

    // A budget that fits the rectangle but not the parser: the ladder drops the parsing mask
    // (after half precision and smaller batches, before smaller sizes) and the frame is restored.
    let probe =
        Restorer::new(&settings(MaskSettings { mode: MaskMode::Parse, parse_model: Some(parsenet()), ..Default::default() })).unwrap();
    let last = gstgpen::memory::Plan { half: true, face_batch: 1, ..probe.plan() };
    let (with, without) = (
        probe.estimate(&last, 1, (w as i64, h as i64)),
        probe.estimate(&gstgpen::memory::Plan { parse: false, ..last }, 1, (w as i64, h as i64)),
    );
    assert!(without < with);
    drop(probe);
    let budget = (without + (with - without) / 2).div_ceil(1 << 20);
    let mut r = Restorer::new(&RestorerSettings {
        memory: MemorySettings { budget_mib: budget, ..Default::default() },
        ..settings(MaskSettings { mode: MaskMode::Parse, parse_model: Some(parsenet()), ..Default::default() })
    })
    .unwrap();
    let mut out = input.clone();
    let outcome = r.process(&mut out, layout, 1.0 / 25.0).unwrap();
    assert!(matches!(outcome, Outcome::Restored { faces: 1, .. }), "{outcome:?}");
    assert!(!r.plan().parse && r.plan().half && r.plan().size == 512, "plan {}", r.plan());
    assert_eq!(r.parse_model(), None, "the parser is unloaded with its rung");
}

#[test]
fn the_element_pastes_through_the_parsing_mask() {
    common::init();
    let (input, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let (model, detector) = (common::gpen_fixture("gpen-512-tiny.pth"), common::detector());
    let run = |mask: &str| {
        let parse_model = parsenet();
        let props = [
            ("device", "cpu"),
            ("size", "512"),
            ("model", model.to_str().unwrap()),
            ("detector-model", detector.to_str().unwrap()),
            ("parse-model", parse_model.to_str().unwrap()),
            ("mask", mask),
        ];
        let (mut out, _, _) = common::run_element(&props, std::slice::from_ref(&input), w, h);
        assert_eq!(out.len(), 1);
        out.remove(0)
    };
    let (auto, parse, rect) = (run("auto"), run("parse"), run("rectangle"));
    assert_eq!(auto, parse, "auto uses the named parse-model");
    assert_ne!(parse, rect);
    assert_ne!(parse, input);
}

/// Restores the frames of a clip in order, as the element does; the outputs.
fn restore_clip(r: &mut Restorer, frames: &[Vec<u8>], layout: &PackedLayout) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|f| {
            let mut out = f.clone();
            let outcome = r.process(&mut out, layout, 1.0 / 25.0).unwrap();
            assert!(matches!(outcome, Outcome::Restored { faces: 1, .. }), "{outcome:?}");
            out
        })
        .collect()
}

#[test]
fn parsing_masks_follow_their_track_and_a_still_clip_stays_still() {
    let (photo, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let layout = PackedLayout::rgb(w, h);
    let parse = |smoothing: f64| {
        let mut s = settings(MaskSettings { mode: MaskMode::Parse, parse_model: Some(parsenet()), ..Default::default() });
        s.faces.live.smoothing = smoothing;
        Restorer::new(&s).unwrap()
    };
    // A still clip: every output frame is the same, with smoothing or without.
    let still = vec![photo.clone(); 4];
    for smoothing in [0.0, 0.5] {
        let out = restore_clip(&mut parse(smoothing), &still, &layout);
        assert!(out.windows(2).all(|p| p[0] == p[1]), "smoothing {smoothing}: a still clip changed");
    }
    // A face drifting by sub-pixel steps: the parser's classes flip where they are nearly tied;
    // following the track, the pasted mask changes less than the parser's.
    let picture = common::rgb_tensor(&photo, w, h);
    let frames: Vec<Vec<u8>> = common::motion::path(8).iter().map(|p| common::motion::render(&picture, p)).collect();
    let mut off = parse(0.0);
    restore_clip(&mut off, &frames, &layout);
    let mut on = parse(0.5);
    restore_clip(&mut on, &frames, &layout);
    let (off, on) = (off.mask_change().unwrap(), on.mask_change().unwrap());
    println!(
        "parsing mask change per frame, in aligned space: as parsed {:.4}, pasted {:.4} (smoothing 0.5), {} pairs",
        on.raw, on.pasted, on.pairs
    );
    assert_eq!(off.pairs, 7);
    assert_eq!(off.raw, off.pasted, "no smoothing: the masks as parsed");
    assert!(on.raw > 0.0 && on.pasted < 0.75 * on.raw, "{on:?}");
}
