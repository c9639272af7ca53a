//! Caps and timing: the formats the element takes and how a mapped frame of each lies in
//! memory (with the colorimetry its caps say), the caps of the other side when upscaling, and
//! the time between frames that tracking needs.

use gst_video::prelude::*;
use gst_video::{VideoChromaSite, VideoColorMatrix, VideoColorRange, VideoFormat as F};

use crate::restorer::{Colorimetry, FrameLayout, Matrix, PackedLayout, Planes, Samples, Siting, YuvLayout};

/// The formats in and out, in order of preference: those decoders and media applications give
/// first (4:2:0, then 4:2:2, 10 bits, grey), the RGB family after. Each is restored in its own
/// format: only the faces are converted, and frames come out in the format they came in.
pub const FORMATS: [F; 21] = [
    F::Nv12,
    F::I420,
    F::Nv21,
    F::Yv12,
    F::Yuy2,
    F::Uyvy,
    F::Yvyu,
    F::Y42b,
    F::Y444,
    F::I42010le,
    F::Gray8,
    F::Rgb,
    F::Bgr,
    F::Rgbx,
    F::Bgrx,
    F::Xrgb,
    F::Xbgr,
    F::Rgba,
    F::Bgra,
    F::Argb,
    F::Abgr,
];

/// The byte layout of the colour channels of a packed RGB-family frame.
pub fn packed_layout<T>(frame: &gst_video::VideoFrameRef<T>) -> PackedLayout {
    let info = frame.format_info();
    let offsets = info.poffset();
    PackedLayout {
        width: frame.width() as usize,
        height: frame.height() as usize,
        stride: frame.plane_stride()[0] as usize,
        pixel_stride: info.pixel_stride()[0] as usize,
        // Components 0, 1, 2 are R, G, B whatever their order in memory.
        rgb_offsets: [offsets[0] as usize, offsets[1] as usize, offsets[2] as usize],
    }
}

/// How a mapped frame lies in memory: packed RGB, or Y′CbCr and grey by their components, read
/// as its caps' colorimetry and chroma siting say (`None`: a format the element does not take).
/// Where the caps leave them unknown: BT.601, limited range for Y′CbCr and full for grey (as
/// GStreamer's defaults), chroma centred between its pixels.
pub fn frame_layout<T>(frame: &gst_video::VideoFrameRef<T>) -> Option<FrameLayout> {
    let info = frame.format_info();
    let (width, height) = (frame.width() as usize, frame.height() as usize);
    if info.is_rgb() {
        return (info.n_planes() == 1 && info.bits() == 8).then(|| FrameLayout::Rgb(packed_layout(frame)));
    }
    if !(info.is_yuv() || info.is_gray()) || !FORMATS.contains(&frame.format()) {
        return None;
    }
    let strides = frame.plane_stride();
    let component = |c: usize| -> Samples {
        let (ws, hs) = (info.w_sub()[c], info.h_sub()[c]);
        let plane = info.plane()[c] as usize;
        Samples {
            plane,
            offset: info.poffset()[c] as usize,
            stride: strides[plane] as usize,
            step: info.pixel_stride()[c] as usize,
            width: width.div_ceil(1 << ws),
            height: height.div_ceil(1 << hs),
            wide: info.bits() > 8,
            shift: info.shift()[c],
        }
    };
    let colorimetry = frame.info().colorimetry();
    let matrix = match colorimetry.matrix() {
        VideoColorMatrix::Bt709 => Matrix::BT709,
        VideoColorMatrix::Bt2020 => Matrix::BT2020,
        VideoColorMatrix::Smpte240m => Matrix::SMPTE240M,
        VideoColorMatrix::Fcc => Matrix::FCC,
        _ => Matrix::BT601,
    };
    let full_range = match colorimetry.range() {
        VideoColorRange::Range0_255 => true,
        VideoColorRange::Range16_235 => false,
        _ => info.is_gray(),
    };
    let site = frame.info().chroma_site();
    let siting = Siting { h_cosited: site.contains(VideoChromaSite::H_COSITED), v_cosited: site.contains(VideoChromaSite::V_COSITED) };
    let chroma = info.is_yuv().then(|| [component(1), component(2)]);
    Some(FrameLayout::Yuv(YuvLayout {
        width,
        height,
        luma: component(0),
        chroma,
        sub: (1 << chroma_sub(info.w_sub()), 1 << chroma_sub(info.h_sub())),
        siting,
        colorimetry: Colorimetry { matrix, full_range, depth: info.depth()[0] },
    }))
}

/// The chroma's subsampling along one axis, as a power of 2 (0 for grey, which has no chroma).
fn chroma_sub(subs: &[u32]) -> u32 {
    subs.get(1).copied().unwrap_or(0).min(1)
}

/// A mapped frame's planes, read.
pub fn planes<'a, T>(frame: &'a gst_video::VideoFrameRef<T>) -> Planes<'a> {
    Planes(std::array::from_fn(|i| frame.plane_data(i as u32).unwrap_or(&[])))
}

/// Seconds between the previous frame and this one: from their timestamps, else the frame rate,
/// else 1/30 (tracking only needs it roughly).
pub fn frame_interval(last: Option<gst::ClockTime>, pts: Option<gst::ClockTime>, info: Option<&gst_video::VideoInfo>) -> f64 {
    if let (Some(a), Some(b)) = (last, pts) {
        if b > a {
            return (b - a).nseconds() as f64 / 1e9;
        }
    }
    match info.map(|i| i.fps()) {
        Some(f) if f.numer() > 0 && f.denom() > 0 => f.denom() as f64 / f.numer() as f64,
        _ => 1.0 / 30.0,
    }
}

/// Caps with width and height multiplied by `factor` (`up`) or divided by it (sizes that do not
/// divide are left out).
pub fn scale_caps(caps: &gst::Caps, factor: i32, up: bool) -> gst::Caps {
    let mut out = gst::Caps::new_empty();
    let map = |v: i32| -> Option<i32> {
        if up {
            v.checked_mul(factor)
        } else {
            (v % factor == 0).then_some(v / factor)
        }
    };
    for (s, features) in caps.iter_with_features() {
        let mut s = s.to_owned();
        let mut ok = true;
        for field in ["width", "height"] {
            if let Ok(v) = s.get::<i32>(field) {
                match map(v) {
                    Some(v) => s.set(field, v),
                    None => ok = false,
                }
            } else if let Ok(r) = s.get::<gst::IntRange<i32>>(field) {
                let (min, max) = if up {
                    (r.min().saturating_mul(factor), r.max().saturating_mul(factor))
                } else {
                    ((r.min() + factor - 1) / factor, r.max() / factor)
                };
                if min > max {
                    ok = false;
                } else if min == max {
                    s.set(field, min);
                } else {
                    s.set(field, gst::IntRange::new(min.max(1), max));
                }
            }
        }
        if ok {
            out.get_mut().unwrap().append_structure_full(s, Some(features.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(s: &str) -> gst::Caps {
        s.parse().unwrap()
    }

    #[test]
    fn caps_scale_up_and_down() {
        gst::init().unwrap();
        let up = scale_caps(&caps("video/x-raw, format=RGB, width=320, height=[ 100, 200 ]"), 2, true);
        assert_eq!(up, caps("video/x-raw, format=RGB, width=640, height=[ 200, 400 ]"));
        let down = scale_caps(&caps("video/x-raw, format=RGB, width=640, height=[ 201, 400 ]"), 2, false);
        assert_eq!(down, caps("video/x-raw, format=RGB, width=320, height=[ 101, 200 ]"));
        // A fixed size that does not divide has no counterpart.
        assert!(scale_caps(&caps("video/x-raw, width=641, height=480"), 2, false).is_empty());
        // A range that holds a single multiple becomes that value.
        assert_eq!(scale_caps(&caps("video/x-raw, width=[ 7, 9 ], height=4"), 4, false), caps("video/x-raw, width=2, height=1"));
        // Saturated at the top instead of overflowing.
        let big = scale_caps(&caps("video/x-raw, width=[ 1, 2147483647 ], height=2"), 4, true);
        assert_eq!(big, caps("video/x-raw, width=[ 4, 2147483647 ], height=8"));
    }

    #[test]
    fn frame_intervals_come_from_timestamps_then_the_rate() {
        gst::init().unwrap();
        let t = gst::ClockTime::from_mseconds;
        assert!((frame_interval(Some(t(100)), Some(t(140)), None) - 0.04).abs() < 1e-9);
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 64, 48).fps(gst::Fraction::new(25, 1)).build().unwrap();
        // No previous frame, or time going backwards: the frame rate.
        assert!((frame_interval(None, Some(t(40)), Some(&info)) - 0.04).abs() < 1e-9);
        assert!((frame_interval(Some(t(200)), Some(t(100)), Some(&info)) - 0.04).abs() < 1e-9);
        assert!((frame_interval(None, None, None) - 1.0 / 30.0).abs() < 1e-9);
    }

    #[test]
    fn mapped_frames_give_their_layout() {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Bgrx, 6, 2).build().unwrap();
        let buffer = gst::Buffer::with_size(info.size()).unwrap();
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).unwrap();
        let l = packed_layout(&frame);
        assert_eq!((l.width, l.height, l.pixel_stride, l.rgb_offsets), (6, 2, 4, [2, 1, 0]));
        assert!(l.stride >= 24);
    }

    /// The layout of a mapped `format` frame of `caps` fields.
    fn layout_of(format: F, w: u32, h: u32, caps: &str) -> FrameLayout {
        let caps: gst::Caps = format!("video/x-raw, format={}, width={w}, height={h}{caps}", format.to_str()).parse().unwrap();
        let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
        let buffer = gst::Buffer::with_size(info.size()).unwrap();
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).unwrap();
        let layout = frame_layout(&frame).unwrap();
        layout.check(planes(&frame).lens()).unwrap();
        layout
    }

    #[test]
    fn every_format_taken_has_a_layout_with_the_caps_colorimetry() {
        gst::init().unwrap();
        for format in FORMATS {
            layout_of(format, 7, 5, "");
        }
        let FrameLayout::Yuv(nv12) = layout_of(F::Nv12, 7, 5, ", colorimetry=bt709, chroma-site=mpeg2") else { panic!() };
        assert_eq!((nv12.sub, nv12.chroma_size()), ((2, 2), (4, 3)));
        let [cb, cr] = nv12.chroma.unwrap();
        assert_eq!((cb.plane, cb.offset, cb.step, cr.offset), (1, 0, 2, 1));
        assert_eq!(nv12.colorimetry, Colorimetry { matrix: Matrix::BT709, full_range: false, depth: 8 });
        assert_eq!(nv12.siting, Siting { h_cosited: true, v_cosited: false });
        let FrameLayout::Yuv(yuy2) = layout_of(F::Yuy2, 6, 2, ", colorimetry=bt601") else { panic!() };
        let [cb, cr] = yuy2.chroma.unwrap();
        assert_eq!((yuy2.sub, yuy2.luma.step, cb.offset, cr.offset, cb.step), ((2, 1), 2, 1, 3, 4));
        let FrameLayout::Yuv(full) = layout_of(F::I420, 6, 2, ", colorimetry=(string)1:4:0:0") else { panic!() };
        assert!(full.colorimetry.full_range, "range 1: 0..255");
        let FrameLayout::Yuv(ten) = layout_of(F::I42010le, 4, 2, "") else { panic!() };
        assert_eq!((ten.luma.wide, ten.luma.step, ten.colorimetry.depth), (true, 2, 10));
        let FrameLayout::Yuv(grey) = layout_of(F::Gray8, 4, 2, "") else { panic!() };
        assert!(grey.chroma.is_none() && grey.colorimetry.full_range);
    }
}
