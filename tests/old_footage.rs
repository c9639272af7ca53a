//! Footage as archives hold it, through the element (tiny GPEN-256, the real detector): woven
//! interlaced frames restored field by field, and non-square pixels restored in display
//! geometry.

mod common;

use gst_video::{VideoBufferFlags as Flags, VideoFieldOrder, VideoInterlaceMode};
use image::imageops::FilterType;

/// The element's properties for the tiny model, plus `extra`.
fn props(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    let mut p = vec![
        ("model", common::gpen_fixture("gpen-256-tiny.pth").display().to_string()),
        ("detector-model", common::detector().display().to_string()),
        ("size", "256".into()),
        ("device", "cpu".into()),
        // A single picture: no smoothing towards a track's history.
        ("temporal-consistency", "0".into()),
    ];
    p.extend(extra.iter().map(|&(k, v)| (k, v.to_string())));
    p
}

fn run(caps: &gst::Caps, props: &[(&'static str, String)], frames: &[(Vec<u8>, Flags)]) -> (Vec<Vec<u8>>, gst::Structure, Vec<String>) {
    let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (out, stats, _, messages) = common::run_buffers(caps, &props, frames);
    (out, stats, messages)
}

fn caps(w: usize, h: usize, par: (i32, i32), mode: VideoInterlaceMode, order: VideoFieldOrder) -> gst::Caps {
    common::init();
    gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w as u32, h as u32)
        .fps(gst::Fraction::new(25, 1))
        .par(gst::Fraction::new(par.0, par.1))
        .interlace_mode(mode)
        .field_order(order)
        .build()
        .unwrap()
        .to_caps()
        .unwrap()
}

/// The astronaut photo (512 x 512, one face).
fn astronaut() -> (Vec<u8>, usize, usize) {
    common::decode_image(&common::shared().join("media/images/astronaut.png"))
}

/// A woven frame: the even lines of `top`, the odd lines of `bottom` (as `interlace` makes
/// from two pictures).
fn weave(top: &[u8], bottom: &[u8], w: usize, h: usize) -> Vec<u8> {
    (0..h).flat_map(|y| if y % 2 == 0 { &top[y * w * 3..(y + 1) * w * 3] } else { &bottom[y * w * 3..(y + 1) * w * 3] }).copied().collect()
}

/// Pixels of the odd lines that are not black.
fn lit_odd_lines(frame: &[u8], w: usize, h: usize) -> (usize, usize) {
    let lines: Vec<usize> = (1..h).step_by(2).filter(|y| frame[y * w * 3..(y + 1) * w * 3].iter().any(|&v| v != 0)).collect();
    let pixels = lines.iter().map(|y| frame[y * w * 3..(y + 1) * w * 3].chunks(3).filter(|p| p.iter().any(|&v| v != 0)).count()).sum();
    (lines.len(), pixels)
}

#[test]
fn a_woven_frame_is_restored_field_by_field_and_a_field_without_faces_keeps_its_lines() {
    let (photo, w, h) = astronaut();
    let woven = weave(&photo, &vec![0; photo.len()], w, h);
    let interleaved = caps(w, h, (1, 1), VideoInterlaceMode::Interleaved, VideoFieldOrder::TopFieldFirst);
    for latency in ["0", "2"] {
        let (out, stats, _) = run(&interleaved, &props(&[("batch-latency", latency)]), &[(woven.clone(), Flags::empty())]);
        assert_eq!(out.len(), 1);
        assert!(common::count(&stats, "faces-restored") >= 1, "batch-latency {latency}: {stats}");
        // The black field, bit for bit; the face's field restored.
        assert_eq!(lit_odd_lines(&out[0], w, h), (0, 0), "batch-latency {latency}: the black field was written");
        let changed = (0..h).step_by(2).filter(|y| out[0][y * w * 3..(y + 1) * w * 3] != woven[y * w * 3..(y + 1) * w * 3]).count();
        assert!(changed > 40, "batch-latency {latency}: {changed} lines of the face's field changed");
    }
    // As one picture (fields=frame), the face is pasted across both fields.
    let (out, _, _) = run(&interleaved, &props(&[("fields", "frame")]), &[(woven.clone(), Flags::empty())]);
    let (lines, pixels) = lit_odd_lines(&out[0], w, h);
    println!("fields=frame: {lines} lines, {pixels} pixels of the black field written");
    assert!(lines > 20, "restored as a frame, the black field should have been written: {lines} lines");
}

#[test]
fn mixed_streams_follow_each_buffers_flags_and_the_field_order() {
    let (photo, w, h) = astronaut();
    let black = vec![0; photo.len()];
    let mixed = caps(w, h, (1, 1), VideoInterlaceMode::Mixed, VideoFieldOrder::Unknown);
    // Face in the bottom field (odd lines), black top field; bottom field first.
    let woven = weave(&black, &photo, w, h);
    let frames = [(woven.clone(), Flags::INTERLACED), (woven.clone(), Flags::empty())];
    let (out, stats, _) = run(&mixed, &props(&[("post-faces", "true")]), &frames);
    assert_eq!(out.len(), 2, "{stats}");
    let lit_even = |f: &[u8]| (0..h).step_by(2).filter(|y| f[y * w * 3..(y + 1) * w * 3].iter().any(|&v| v != 0)).count();
    // Flagged interlaced: the black top field untouched. Not flagged: a frame, pasted across.
    assert_eq!(lit_even(&out[0]), 0, "interlaced buffer: the black field was written");
    assert!(lit_even(&out[1]) > 20, "progressive buffer of a mixed stream: restored as a frame");
    assert!(out[0] != woven, "the face's field was restored");
}

#[test]
fn the_field_order_sets_the_order_in_which_fields_are_followed() {
    let (photo, w, h) = astronaut();
    let woven = weave(&photo, &photo, w, h);
    for (order, flags, first) in [
        (VideoFieldOrder::TopFieldFirst, Flags::empty(), "top"),
        (VideoFieldOrder::BottomFieldFirst, Flags::empty(), "bottom"),
        (VideoFieldOrder::Unknown, Flags::TFF, "top"),
        (VideoFieldOrder::Unknown, Flags::empty(), "bottom"),
    ] {
        let c = caps(w, h, (1, 1), VideoInterlaceMode::Interleaved, order);
        let fields = faces_messages(&c, &[(woven.clone(), flags)]);
        let want = if first == "top" { ["top", "bottom"] } else { ["bottom", "top"] };
        assert_eq!(fields, want, "{order:?} {flags:?}");
    }
}

#[test]
fn fields_are_followed_as_consecutive_pictures_on_one_track() {
    let (photo, w, h) = astronaut();
    let woven = weave(&photo, &photo, w, h);
    let c = caps(w, h, (1, 1), VideoInterlaceMode::Interleaved, VideoFieldOrder::TopFieldFirst);
    let frames: Vec<_> = (0..3).map(|_| (woven.clone(), Flags::empty())).collect();
    let (out, stats, _) = run(&c, &props(&[("restore", "false")]), &frames);
    assert_eq!(out.len(), 3);
    // Six pictures, one face each, all on the track the first field started.
    assert_eq!((common::count(&stats, "faces-detected"), common::count(&stats, "tracks-started")), (6, 1), "{stats}");
}

/// The `field` of each `gpenfilter-faces` message, in the order they were posted.
fn faces_messages(caps: &gst::Caps, frames: &[(Vec<u8>, Flags)]) -> Vec<String> {
    use gst::prelude::*;
    common::init();
    let pipeline = gst::parse::launch("appsrc name=src format=time ! gpenfilter name=g ! fakesink sync=false").unwrap();
    let pipeline = pipeline.downcast::<gst::Pipeline>().unwrap();
    let src = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    src.set_caps(Some(caps));
    let g = pipeline.by_name("g").unwrap();
    // Detect-only: the messages are what is looked at.
    for (k, v) in props(&[("post-faces", "true"), ("restore", "false")]) {
        g.set_property_from_str(k, &v);
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    for (i, (f, flags)) in frames.iter().enumerate() {
        let mut b = gst::Buffer::from_slice(f.clone());
        let m = b.get_mut().unwrap();
        m.set_pts(gst::ClockTime::from_mseconds(40 * i as u64));
        m.set_flags(gst::BufferFlags::from_bits_retain(flags.bits()));
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let mut fields = Vec::new();
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Element(e) if e.structure().is_some_and(|s| s.name() == "gpenfilter-faces") => {
                fields.push(e.structure().unwrap().get::<String>("field").unwrap());
            }
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    fields
}

#[test]
fn one_field_per_buffer_is_refused_saying_what_to_do() {
    let (photo, w, h) = astronaut();
    let alternate = caps(w, h / 2, (1, 1), VideoInterlaceMode::Alternate, VideoFieldOrder::Unknown);
    let (out, _, messages) = run(&alternate, &props(&[]), &[(photo[..w * 3 * (h / 2)].to_vec(), Flags::TFF)]);
    assert!(out.is_empty());
    assert!(
        messages.iter().any(|m| m.starts_with("warning") && m.contains("interlace-mode=alternate") && m.contains("deinterlace")),
        "{messages:#?}"
    );
    assert!(messages.iter().any(|m| m.starts_with("error")), "negotiation should fail: {messages:#?}");
}

/// `rgb` (`w x h`) resized to `nw x nh`.
fn resized(rgb: &[u8], (w, h): (usize, usize), (nw, nh): (usize, usize)) -> Vec<u8> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb.to_vec()).unwrap();
    image::imageops::resize(&img, nw as u32, nh as u32, FilterType::Triangle).into_raw()
}

#[test]
fn non_square_pixels_are_restored_as_the_square_picture_is() {
    // The astronaut as an HDV-like camera stores it: pixels 4/3 as wide as tall.
    let (photo, w, h) = astronaut();
    let ws = w * 3 / 4;
    let stored = resized(&photo, (w, h), (ws, h));
    let square = caps(w, h, (1, 1), VideoInterlaceMode::Progressive, VideoFieldOrder::Unknown);
    let (sq, _, _) = run(&square, &props(&[]), &[(photo.clone(), Flags::empty())]);
    // What a square-pixel restoration looks like in stored pixels.
    let want = resized(&sq[0], (w, h), (ws, h));
    let mut errors = Vec::new();
    for par in [(4, 3), (1, 1)] {
        let c = caps(ws, h, par, VideoInterlaceMode::Progressive, VideoFieldOrder::Unknown);
        let (out, stats, _) = run(&c, &props(&[]), &[(stored.clone(), Flags::empty())]);
        assert_eq!(common::count(&stats, "faces-restored"), 1, "{par:?}: {stats}");
        // Inside the face, where the square restoration changed the picture.
        let (mut sum, mut n) = (0u64, 0u64);
        for i in (0..stored.len()).filter(|&i| want[i].abs_diff(stored[i]) > 8) {
            sum += out[0][i].abs_diff(want[i]) as u64;
            n += 1;
        }
        errors.push(sum as f64 / n as f64);
        println!("pixel aspect {}/{}: {:.2} levels from the square restoration over {n} values", par.0, par.1, errors.last().unwrap());
    }
    // Measured: 1.40 against 28.31 levels.
    assert!(errors[0] < 3.0 && errors[0] < 0.2 * errors[1], "display geometry {:.2} levels, stored geometry {:.2}", errors[0], errors[1]);
}
