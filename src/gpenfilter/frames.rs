//! A frame in the element, from its arrival to its output: the pictures it is begun as (the
//! frame or its fields), its buffer while held, its times and the faces its output metas
//! describe; and what is made of them (the faces message, the metas of the output, where its
//! faces come from).

use gst::prelude::*;

use super::enums::{FacesFrom, Fields};
use super::meta;
use super::stats::Stats;
use crate::detect::Face;
use crate::error::Error;
use crate::restorer::{fields, Detections, Engine, FaceSource, FrameLayout, Held, Planes, Stream};

/// Which lines of its buffer a begun picture holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    Frame,
    /// One field: the even lines (`top`) or the odd ones.
    Field {
        top: bool,
    },
}

/// The pictures a frame is restored as, in temporal order: the whole frame, or its fields.
/// `flags` are the mapped frame's, which GStreamer derives from the caps and the buffer:
/// interleaved streams are interlaced throughout, mixed ones where the buffer says so. The
/// field order is the caps' `order` where they give one, else the buffer's TFF flag; a frame
/// flagged ONEFIELD holds the field TFF names only (the other lines are left as they are). A
/// frame whose lines do not divide into two fields is taken whole: one of an odd number of
/// lines, whose fields could not be upscaled into the output's, and a 4:2:0 one of a height not
/// divisible by 4, whose chroma rows would not make both fields' chroma.
pub fn pictures(layout: &FrameLayout, flags: gst_video::VideoFrameFlags, order: gst_video::VideoFieldOrder, fields: Fields) -> Vec<Lines> {
    use gst_video::{VideoFieldOrder, VideoFrameFlags as F};
    let splits = layout.height().is_multiple_of(2) && fields::fields(layout, true).is_some();
    if fields == Fields::Frame || !flags.contains(F::INTERLACED) || !splits {
        return vec![Lines::Frame];
    }
    let top_first = match order {
        VideoFieldOrder::TopFieldFirst => true,
        VideoFieldOrder::BottomFieldFirst => false,
        _ => flags.contains(F::TFF),
    };
    if flags.contains(F::ONEFIELD) {
        return vec![Lines::Field { top: flags.contains(F::TFF) }];
    }
    vec![Lines::Field { top: top_first }, Lines::Field { top: !top_first }]
}

/// A frame in flight through the element: the core's [`Held`] frame with what the element
/// keeps of it.
pub type Frame = Held<Arrival>;

/// The `pictures` of a frame (`data` laid out as `layout`) begun on `stream`, each with the
/// faces of `source` (a field's mapped to its own lines).
pub fn begin_pictures(
    engine: &Engine,
    stream: &mut Stream,
    pictures: Vec<Lines>,
    data: Planes<'_>,
    layout: &FrameLayout,
    dt: f64,
    source: &FaceSource,
) -> Vec<(Lines, Result<Detections, Error>)> {
    let begin = |stream: &mut Stream, lines| match lines {
        Lines::Frame => stream.begin_from(engine, data, layout, dt, source.clone()),
        Lines::Field { top } => match fields::field(layout, top) {
            Some(f) => stream.begin_field_from(engine, f.of(data), f.layout, dt, f.source_in_field(source)),
            None => Err(Error::Internal(format!("a {}-line frame has no field {top}", layout.height()))),
        },
    };
    pictures.into_iter().map(|lines| (lines, begin(stream, lines))).collect()
}

/// What the element keeps of a frame besides what the core began of it.
pub struct Arrival {
    /// The buffer, while the frame is held for batches ahead (then re-submitted).
    pub buffer: Option<gst::Buffer>,
    pub discont: bool,
    pub times: FrameTimes,
    /// The faces its output's metas describe.
    pub described: Option<Described>,
    /// The lines of the buffer it is.
    pub lines: Lines,
}

/// The timestamps of a frame, kept for the messages about it.
#[derive(Debug, Clone, Copy)]
pub struct FrameTimes {
    pub pts: Option<gst::ClockTime>,
    pub duration: Option<gst::ClockTime>,
}

impl FrameTimes {
    pub fn of(buffer: &gst::BufferRef) -> Self {
        FrameTimes { pts: buffer.pts(), duration: buffer.duration() }
    }
}

/// A frame's faces as its output metas describe them.
pub struct Described {
    /// In input pixels.
    pub faces: Vec<Face>,
    pub ids: Vec<u64>,
    pub restored: bool,
    /// The output frame's size.
    pub size: (u32, u32),
}

impl Described {
    /// The description of a frame from those of its fields, in temporal order: each track's
    /// face as the latest field saw it.
    pub fn of_fields(fields: impl IntoIterator<Item = Option<Described>>) -> Option<Described> {
        let mut all: Option<Described> = None;
        for d in fields.into_iter().flatten() {
            let Some(a) = all.as_mut() else {
                all = Some(d);
                continue;
            };
            let (mut faces, mut ids) = (d.faces, d.ids);
            for (i, f) in a.faces.iter().enumerate() {
                // Untracked faces (no id) are all kept.
                match a.ids.get(i) {
                    Some(id) if ids.contains(id) => {}
                    id => {
                        faces.push(*f);
                        ids.extend(id);
                    }
                }
            }
            *a = Described { faces, ids, restored: a.restored || d.restored, size: d.size };
        }
        all
    }
}

/// Where the faces of `buffer` (a `size` frame) come from, by `faces-from`; faces read from
/// metas are counted.
pub fn face_source(faces_from: FacesFrom, buffer: &gst::BufferRef, size: (u32, u32), stats: &mut Stats) -> FaceSource {
    let mut given = || {
        let given = meta::given_faces(buffer, size);
        stats.faces_from_metas += given.len() as u64;
        given
    };
    match faces_from {
        FacesFrom::Detector => FaceSource::Detector,
        FacesFrom::Upstream => FaceSource::Given(given()),
        FacesFrom::Both => FaceSource::Both(given()),
    }
}

/// The output's region metas: those copied from a smaller input scaled by `factor`, an earlier
/// gpenfilter's replaced by one per face of this frame (`on`: `face-metas`).
pub fn describe(buffer: &mut gst::Buffer, described: Option<Described>, on: bool, factor: u32) {
    let scale_theirs = factor > 1 && buffer.iter_meta::<gst_video::VideoRegionOfInterestMeta>().next().is_some();
    let ours = described.filter(|d| on && !d.faces.is_empty());
    let replace = ours.is_some() || (on && meta::has_ours(buffer));
    if !scale_theirs && !replace {
        return;
    }
    // Metas need a writable buffer, which costs no pixel copy: a buffer held only here (in
    // place, upscaled, or passed through) is not copied at all, and one still held elsewhere
    // gets a new header that shares its memory.
    let b = buffer.make_mut();
    if scale_theirs {
        meta::scale_all(b, factor);
    }
    if on {
        meta::remove_ours(b);
    }
    if let Some(d) = ours {
        let faces: Vec<Face> = d.faces.iter().map(|f| meta::upscaled(f, factor)).collect();
        meta::attach(b, &faces, &d.ids, d.restored, d.size);
    }
}

/// The faces of a picture, as aligned, as the `gpenfilter-faces` element message holds them:
/// `faces` are the detections' in the frame's pixels; `running` is the frame's running time;
/// `field` says which field the picture is (`Some(true)`: the top one).
pub fn faces_message(
    buffer: &gst::BufferRef,
    detections: &Detections,
    faces: &[Face],
    running: Option<gst::ClockTime>,
    field: Option<bool>,
) -> gst::Structure {
    let faces = faces.iter().enumerate().map(|(i, f)| {
        gst::Structure::builder("face")
            .field("id", detections.ids.get(i).copied().unwrap_or(0))
            .field("score", f.score as f64)
            .field("box", gst::Array::new(f.bbox.map(|v| v as f64)))
            .field("landmarks", gst::Array::new(f.landmarks.as_flattened().iter().map(|&v| v as f64)))
            .build()
            .to_send_value()
    });
    let mut s = gst::Structure::builder("gpenfilter-faces")
        .field("timestamp", buffer.pts())
        .field("running-time", running)
        .field("detected", detections.detected)
        .field("scene-cut", detections.scene_cut)
        .field("faces", gst::Array::from_values(faces))
        .build();
    if let Some(top) = field {
        s.set("field", if top { "top" } else { "bottom" });
    }
    s
}

/// The latency frames held for batches add: `latency` frame durations (from the frame rate, or
/// the last frame's duration).
pub fn hold_latency(latency: usize, info: Option<&gst_video::VideoInfo>, last_duration: Option<gst::ClockTime>) -> gst::ClockTime {
    let rate = info.map(|i| i.fps()).filter(|f| f.numer() > 0 && f.denom() > 0);
    let frame = match (rate, last_duration) {
        (Some(f), _) => gst::ClockTime::SECOND.mul_div_floor(f.denom() as u64, f.numer() as u64).unwrap_or(gst::ClockTime::ZERO),
        (None, Some(d)) => d,
        (None, None) => gst::ClockTime::ZERO,
    };
    frame * latency as u64
}

/// Whether `event` must let held frames out first: a serialized event other than a flush (which
/// drops them) and tags (which may pass the frames they came with).
pub fn drains(event: &gst::Event) -> bool {
    event.is_serialized() && !matches!(event.type_(), gst::EventType::FlushStop | gst::EventType::Tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gst_video::prelude::*;
    use gst_video::{VideoBufferFlags as B, VideoFieldOrder, VideoInterlaceMode as M};

    /// The flags of a frame of `mode` and `order` mapped from a buffer flagged `buffer`.
    fn flags(mode: M, order: VideoFieldOrder, buffer: B) -> (gst_video::VideoInfo, gst_video::VideoFrameFlags) {
        gst::init().unwrap();
        let info =
            gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 4, 4).interlace_mode(mode).field_order(order).build().unwrap();
        let mut b = gst::Buffer::with_size(info.size()).unwrap();
        b.get_mut().unwrap().set_flags(gst::BufferFlags::from_bits_retain(buffer.bits()));
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(b.as_ref(), &info).unwrap();
        let flags = frame.flags();
        (info, flags)
    }

    fn of(mode: M, order: VideoFieldOrder, buffer: B, fields: Fields) -> Vec<Lines> {
        let (info, f) = flags(mode, order, buffer);
        let layout = FrameLayout::Rgb(crate::restorer::PackedLayout::rgb(info.width() as usize, info.height() as usize));
        pictures(&layout, f, info.field_order(), fields)
    }

    #[test]
    fn buffers_are_restored_as_the_pictures_their_caps_and_flags_say() {
        let (top, bottom) = (Lines::Field { top: true }, Lines::Field { top: false });
        let u = VideoFieldOrder::Unknown;
        assert_eq!(of(M::Progressive, u, B::INTERLACED, Fields::Auto), [Lines::Frame]);
        assert_eq!(of(M::Interleaved, VideoFieldOrder::TopFieldFirst, B::empty(), Fields::Auto), [top, bottom]);
        assert_eq!(of(M::Interleaved, VideoFieldOrder::BottomFieldFirst, B::TFF, Fields::Auto), [bottom, top]);
        assert_eq!(of(M::Interleaved, u, B::TFF, Fields::Auto), [top, bottom]);
        assert_eq!(of(M::Interleaved, u, B::empty(), Fields::Auto), [bottom, top]);
        assert_eq!(of(M::Interleaved, u, B::empty(), Fields::Frame), [Lines::Frame]);
        assert_eq!(of(M::Mixed, u, B::empty(), Fields::Auto), [Lines::Frame]);
        assert_eq!(of(M::Mixed, u, B::INTERLACED, Fields::Auto), [bottom, top]);
        assert_eq!(of(M::Mixed, u, B::INTERLACED | B::TFF | B::ONEFIELD, Fields::Auto), [top]);
    }
}
