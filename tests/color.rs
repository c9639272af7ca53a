//! The colour restored faces are pasted in (`color`): black-and-white frames stay exactly so under
//! `auto`, colour frames get GPEN's colours, and `source` keeps the input's chroma under the
//! restored luminance. The tiny random GPEN colourises whatever it restores, so every premise is
//! checked against `restored`.

mod common;

use gst::prelude::*;
use gstgpen::restorer::{ColorMode, LiveSettings, Outcome, PackedLayout, PasteReport, Restorer, RestorerSettings, UpscaleSettings};

fn restorer(color: ColorMode) -> Restorer {
    Restorer::new(&common::tiny_settings(LiveSettings { color, ..Default::default() })).unwrap()
}

fn image(name: &str) -> (Vec<u8>, usize, usize) {
    common::decode_image(&common::shared().join("media/images").join(name))
}

/// BT.601 luma of a packed RGB pixel, in levels.
fn luma(p: &[u8]) -> f64 {
    0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
}

/// The frame in black and white: R = G = B = its rounded luma (what `videobalance saturation=0`
/// or a black-and-white transfer gives).
fn black_and_white(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks(3).flat_map(|p| [luma(p).round() as u8; 3]).collect()
}

/// The largest difference between two channels of a pixel.
fn spread(p: &[u8]) -> u8 {
    p.iter().max().unwrap() - p.iter().min().unwrap()
}

/// Pixels whose channels differ by more than 2 levels (the measure of colour).
fn coloured(rgb: &[u8]) -> usize {
    rgb.chunks(3).filter(|p| spread(p) > 2).count()
}

/// The faces of `input` found on `found_on` (the input itself unless given), restored under
/// `color`: the output, the paste report, the faces pasted as luminance only.
fn restore(color: ColorMode, input: &[u8], found_on: Option<&[u8]>, (w, h): (usize, usize)) -> (Vec<u8>, PasteReport, u64) {
    let mut r = restorer(color);
    let layout = PackedLayout::rgb(w, h);
    let faces = r.detect(found_on.unwrap_or(input), layout).unwrap().faces;
    assert!(!faces.is_empty());
    let d = r.with_faces(input, layout, faces).unwrap();
    let mut out = input.to_vec();
    let report = r.restore_faces(&d, &mut out, layout).unwrap();
    let grey = r.stream.faces_grey().unwrap();
    (out, report, grey)
}

/// The packed RGB pixels of `rgb` (`w` wide) inside each face box of `faces`, shrunk by a tenth
/// on each side (well inside the paste masks).
fn face_pixels<'a>(rgb: &'a [u8], w: usize, boxes: &[[f32; 4]]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    for b in boxes {
        let (bw, bh) = (b[2] - b[0], b[3] - b[1]);
        let (x0, x1) = ((b[0] + bw / 10.0).max(0.0) as usize, (b[2] - bw / 10.0) as usize);
        let (y0, y1) = ((b[1] + bh / 10.0).max(0.0) as usize, (b[3] - bh / 10.0) as usize);
        for y in y0..y1 {
            for x in x0..x1.min(w) {
                out.push(&rgb[(y * w + x) * 3..(y * w + x) * 3 + 3]);
            }
        }
    }
    out
}

fn boxes(input: &[u8], (w, h): (usize, usize)) -> Vec<[f32; 4]> {
    restorer(ColorMode::Restored).detect(input, PackedLayout::rgb(w, h)).unwrap().faces.iter().map(|f| f.bbox).collect()
}

#[test]
fn a_black_and_white_frame_stays_exactly_black_and_white_under_auto() {
    // A colour photo made black and white, and a black-and-white photograph (exactly grey).
    for name in ["two_people.jpg", "solvay_conference_1927.png"] {
        let (rgb, w, h) = image(name);
        let bw = black_and_white(&rgb);
        let (auto, report, grey) = restore(ColorMode::Auto, &bw, None, (w, h));
        let (gpen, _, _) = restore(ColorMode::Restored, &bw, None, (w, h));
        let changed = auto.chunks(3).zip(bw.chunks(3)).filter(|(a, b)| a != b).count();
        let worst = auto.chunks(3).map(spread).max().unwrap();
        println!(
            "{name}: {} faces; coloured pixels (channels > 2 levels apart): {} with restored, {} with auto \
             (largest spread {worst}); {changed} pixels restored",
            report.restored,
            coloured(&gpen),
            coloured(&auto)
        );
        // The premise: GPEN's colours on a black-and-white frame.
        assert!(coloured(&gpen) > 1000 * report.restored, "{name}: restored gave {} coloured pixels", coloured(&gpen));
        assert_eq!(worst, 0, "{name}: every pixel R = G = B under auto");
        assert!(changed > 200 * report.restored, "{name}: the faces were restored all the same ({changed} pixels)");
        assert_eq!(grey, report.restored as u64, "{name}: every face counted as pasted in luminance only");
    }
}

#[test]
fn a_colour_frame_gets_gpens_colours_under_auto() {
    for name in ["two_people.jpg", "astronaut.png"] {
        let (rgb, w, h) = image(name);
        let (auto, report, grey) = restore(ColorMode::Auto, &rgb, None, (w, h));
        let (gpen, _, _) = restore(ColorMode::Restored, &rgb, None, (w, h));
        assert!(report.restored > 0);
        assert!(auto == gpen, "{name}: auto and restored differ on a colour frame");
        assert_eq!(grey, 0, "{name}");
        assert!(auto != rgb, "{name}: the faces were restored");
    }
}

#[test]
fn a_colour_face_in_a_black_and_white_frame_is_restored_in_colour() {
    // A colourised insert: the frame black and white but for the box of one face (the one on
    // the right); the faces are found on the colour photo, as they are on both.
    let (rgb, w, h) = image("two_people.jpg");
    let mut faces = boxes(&rgb, (w, h));
    assert_eq!(faces.len(), 2, "{faces:?}");
    faces.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (grey_face, colour_face) = (faces[0], faces[1]);
    let mut insert = black_and_white(&rgb);
    let inside = |b: [f32; 4], x: usize, y: usize| (x as f32) >= b[0] && (x as f32) < b[2] && (y as f32) >= b[1] && (y as f32) < b[3];
    for y in 0..h {
        for x in 0..w {
            if inside(colour_face, x, y) {
                insert[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&rgb[(y * w + x) * 3..(y * w + x) * 3 + 3]);
            }
        }
    }
    let (auto, report, grey) = restore(ColorMode::Auto, &insert, Some(&rgb), (w, h));
    let (gpen, _, _) = restore(ColorMode::Restored, &insert, Some(&rgb), (w, h));
    assert_eq!((report.restored, grey), (2, 1), "one face pasted in luminance only");
    let at = |img: &[u8], b| face_pixels(img, w, &[b]).into_iter().flatten().copied().collect::<Vec<u8>>();
    assert_eq!(at(&auto, colour_face), at(&gpen, colour_face), "the colour face as GPEN restored it");
    assert!(at(&auto, grey_face).chunks(3).all(|p| spread(p) == 0), "the black-and-white face stays so");
    assert!(coloured(&at(&gpen, grey_face)) > 1000, "the premise: GPEN colours the black-and-white face");
}

#[test]
fn source_keeps_the_inputs_chroma_under_the_restored_luminance() {
    let (rgb, w, h) = image("two_people.jpg");
    let (source, report, grey) = restore(ColorMode::Source, &rgb, None, (w, h));
    let (gpen, _, _) = restore(ColorMode::Restored, &rgb, None, (w, h));
    assert_eq!((report.restored, grey), (2, 0));
    let faces = boxes(&rgb, (w, h));
    let (input, source, gpen) = (face_pixels(&rgb, w, &faces), face_pixels(&source, w, &faces), face_pixels(&gpen, w, &faces));
    // Chroma as R - G and B - G: the same in every luma.
    let chroma = |p: &[u8]| [p[0] as i32 - p[1] as i32, p[2] as i32 - p[1] as i32];
    let chroma_error = |out: &[&[u8]]| -> (f64, i32) {
        let d: Vec<i32> =
            out.iter().zip(&input).flat_map(|(o, i)| chroma(o).into_iter().zip(chroma(i)).map(|(a, b)| (a - b).abs())).collect();
        (d.iter().sum::<i32>() as f64 / d.len() as f64, *d.iter().max().unwrap())
    };
    let mean_luma_diff = |a: &[&[u8]], b: &[&[u8]]| a.iter().zip(b).map(|(x, y)| (luma(x) - luma(y)).abs()).sum::<f64>() / a.len() as f64;
    let ((mean, max), (gpen_mean, _)) = (chroma_error(&source), chroma_error(&gpen));
    let (lift, off) = (mean_luma_diff(&source, &input), mean_luma_diff(&source, &gpen));
    // Each channel gets the same lift and is rounded on its own: the chroma is exact, but where
    // a channel would leave 0..255 (the tiny network's lifts are large: 40 levels on average).
    let unclipped: Vec<(&[u8], &[u8])> =
        source.iter().zip(&input).filter(|(o, _)| !o.contains(&0) && !o.contains(&255)).map(|(o, i)| (*o, *i)).collect();
    let off_in_range = unclipped.iter().filter(|(o, i)| chroma(o) != chroma(i)).count();
    println!(
        "source: {} face pixels; chroma error mean {mean:.3}, max {max} levels (restored: mean {gpen_mean:.2}); {off_in_range} \
         of {} unclipped pixels off; luma {lift:.2} levels from the input's, {off:.3} from the restored's",
        input.len(),
        unclipped.len()
    );
    assert!(gpen_mean > 5.0, "the premise: GPEN changes the colours ({gpen_mean:.2})");
    assert!(unclipped.len() > input.len() * 9 / 10);
    assert_eq!(off_in_range, 0, "the source's chroma exactly, wherever no channel clips");
    assert!(mean < 0.5, "chroma error mean {mean:.3} levels");
    assert!(lift > 3.0, "a restoration happened: luma moved {lift:.2} levels");
    assert!(off < 1.0, "the luma is the restored one: {off:.3} levels off");
}

#[test]
fn color_may_change_between_frames() {
    // A live setting: the same black-and-white frame, in GPEN's colours, then black and white.
    let (rgb, w, h) = image("two_people.jpg");
    let bw = black_and_white(&rgb);
    let layout = PackedLayout::rgb(w, h);
    let mut r = restorer(ColorMode::Restored);
    let frame = |r: &mut Restorer| {
        let mut out = bw.clone();
        r.process(&mut out, layout, 1.0 / 30.0).unwrap();
        out
    };
    let first = frame(&mut r);
    r.set_live(LiveSettings { color: ColorMode::Auto, ..Default::default() }).unwrap();
    let second = frame(&mut r);
    assert!(coloured(&first) > 1000, "{}", coloured(&first));
    assert_eq!(coloured(&second), 0);
    assert!(second.chunks(3).all(|p| spread(p) == 0) && second != bw);
    assert_eq!(r.stream.faces_grey().unwrap(), 2);
}

#[test]
fn the_element_takes_color_and_counts_grey_faces() {
    let (rgb, w, h) = image("two_people.jpg");
    // GStreamer pads RGB rows to 4 bytes: a width that is a multiple of 4 needs none.
    let (w, bw) = (w / 4 * 4, black_and_white(&rgb));
    let bw: Vec<u8> = bw.chunks(bw.len() / h).flat_map(|row| row[..w * 3].to_vec()).collect();
    let (model, detector) = (common::gpen_fixture("gpen-256-tiny.pth"), common::detector());
    let run = |color: &str| {
        let props = [
            ("model", model.to_str().unwrap()),
            ("size", "256"),
            ("device", "cpu"),
            ("detector-model", detector.to_str().unwrap()),
            ("color", color),
        ];
        let (out, stats, _) = common::run_element(&props, std::slice::from_ref(&bw), w, h);
        (out.into_iter().next().unwrap(), common::count(&stats, "faces-restored"), common::count(&stats, "faces-grey"))
    };
    let (auto, restored, grey) = run("auto");
    assert_eq!((restored, grey), (2, 2));
    assert!(auto.chunks(3).all(|p| spread(p) == 0) && auto != bw);
    let (gpen, restored, grey) = run("restored");
    assert_eq!((restored, grey), (2, 0));
    assert!(coloured(&gpen) > 1000);
    // The default is auto.
    let e = gst::ElementFactory::make("gpenfilter").build().unwrap();
    let nick = |e: &gst::Element| gst::glib::EnumValue::from_value(&e.property_value("color")).unwrap().1.nick().to_owned();
    assert_eq!(nick(&e), "auto");
    e.set_property_from_str("color", "source");
    assert_eq!(nick(&e), "source");
}

#[test]
fn an_upscaling_network_does_not_colour_a_black_and_white_frame_under_auto() {
    // The tiny RRDBNet mixes the channels as any network may; bicubic upscaling keeps R = G = B.
    let (rgb, w, h) = image("two_people.jpg");
    let bw = black_and_white(&rgb);
    let run = |color: ColorMode, input: &[u8]| {
        let mut r = Restorer::new(&RestorerSettings {
            upscale: UpscaleSettings {
                factor: 2,
                model: Some(common::shared().join("fixtures/rrdbnet/rrdbnet-x2-tiny.pth")),
                ..Default::default()
            },
            ..common::tiny_settings(LiveSettings { color, ..Default::default() })
        })
        .unwrap();
        let d = r.begin(input, PackedLayout::rgb(w, h), 1.0 / 30.0).unwrap();
        let mut out = vec![0u8; w * h * 12];
        let outcome = r.finish(d, Some((&mut out, &PackedLayout::rgb(2 * w, 2 * h)))).unwrap();
        assert!(matches!(outcome, Outcome::Restored { faces: 2, .. }), "{outcome:?}");
        out
    };
    let (auto, gpen) = (run(ColorMode::Auto, &bw), run(ColorMode::Restored, &bw));
    println!("upscaled x2 by the tiny RRDBNet: {} coloured pixels with restored, {} with auto", coloured(&gpen), coloured(&auto));
    assert!(coloured(&gpen) > w * h, "the premise: the network colours the frame");
    assert!(auto.chunks(3).all(|p| spread(p) == 0));
    assert!(run(ColorMode::Auto, &rgb) == run(ColorMode::Restored, &rgb), "a colour frame as the network upscales it");
}
