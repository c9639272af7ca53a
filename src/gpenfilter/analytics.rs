//! Faces as GstAnalytics metadata (GStreamer 1.24 and later, feature `analytics`): out, one
//! object-detection entry of type `face` per face, related to a tracking entry that carries its
//! track id; in, the boxes of the `face` object-detection entries an upstream element wrote.
//!
//! Beside the region-of-interest metas of `meta.rs`, which are unchanged: those carry the
//! landmarks and `restored`, for which GStreamer 1.26's analytics library has no place (see
//! docs/metadata-analytics.md). The entries go into the buffer's first relation meta, the one
//! `gst_buffer_get_analytics_relation_meta` and so `objectdetectionoverlay` read, made where
//! there is none. Entries cannot be removed from a relation meta: a face whose entry is already
//! there (written by an earlier gpenfilter, or the entry the face was read from) gets no second:
//! that entry is related to the face's track instead, where no track relates to it yet.

use std::sync::LazyLock;

use gst_analytics::prelude::*;
use gst_analytics::{AnalyticsODMtd, AnalyticsRelationMeta, AnalyticsTrackingMtd, RelTypes};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new("gpenfilter-analytics", gst::DebugColorFlags::empty(), Some("gpenfilter's GstAnalytics metadata"))
});

/// The object type of faces (a quark, as GStreamer's analytics names object types).
pub const OD_TYPE: &str = "face";

/// A whole-pixel rectangle: x, y, width, height.
pub type Rect = (u32, u32, u32, u32);

/// One face to describe: its rectangle in output pixels, the detector's confidence and its track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub rect: Rect,
    pub confidence: f32,
    pub track: u64,
}

/// A `face` entry of a relation meta: its rectangle as it is (it may reach outside the frame or
/// be empty), its id in the meta, and whether a tracking entry relates to it.
struct Found {
    rect: (i32, i32, i32, i32),
    id: u32,
    tracked: bool,
}

fn face_entries(buffer: &gst::BufferRef) -> Vec<Found> {
    let Some(meta) = buffer.meta::<AnalyticsRelationMeta>() else { return Vec::new() };
    let face = glib::Quark::from_str(OD_TYPE);
    meta.iter::<AnalyticsODMtd>()
        .filter(|od| od.obj_type() == Some(face))
        .filter_map(|od| {
            let l = od.location().ok()?;
            let tracked = meta.iter_direct_related::<AnalyticsTrackingMtd>(od.id(), RelTypes::RELATE_TO).next().is_some();
            Some(Found { rect: (l.x, l.y, l.w, l.h), id: od.id(), tracked })
        })
        .collect()
}

/// Adds one `face` entry per face of `faces` to `buffer`, each related to a tracking entry with
/// its track id, first seen at `seen` (the frame's timestamp: the element keeps no start time
/// per track). Where a `face` entry of the same face ([`same_face`]) is already there, it is not
/// doubled: it gets the tracking entry if it has none. A refused entry (the meta failed to
/// grow) is logged and the other faces are still written.
pub fn attach(buffer: &mut gst::BufferRef, faces: &[Entry], seen: gst::ClockTime) {
    let there = face_entries(buffer);
    let todo: Vec<(&Entry, Option<u32>)> = faces
        .iter()
        .filter_map(|f| match there.iter().find(|t| unsigned(t.rect).is_some_and(|r| same_face(r, f.rect))) {
            Some(t) if t.tracked => None,
            Some(t) => Some((f, Some(t.id))),
            None => Some((f, None)),
        })
        .collect();
    if todo.is_empty() {
        return;
    }
    let mut meta = match buffer.meta_mut::<AnalyticsRelationMeta>() {
        Some(m) => m,
        None => AnalyticsRelationMeta::add(buffer),
    };
    let face = glib::Quark::from_str(OD_TYPE);
    for (f, entry) in todo {
        let (x, y, w, h) = signed(f.rect);
        let od = match entry {
            Some(id) => Ok(id),
            None => meta.add_od_mtd(face, x, y, w, h, f.confidence).map(|od| od.id()),
        };
        let added = od.and_then(|od| {
            let track = meta.add_tracking_mtd(f.track, seen)?.id();
            meta.set_relation(RelTypes::RELATE_TO, od, track)
        });
        if let Err(e) = added {
            gst::warning!(CAT, "face of track {} not added to the analytics metadata: {e}", f.track);
        }
    }
}

/// The rectangles of the `face` entries of `buffer` (boxes only), clipped to a `width x height`
/// frame; entries with nothing left inside are left out.
pub fn face_rects(buffer: &gst::BufferRef, (width, height): (u32, u32)) -> Vec<Rect> {
    let clip = |v: i64, max: u32| v.clamp(0, max as i64) as u32;
    face_entries(buffer)
        .into_iter()
        .filter_map(|Found { rect: (x, y, w, h), .. }| {
            let (x0, y0) = (clip(x as i64, width), clip(y as i64, height));
            let (x1, y1) = (clip(x as i64 + w as i64, width), clip(y as i64 + h as i64, height));
            (x1 > x0 && y1 > y0).then_some((x0, y0, x1 - x0, y1 - y0))
        })
        .collect()
}

/// Whether two rectangles describe the same face: intersection over union at least 0.8 (two
/// metas of one face, one of them rounded or scaled by another element, nearly coincide; two
/// faces that close would be one face to the restorer anyway).
pub fn same_face(a: Rect, b: Rect) -> bool {
    let span = |a0: u32, al: u32, b0: u32, bl: u32| (a0 + al).min(b0 + bl).saturating_sub(a0.max(b0)) as u64;
    let inter = span(a.0, a.2, b.0, b.2) * span(a.1, a.3, b.1, b.3);
    let union = a.2 as u64 * a.3 as u64 + b.2 as u64 * b.3 as u64 - inter;
    union > 0 && inter * 5 >= union * 4
}

/// A rectangle of the analytics library inside the positive quadrant, as ours; else none.
fn unsigned((x, y, w, h): (i32, i32, i32, i32)) -> Option<Rect> {
    Some((x.try_into().ok()?, y.try_into().ok()?, w.try_into().ok()?, h.try_into().ok()?))
}

/// A rectangle in the analytics library's signed coordinates (saturating past `i32::MAX`).
fn signed((x, y, w, h): Rect) -> (i32, i32, i32, i32) {
    let s = |v: u32| v.min(i32::MAX as u32) as i32;
    (s(x), s(y), s(w), s(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(x: u32, track: u64) -> Entry {
        Entry { rect: (x, 10, 40, 50), confidence: 0.75, track }
    }

    /// Each `face` entry: rectangle, confidence and the track id of the tracking entry it relates to.
    fn described(buffer: &gst::BufferRef) -> Vec<((i32, i32, i32, i32), f32, Vec<u64>)> {
        let meta = buffer.meta::<AnalyticsRelationMeta>().unwrap();
        let face = glib::Quark::from_str(OD_TYPE);
        meta.iter::<AnalyticsODMtd>()
            .filter(|od| od.obj_type() == Some(face))
            .map(|od| {
                let l = od.location().unwrap();
                let tracks = meta.iter_direct_related::<AnalyticsTrackingMtd>(od.id(), RelTypes::RELATE_TO).map(|t| t.info().0).collect();
                ((l.x, l.y, l.w, l.h), l.loc_conf_lvl, tracks)
            })
            .collect()
    }

    #[test]
    fn each_face_is_an_entry_related_to_its_track() {
        gst::init().unwrap();
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().unwrap();
        attach(b, &[entry(5, 3), entry(100, 1 << 40)], gst::ClockTime::from_seconds(2));
        assert_eq!(described(b), [((5, 10, 40, 50), 0.75, vec![3]), ((100, 10, 40, 50), 0.75, vec![1 << 40])]);
        let meta = b.meta::<AnalyticsRelationMeta>().unwrap();
        let first_seen: Vec<_> = meta.iter::<AnalyticsTrackingMtd>().map(|t| t.info().1).collect();
        assert_eq!(first_seen, [gst::ClockTime::from_seconds(2); 2]);
        // A second element's faces: the same one is not doubled, a new one is added.
        attach(b, &[entry(5, 3), entry(200, 4)], gst::ClockTime::from_seconds(2));
        assert_eq!(described(b).len(), 3);
        // An upstream entry without a track that a face was read from gets the face's track.
        let mut meta = b.meta_mut::<AnalyticsRelationMeta>().unwrap();
        meta.add_od_mtd(glib::Quark::from_str(OD_TYPE), 300, 10, 40, 50, 0.5).unwrap();
        attach(b, &[entry(300, 9)], gst::ClockTime::from_seconds(3));
        assert_eq!(described(b)[3], ((300, 10, 40, 50), 0.5, vec![9]));
        assert_eq!(b.iter_meta::<AnalyticsRelationMeta>().count(), 1, "one relation meta");
    }

    #[test]
    fn rectangles_that_nearly_coincide_are_one_face() {
        assert!(same_face((10, 10, 100, 100), (10, 10, 100, 100)));
        assert!(same_face((10, 10, 100, 100), (12, 11, 99, 101)));
        assert!(!same_face((10, 10, 100, 100), (30, 10, 100, 100)));
        assert!(!same_face((10, 10, 100, 100), (200, 10, 100, 100)));
        assert!(!same_face((10, 10, 0, 0), (10, 10, 0, 0)));
    }

    #[test]
    fn face_entries_are_read_clipped_and_others_are_not() {
        gst::init().unwrap();
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().unwrap();
        assert!(face_rects(b, (320, 240)).is_empty(), "no relation meta");
        {
            let mut meta = AnalyticsRelationMeta::add(b);
            let (face, car) = (glib::Quark::from_str("face"), glib::Quark::from_str("car"));
            meta.add_od_mtd(face, 10, 20, 30, 40, 0.9).unwrap();
            meta.add_od_mtd(car, 0, 0, 50, 50, 0.9).unwrap();
            meta.add_od_mtd(face, -10, 200, 30, 100, 0.5).unwrap();
            meta.add_od_mtd(face, 400, 0, 30, 30, 0.5).unwrap();
            meta.add_tracking_mtd(7, gst::ClockTime::ZERO).unwrap();
        }
        assert_eq!(face_rects(b, (320, 240)), [(10, 20, 30, 40), (0, 200, 20, 40)]);
    }
}
