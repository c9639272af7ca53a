//! A frame in the element, from its arrival to its output: its buffer while held, its times and
//! the faces its output metas describe; and what is made of them (the faces message, the metas
//! of the output, where its faces come from).

use gst::prelude::*;

use super::enums::FacesFrom;
use super::meta;
use super::stats::Stats;
use crate::detect::Face;
use crate::restorer::{Detections, FaceSource, Held};

/// A frame in flight through the element: the core's [`Held`] frame with what the element
/// keeps of it.
pub type Frame = Held<Arrival>;

/// What the element keeps of a frame besides what the core began of it.
pub struct Arrival {
    /// The buffer, while the frame is held for batches ahead (then re-submitted).
    pub buffer: Option<gst::Buffer>,
    pub discont: bool,
    pub times: FrameTimes,
    /// The faces its output's metas describe.
    pub described: Option<Described>,
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

/// The faces of a frame, as aligned, as the `gpenfilter-faces` element message holds them
/// (`running`: the frame's running time).
pub fn faces_message(buffer: &gst::BufferRef, detections: &Detections, running: Option<gst::ClockTime>) -> gst::Structure {
    let faces = detections.faces.iter().enumerate().map(|(i, f)| {
        gst::Structure::builder("face")
            .field("id", detections.ids.get(i).copied().unwrap_or(0))
            .field("score", f.score as f64)
            .field("box", gst::Array::new(f.bbox.map(|v| v as f64)))
            .field("landmarks", gst::Array::new(f.landmarks.as_flattened().iter().map(|&v| v as f64)))
            .build()
            .to_send_value()
    });
    gst::Structure::builder("gpenfilter-faces")
        .field("timestamp", buffer.pts())
        .field("running-time", running)
        .field("detected", detections.detected)
        .field("scene-cut", detections.scene_cut)
        .field("faces", gst::Array::from_values(faces))
        .build()
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
