//! Frames in the formats decoders give (NV12, I420, 4:2:2, 4:4:4, 10 bits, grey), restored in
//! their own format: conversions as GStreamer's `videoconvert` makes them (its converter, in
//! process), faces against the RGB path (`videoconvert ! gpenfilter ! videoconvert`), every
//! plane untouched away from the faces, and frames without faces neither written nor copied.
//! Needs `../shared` (the tiny GPEN, the detector, a photo).

mod common;

use gst_video::prelude::*;
use gst_video::{VideoFormat as F, VideoFrameRef, VideoInfo};
use gstgpen::gpenfilter::{frame_layout, planes};
use gstgpen::restorer::{frame, FrameLayout, LiveSettings, Matrix, PlanesMut, Restorer, Samples};
use tch::Device;

/// The info of a `format` frame of `extra` caps fields, rows padded by `pad` pixels.
fn info(format: F, (w, h): (usize, usize), extra: &str, pad: u32) -> VideoInfo {
    let caps = format!("video/x-raw, format={}, width={w}, height={h}, framerate=30/1{extra}", format.to_str());
    let caps: gst::Caps = caps.parse().unwrap();
    let mut info = VideoInfo::from_caps(&caps).unwrap();
    if pad > 0 {
        let mut align = gst_video::VideoAlignment::new(0, 0, 0, pad, &[0; 4]);
        info.align(&mut align).unwrap();
    }
    info
}

/// `buffer` of `from` converted to `to` by GStreamer's video converter (videoconvert's).
fn convert(buffer: &gst::Buffer, from: &VideoInfo, to: &VideoInfo) -> gst::Buffer {
    let converter = gst_video::VideoConverter::new(from, to, None).unwrap();
    let src = VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), from).unwrap();
    let mut out = gst::Buffer::with_size(to.size()).unwrap();
    {
        let mut dst = VideoFrameRef::from_buffer_ref_writable(out.get_mut().unwrap(), to).unwrap();
        converter.frame_ref(&src, &mut dst);
    }
    out
}

/// Packed RGB bytes as a buffer of `info`.
fn rgb_buffer(rgb: &[u8], (w, h): (usize, usize)) -> (gst::Buffer, VideoInfo) {
    let info = info(F::Rgb, (w, h), "", 0);
    let mut b = gst::Buffer::with_size(info.size()).unwrap();
    {
        let mut f = VideoFrameRef::from_buffer_ref_writable(b.get_mut().unwrap(), &info).unwrap();
        let stride = f.plane_stride()[0] as usize;
        let data = f.plane_data_mut(0).unwrap();
        for y in 0..h {
            data[y * stride..y * stride + 3 * w].copy_from_slice(&rgb[y * 3 * w..(y + 1) * 3 * w]);
        }
    }
    (b, info)
}

/// The RGB bytes of an RGB buffer of `info`, rows unpadded.
fn packed(buffer: &gst::Buffer, info: &VideoInfo) -> Vec<u8> {
    let f = VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), info).unwrap();
    let (w, stride) = (3 * info.width() as usize, f.plane_stride()[0] as usize);
    let data = f.plane_data(0).unwrap();
    (0..info.height() as usize).flat_map(|y| data[y * stride..y * stride + w].to_vec()).collect()
}

/// The samples of one component, as values (two-byte ones read little-endian, shifted down).
fn samples(plane: &[u8], s: &Samples) -> Vec<u16> {
    let mut out = Vec::with_capacity(s.width * s.height);
    for y in 0..s.height {
        for x in 0..s.width {
            let p = s.offset + y * s.stride + x * s.step;
            out.push(if s.wide { u16::from_le_bytes([plane[p], plane[p + 1]]) >> s.shift } else { plane[p] as u16 });
        }
    }
    out
}

/// Each component of a frame (luma first) as its samples.
fn components(buffer: &gst::Buffer, info: &VideoInfo) -> Vec<(Samples, Vec<u16>)> {
    let f = VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), info).unwrap();
    let FrameLayout::Yuv(l) = frame_layout(&f).unwrap() else { panic!("not Y'CbCr") };
    let p = planes(&f);
    std::iter::once(l.luma).chain(l.chroma.into_iter().flatten()).map(|s| (s, samples(p.0[s.plane], &s))).collect()
}

/// Mean and largest absolute difference of two sample lists.
fn differences(a: &[u16], b: &[u16]) -> (f64, u16) {
    let d: Vec<u16> = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).collect();
    (d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64, *d.iter().max().unwrap())
}

/// The formats and colorimetries compared with `videoconvert`.
const CASES: [(F, &str); 12] = [
    (F::Nv12, ", colorimetry=bt709, chroma-site=mpeg2"),
    (F::Nv12, ", colorimetry=bt601"),
    (F::I420, ", colorimetry=bt601, chroma-site=jpeg"),
    (F::I420, ", colorimetry=(string)1:4:0:0"),
    (F::I420, ", colorimetry=(string)1:3:5:1"),
    (F::Yv12, ", colorimetry=bt709"),
    (F::Nv21, ", colorimetry=bt709"),
    (F::Yuy2, ", colorimetry=bt601"),
    (F::Uyvy, ", colorimetry=bt709"),
    (F::Y42b, ", colorimetry=bt709"),
    (F::Y444, ", colorimetry=bt2020"),
    (F::I42010le, ", colorimetry=bt2020"),
];

fn photo() -> (Vec<u8>, (usize, usize)) {
    let (rgb, w, h) = common::decode_image(&common::shared().join("media/images/two_people.jpg"));
    // One column off: odd widths and heights (661 rows) with subsampled chroma.
    let w2 = w - 1;
    let rgb: Vec<u8> = (0..h).flat_map(|y| rgb[y * 3 * w..y * 3 * w + 3 * w2].to_vec()).collect();
    (rgb, (w2, h))
}

#[test]
fn frames_are_read_and_written_as_videoconvert_converts_them() {
    common::init();
    let (photo, size) = photo();
    // Saturated colours, where matrices differ most.
    let (w, h) = size;
    let ramps: Vec<u8> =
        (0..h).flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / w) as u8, (y * 255 / h) as u8, (255 - x * 255 / w) as u8])).collect();
    for ((format, extra), (rgb, image)) in
        CASES.iter().chain(&[(F::Gray8, "")]).flat_map(|c| [(c, (&photo, "photo")), (c, (&ramps, "ramps"))])
    {
        let (rgb_buf, rgb_info) = rgb_buffer(rgb, size);
        let name = format!("{}{extra} ({image})", format.to_str());
        // Rows padded past the width: strides are the caps' own, not the width's.
        let yuv_info = info(*format, size, extra, 13);
        let yuv = convert(&rgb_buf, &rgb_info, &yuv_info);
        let theirs = convert(&yuv, &yuv_info, &rgb_info);
        let f = VideoFrameRef::from_buffer_ref_readable(yuv.as_ref(), &yuv_info).unwrap();
        let layout = frame_layout(&f).unwrap();
        let ours = frame::to_tensor(planes(&f), layout, Device::Cpu).unwrap();
        let ours = common::rgb_bytes(&ours);
        let theirs = packed(&theirs, &rgb_info);
        let (mean, max) = common::level_diff(&ours, &theirs);
        let (ours_off, theirs_off) = (common::level_diff(&ours, rgb).0, common::level_diff(&theirs, rgb).0);
        eprintln!("{name}: read as RGB {mean:.3} levels from videoconvert's (max {max}); from the photo, ours {ours_off:.3}, videoconvert's {theirs_off:.3}");
        // videoconvert's 8-bit fixed-point arithmetic reads limited range up to ~2.5 levels dark on
        // average; ours is the same matrix and range in float, as close to the photo or closer.
        assert!(mean < 3.0, "{name}: read {mean:.3} levels off videoconvert's on average");
        assert!(ours_off <= theirs_off + 0.25, "{name}: read further from the photo ({ours_off:.3}) than videoconvert ({theirs_off:.3})");
        if let (FrameLayout::Yuv(mut wrong), "ramps") = (layout, image) {
            // The test tells matrices apart: the frame read with another one is much further off.
            wrong.colorimetry.matrix = if wrong.colorimetry.matrix == Matrix::BT601 { Matrix::BT709 } else { Matrix::BT601 };
            let misread = common::rgb_bytes(&frame::to_tensor(planes(&f), FrameLayout::Yuv(wrong), Device::Cpu).unwrap());
            let off = common::level_diff(&misread, &theirs).0;
            assert!(wrong.chroma.is_none() || off > mean + 1.0, "{name}: another matrix reads {off:.3} levels off, ours {mean:.3}");
        }
        // Written from RGB: each component as videoconvert writes it.
        let mut written = gst::Buffer::with_size(yuv_info.size()).unwrap();
        {
            let mut out = VideoFrameRef::from_buffer_ref_writable(written.get_mut().unwrap(), &yuv_info).unwrap();
            let image = common::rgb_tensor(rgb, size.0, size.1);
            frame::write_frame(&image, PlanesMut(out.planes_data_mut()), layout).unwrap();
        }
        let unit = if *format == F::I42010le { 4.0 } else { 1.0 };
        for ((s, a), (_, b)) in components(&written, &yuv_info).iter().zip(components(&yuv, &yuv_info)) {
            let (mean, max) = differences(a, &b);
            eprintln!("{name}: plane {} written, mean {:.3} levels, max {max}", s.plane, mean / unit);
            assert!(
                mean / unit < 1.0 && max as f64 / unit <= 2.0,
                "{name}: written {:.3} levels off on average, {max} at most",
                mean / unit
            );
        }
    }
}

/// A restorer of the tiny GPEN, faces found by the detector.
fn restorer() -> Restorer {
    Restorer::new(&common::tiny_settings(LiveSettings::default())).unwrap()
}

/// The faces of `buffer` (a `info` frame) restored in place; returns the faces' boxes and the
/// frame rectangle written.
fn restore_in_place(buffer: &mut gst::Buffer, info: &VideoInfo) -> (Vec<[f32; 4]>, (i64, i64, i64, i64)) {
    let mut r = restorer();
    let mut f = VideoFrameRef::from_buffer_ref_writable(buffer.get_mut().unwrap(), info).unwrap();
    let layout = frame_layout(&f).unwrap();
    let d = r.detect(planes(&f), layout).unwrap();
    let report = r.restore_faces(&d, PlanesMut(f.planes_data_mut()), layout).unwrap();
    assert!(report.restored > 0, "{:?}: no face restored", info.format());
    (d.faces.iter().map(|f| f.bbox).collect(), report.region.unwrap())
}

#[test]
fn faces_restored_in_each_format_match_the_rgb_path_and_nothing_else_changes() {
    common::init();
    let (rgb, size) = photo();
    let (rgb_buf, rgb_info) = rgb_buffer(&rgb, size);
    let cases = [CASES[0], CASES[3], CASES[7], CASES[8], CASES[10], CASES[11], (F::Gray8, "")];
    for (format, extra) in cases {
        let name = format!("{}{extra}", format.to_str());
        let yuv_info = info(format, size, extra, 7);
        let input = convert(&rgb_buf, &rgb_info, &yuv_info);
        // In the frame's own format.
        let mut ours = input.copy_deep().unwrap();
        let (boxes, (x0, y0, rw, rh)) = restore_in_place(&mut ours, &yuv_info);
        // The RGB path: videoconvert ! gpenfilter ! videoconvert.
        let mut rgb_frame = convert(&input, &yuv_info, &rgb_info);
        restore_in_place(&mut rgb_frame, &rgb_info);
        let theirs = convert(&rgb_frame, &rgb_info, &yuv_info);
        let (ours_c, theirs_c, input_c) = (components(&ours, &yuv_info), components(&theirs, &yuv_info), components(&input, &yuv_info));
        // Luma inside the faces, in 8-bit levels.
        let unit = if format == F::I42010le { 4.0 } else { 1.0 };
        let (luma, want, width) = (&ours_c[0].1, &theirs_c[0].1, ours_c[0].0.width);
        let inside: Vec<(u16, u16)> = boxes
            .iter()
            .flat_map(|b| {
                let (bx0, by0, bx1, by1) = (b[0].max(0.0) as usize, b[1].max(0.0) as usize, b[2] as usize, b[3] as usize);
                (by0..by1.min(size.1)).flat_map(move |y| (bx0..bx1.min(size.0)).map(move |x| (y, x)))
            })
            .map(|(y, x)| (luma[y * width + x], want[y * width + x]))
            .collect();
        let mean = inside.iter().map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / inside.len() as f64 / unit;
        eprintln!("{name}: luma in the faces {mean:.3} levels from the RGB path's");
        assert!(mean <= 1.5, "{name}: luma in the faces {mean:.3} levels from the RGB path's");
        // Away from the rectangle written, every sample of every plane is the input's.
        let FrameLayout::Yuv(l) = frame_layout(&VideoFrameRef::from_buffer_ref_readable(input.as_ref(), &yuv_info).unwrap()).unwrap()
        else {
            unreachable!()
        };
        let chroma = gstgpen::restorer::yuv::chroma_rect((x0, y0, rw, rh), (size.0 as i64, size.1 as i64), l.sub, l.siting);
        for (i, ((s, a), (_, b))) in ours_c.iter().zip(&input_c).enumerate() {
            let (cx0, cy0, cw, ch) = if i == 0 { (x0, y0, rw, rh) } else { (chroma.x0, chroma.y0, chroma.width, chroma.height) };
            let mut changed_outside = 0;
            let mut changed = 0;
            for y in 0..s.height as i64 {
                for x in 0..s.width as i64 {
                    let k = (y * s.width as i64 + x) as usize;
                    let written = (cx0..cx0 + cw).contains(&x) && (cy0..cy0 + ch).contains(&y);
                    if a[k] != b[k] {
                        changed += 1;
                        changed_outside += usize::from(!written);
                    }
                }
            }
            assert_eq!(changed_outside, 0, "{name}: component {i} changed outside the pasted region");
            assert!(changed > 0, "{name}: component {i} unchanged");
        }
        // Nor does any other byte of the buffer: row padding, the other planes' bytes.
        let f = VideoFrameRef::from_buffer_ref_readable(ours.as_ref(), &yuv_info).unwrap();
        let g = VideoFrameRef::from_buffer_ref_readable(input.as_ref(), &yuv_info).unwrap();
        for plane in 0..f.n_planes() {
            let mut writable = vec![false; f.plane_data(plane).unwrap().len()];
            for (i, (s, _)) in ours_c.iter().enumerate().filter(|(_, (s, _))| s.plane == plane as usize) {
                let (cx0, cy0, cw, ch) = if i == 0 { (x0, y0, rw, rh) } else { (chroma.x0, chroma.y0, chroma.width, chroma.height) };
                for y in cy0..cy0 + ch {
                    for x in cx0..cx0 + cw {
                        let p = s.offset + y as usize * s.stride + x as usize * s.step;
                        writable[p..p + if s.wide { 2 } else { 1 }].fill(true);
                    }
                }
            }
            let (a, b) = (f.plane_data(plane).unwrap(), g.plane_data(plane).unwrap());
            let stray = a.iter().zip(b).zip(&writable).filter(|((x, y), w)| x != y && !**w).count();
            assert_eq!(stray, 0, "{name}: {stray} bytes of plane {plane} changed outside the samples written");
        }
    }
}

/// The element's properties for the tiny model.
fn props() -> Vec<(&'static str, String)> {
    vec![
        ("model", common::gpen_fixture("gpen-256-tiny.pth").display().to_string()),
        ("detector-model", common::detector().display().to_string()),
        ("size", "256".into()),
        ("device", "cpu".into()),
    ]
}

/// `frames` (each the bytes of a buffer of `caps`) through `appsrc ! gpenfilter ! appsink`.
fn through_element(caps: &gst::Caps, frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, gst::Structure) {
    let props = props();
    let props: Vec<(&str, &str)> = props.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let frames: Vec<_> = frames.iter().map(|f| (f.clone(), gst_video::VideoBufferFlags::empty())).collect();
    let (out, stats, _, messages) = common::run_buffers(caps, &props, &frames);
    assert!(messages.iter().all(|m| !m.starts_with("error")), "{messages:?}");
    (out, stats)
}

#[test]
fn the_element_restores_nv12_and_grey_streams_in_their_format_as_the_core_does() {
    common::init();
    let (rgb, size) = photo();
    let (rgb_buf, rgb_info) = rgb_buffer(&rgb, size);
    for (format, extra) in [(F::Nv12, ", colorimetry=bt709"), (F::I420, ", colorimetry=bt601"), (F::Gray8, "")] {
        let yuv_info = info(format, size, extra, 0);
        let input = convert(&rgb_buf, &rgb_info, &yuv_info);
        let bytes = input.map_readable().unwrap().to_vec();
        let (out, stats) = through_element(&yuv_info.to_caps().unwrap(), std::slice::from_ref(&bytes));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), bytes.len(), "{format:?}: the output is a frame of the input's format");
        assert!(common::count(&stats, "faces-restored") > 0, "{stats}");
        // The core on the same planes gives the same bytes.
        let mut core = input.copy_deep().unwrap();
        {
            let mut r = restorer();
            let mut f = VideoFrameRef::from_buffer_ref_writable(core.get_mut().unwrap(), &yuv_info).unwrap();
            let layout = frame_layout(&f).unwrap();
            r.process(PlanesMut(f.planes_data_mut()), layout, 1.0 / 30.0).unwrap();
        }
        assert!(out[0] == core.map_readable().unwrap().as_slice(), "{format:?}: the element and the core differ");
        assert!(out[0] != bytes, "{format:?}: nothing restored");
    }
}

#[test]
fn a_frame_without_faces_passes_through_unwritten_and_uncopied_in_every_format() {
    common::init();
    for format in [F::Nv12, F::I420, F::Yuy2, F::Uyvy, F::I42010le, F::Gray8] {
        let element = common::tiny_element(false);
        let mut hn = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
        let info = info(format, (320, 240), "", 0);
        hn.set_src_caps(info.to_caps().unwrap());
        // A flat frame (no face), in allocated memory which a buffer header can share.
        let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
        let pattern: Vec<u8> = (0..info.size()).map(|i| (i % 7) as u8 * 3 + 100).collect();
        buffer.make_mut().copy_from_slice(0, &pattern).unwrap();
        buffer.make_mut().set_pts(gst::ClockTime::ZERO);
        let kept = buffer.clone(); // a second reference: any write would need a copy
        let out = hn.push_and_pull(buffer).unwrap();
        let (a, b) = (out.map_readable().unwrap(), kept.map_readable().unwrap());
        assert_eq!(a.as_ptr(), b.as_ptr(), "{format:?}: the frame was copied");
        assert_eq!(a.as_slice(), &pattern[..], "{format:?}: the frame was written");
    }
}

#[test]
fn decoders_formats_link_without_a_converter_nv12_first() {
    common::init();
    let factory = gst::ElementFactory::find("gpenfilter").unwrap();
    let template = factory.static_pad_templates().into_iter().find(|t| t.name_template() == "sink").unwrap();
    let caps = template.caps();
    let formats: Vec<String> =
        caps.structure(0).unwrap().get::<gst::List>("format").unwrap().iter().map(|v| v.get::<String>().unwrap()).collect();
    assert_eq!(formats[0], "NV12", "{formats:?}");
    for f in ["I420", "YUY2", "UYVY", "I420_10LE", "GRAY8", "RGB", "BGRx"] {
        assert!(formats.iter().any(|x| x == f), "{f} missing from {formats:?}");
    }
    // What a software H.264 decoder gives links straight in, and out as it came.
    let props: Vec<String> = props().iter().map(|(k, v)| format!("{k}={v}")).collect();
    let n = common::count_buffers(&format!(
        "videotestsrc num-buffers=3 ! video/x-raw,format=I420,width=64,height=48 ! gpenfilter {} ! video/x-raw,format=I420 ! fakesink name=sink",
        props.join(" ")
    ));
    assert_eq!(n, 3);
}

#[test]
fn interlaced_nv12_is_restored_field_by_field() {
    common::init();
    // 660 lines: 330 per field, whose 165 chroma rows are each field's own.
    let (rgb, (w, h)) = photo();
    let (w, h) = (w - 1, h - 1);
    let rgb: Vec<u8> = (0..h).flat_map(|y| rgb[y * 3 * (w + 1)..y * 3 * (w + 1) + 3 * w].to_vec()).collect();
    let (rgb_buf, rgb_info) = rgb_buffer(&rgb, (w, h));
    let progressive = info(F::Nv12, (w, h), "", 0);
    let woven = info(F::Nv12, (w, h), ", interlace-mode=interleaved, field-order=top-field-first", 0);
    let input = convert(&rgb_buf, &rgb_info, &progressive).map_readable().unwrap().to_vec();
    let (out, stats) = through_element(&woven.to_caps().unwrap(), std::slice::from_ref(&input));
    assert_eq!(out[0].len(), input.len());
    // Both fields restored: changed luma rows of each parity.
    let changed =
        |parity: usize| (0..h).filter(|y| y % 2 == parity).filter(|y| out[0][y * w..(y + 1) * w] != input[y * w..(y + 1) * w]).count();
    assert!(changed(0) > 0 && changed(1) > 0, "top {} bottom {} rows changed", changed(0), changed(1));
    assert_eq!(common::count(&stats, "faces-restored"), 4, "two faces in each field: {stats}");
}

#[test]
fn upscaled_nv12_comes_out_nv12_as_the_rgb_path_makes_it() {
    common::init();
    let (rgb, (w, h)) = photo();
    // Half the photo, upscaled x2 by bicubic interpolation, faces restored on the upscaled frame.
    let (w, h) = (w / 2, h / 2);
    let rgb: Vec<u8> = (0..h).flat_map(|y| rgb[y * 3 * (2 * w + 1)..y * 3 * (2 * w + 1) + 3 * w].to_vec()).collect();
    let (rgb_buf, rgb_info) = rgb_buffer(&rgb, (w, h));
    let small = info(F::Nv12, (w, h), ", colorimetry=bt709", 0);
    let input = convert(&rgb_buf, &rgb_info, &small);
    let mut p = props();
    p.push(("upscale", "2".into()));
    let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let frames = [(input.map_readable().unwrap().to_vec(), gst_video::VideoBufferFlags::empty())];
    let (ours, _, _, messages) = common::run_buffers(&small.to_caps().unwrap(), &p, &frames);
    assert!(messages.iter().all(|m| !m.starts_with("error")), "{messages:?}");
    // The RGB path, gpenfilter upscale=2 ! videoconvert, from the frame read as RGB as the
    // element reads it (videoconvert's fixed-point read is ~2.5 levels darker throughout,
    // which a whole upscaled frame would show; see the first test).
    let f = VideoFrameRef::from_buffer_ref_readable(input.as_ref(), &small).unwrap();
    let read = common::rgb_bytes(&frame::to_tensor(planes(&f), frame_layout(&f).unwrap(), Device::Cpu).unwrap());
    let (rgb_in, _) = rgb_buffer(&read, (w, h));
    let frames = [(rgb_in.map_readable().unwrap().to_vec(), gst_video::VideoBufferFlags::empty())];
    let (theirs, _, _, _) = common::run_buffers(&rgb_info.to_caps().unwrap(), &p, &frames);
    let (big, big_rgb) = (info(F::Nv12, (2 * w, 2 * h), ", colorimetry=bt709", 0), info(F::Rgb, (2 * w, 2 * h), "", 0));
    let theirs = convert(&gst::Buffer::from_slice(theirs[0].clone()), &big_rgb, &big);
    assert_eq!(ours[0].len(), big.size(), "an NV12 frame twice the size");
    let ours = gst::Buffer::from_slice(ours[0].clone());
    for (i, ((_, a), (_, b))) in components(&ours, &big).iter().zip(components(&theirs, &big)).enumerate() {
        let (mean, _) = differences(a, &b);
        eprintln!("upscaled NV12, component {i}: {mean:.3} levels from the RGB path's");
        assert!(mean < 1.5, "component {i}: {mean:.3} levels from the RGB path's");
    }
}
