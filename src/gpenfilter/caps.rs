//! Caps and timing: the caps of the other side when upscaling, the time between frames that
//! tracking needs, and the byte layout of a mapped frame.

use gst_video::prelude::*;

use crate::restorer::PackedLayout;

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
}
