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
