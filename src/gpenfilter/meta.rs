//! Faces as `GstVideoRegionOfInterestMeta`, GStreamer 1.22's carrier for regions of a frame
//! (encoders such as NVENC and VA-API read it). Out: one meta per face, of type `face`, id the
//! track id, with a `gpenfilter` parameter structure:
//!
//! | field | type | |
//! | --- | --- | --- |
//! | `score` | double | the detector's score |
//! | `box` | array of 4 doubles | `x1, y1, x2, y2`, unrounded, output pixels |
//! | `landmarks` | array of 10 doubles | `x, y` of the eyes, nose and mouth corners (RetinaFace order), output pixels |
//! | `restored` | boolean | whether the face was restored in this frame |
//! | `track-id` | guint64 | as `id` in the `gpenfilter-faces` message |
//!
//! In: the `face` metas of a frame become faces for the core; their landmarks are taken only
//! when the meta's rectangle is still the one `box` gives on this frame (an element that moved
//! or scaled the rectangle without the parameters would leave them wrong), else the face is a
//! box whose landmarks the detector finds. Built with the `analytics` feature (GStreamer 1.24 or
//! later), the same faces are also written as GstAnalytics entries, and upstream `face`
//! object-detection entries are read as boxes (`analytics.rs`).

use gst_video::VideoRegionOfInterestMeta;

use crate::detect::Face;
use crate::restorer::GivenFace;

/// The ROI type of faces.
pub const ROI_TYPE: &str = "face";
/// The name of our parameter structure (the element's name).
pub const PARAMS: &str = "gpenfilter";

/// The whole-pixel rectangle `(x, y, width, height)` of `bbox` in a `width x height` frame: the
/// box rounded outwards and clipped to the frame.
pub fn rect_of(bbox: &[f32; 4], (width, height): (u32, u32)) -> (u32, u32, u32, u32) {
    let clip = |v: f32, max: u32| if v.is_finite() { v.clamp(0.0, max as f32) as u32 } else { 0 };
    let (x0, y0) = (clip(bbox[0].floor(), width), clip(bbox[1].floor(), height));
    let (x1, y1) = (clip(bbox[2].ceil(), width), clip(bbox[3].ceil(), height));
    (x0, y0, x1.saturating_sub(x0), y1.saturating_sub(y0))
}

/// `face` in the frame upscaled `factor` times, at the coordinates the core pastes it at (pixel
/// centres: `x` becomes `(x + 0.5) * factor - 0.5`).
pub fn upscaled(face: &Face, factor: u32) -> Face {
    if factor == 1 {
        return *face;
    }
    let scale = |v: f32| (v + 0.5) * factor as f32 - 0.5;
    Face { bbox: face.bbox.map(scale), score: face.score, landmarks: face.landmarks.map(|p| p.map(scale)) }
}

/// Whether `buffer` carries a `face` meta written by a gpenfilter.
pub fn has_ours(buffer: &gst::BufferRef) -> bool {
    buffer.iter_meta::<VideoRegionOfInterestMeta>().any(|m| m.param(PARAMS).is_some())
}

/// Removes the metas an earlier gpenfilter wrote: this element's faces replace them. The other
/// region metas stay.
pub fn remove_ours(buffer: &mut gst::BufferRef) {
    use gst::buffer::BufferMetaForeachAction as A;
    use std::ops::ControlFlow;
    buffer.foreach_meta_mut(|mut m| match m.downcast_ref::<VideoRegionOfInterestMeta>() {
        Some(roi) if roi.param(PARAMS).is_some() => ControlFlow::Continue(A::Remove),
        _ => ControlFlow::Continue(A::Keep),
    });
}

/// Multiplies the rectangle of every region meta by `factor`: BaseTransform copies them from
/// the input as they are, and the output is `factor` times larger.
pub fn scale_all(buffer: &mut gst::BufferRef, factor: u32) {
    for mut m in buffer.iter_meta_mut::<VideoRegionOfInterestMeta>() {
        let (x, y, w, h) = m.rect();
        let f = |v: u32| v.saturating_mul(factor);
        m.set_rect((f(x), f(y), f(w), f(h)));
    }
}

/// Attaches one `face` meta per face (`ids`: their tracks), in a `size` frame.
pub fn attach(buffer: &mut gst::BufferRef, faces: &[Face], ids: &[u64], restored: bool, size: (u32, u32)) {
    for (i, face) in faces.iter().enumerate() {
        let id = ids.get(i).copied().unwrap_or(0);
        let mut meta = VideoRegionOfInterestMeta::add(buffer, ROI_TYPE, rect_of(&face.bbox, size));
        // The meta's id is a gint: track ids past its range wrap (they never come back to 0).
        meta.set_id((id & 0x7fff_ffff) as i32);
        meta.add_param(
            gst::Structure::builder(PARAMS)
                .field("score", face.score as f64)
                .field("box", gst::Array::new(face.bbox.map(|v| v as f64)))
                .field("landmarks", gst::Array::new(face.landmarks.as_flattened().iter().map(|&v| v as f64)))
                .field("restored", restored)
                .field("track-id", id)
                .build(),
        );
    }
    #[cfg(feature = "analytics")]
    {
        use super::analytics::{self, Entry};
        let entries: Vec<Entry> = faces
            .iter()
            .enumerate()
            .map(|(i, f)| Entry { rect: rect_of(&f.bbox, size), confidence: f.score, track: ids.get(i).copied().unwrap_or(0) })
            .collect();
        analytics::attach(buffer, &entries, buffer.pts().unwrap_or(gst::ClockTime::ZERO));
    }
}

/// The `face` metas of a `size` frame, as faces for the core.
/// With the `analytics` feature, also the boxes of the `face` object-detection entries, except
/// those of a face that a `face` meta already gives (gpenfilter writes both).
pub fn given_faces(buffer: &gst::BufferRef, size: (u32, u32)) -> Vec<GivenFace> {
    let faces = buffer.iter_meta::<VideoRegionOfInterestMeta>().filter(|m| m.roi_type() == ROI_TYPE);
    #[allow(unused_mut)]
    let mut given: Vec<GivenFace> = faces.map(|m| given_face(&m, size)).collect();
    #[cfg(feature = "analytics")]
    {
        let rois: Vec<_> = buffer.iter_meta::<VideoRegionOfInterestMeta>().filter(|m| m.roi_type() == ROI_TYPE).map(|m| m.rect()).collect();
        let known = |r: &(u32, u32, u32, u32)| rois.iter().any(|m| super::analytics::same_face(*m, *r));
        let boxes = super::analytics::face_rects(buffer, size).into_iter().filter(|r| !known(r));
        given.extend(boxes.map(boxed));
    }
    given
}

/// Another detector's box: a score is not known, and the landmarks are found in it.
fn boxed((x, y, w, h): (u32, u32, u32, u32)) -> GivenFace {
    GivenFace { bbox: [x as f32, y as f32, (x + w) as f32, (y + h) as f32], score: 1.0, landmarks: None }
}

fn given_face(m: &VideoRegionOfInterestMeta, size: (u32, u32)) -> GivenFace {
    let boxed = boxed(m.rect());
    let Some(p) = m.param(PARAMS) else { return boxed };
    let doubles = |field: &str| -> Option<Vec<f32>> {
        let a = p.get::<gst::Array>(field).ok()?;
        a.iter().map(|v| v.get::<f64>().ok().map(|v| v as f32)).collect()
    };
    let (Some(bbox), Some(lm), Ok(score)) = (doubles("box"), doubles("landmarks"), p.get::<f64>("score")) else { return boxed };
    let (Ok(bbox), true) = (<[f32; 4]>::try_from(bbox), lm.len() == 10) else { return boxed };
    if rect_of(&bbox, size) != m.rect() || lm.iter().any(|v| !v.is_finite()) {
        return boxed;
    }
    let mut landmarks = [[0f32; 2]; 5];
    for (k, p) in landmarks.iter_mut().enumerate() {
        *p = [lm[2 * k], lm[2 * k + 1]];
    }
    GivenFace { bbox, score: score as f32, landmarks: Some(landmarks) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32) -> Face {
        Face {
            bbox: [x, 10.5, x + 40.2, 60.0],
            score: 0.9,
            landmarks: [[x + 10.0, 20.0], [x + 30.0, 20.0], [x + 20.0, 30.0], [x + 12.0, 40.0], [x + 28.0, 42.5]],
        }
    }

    #[test]
    fn rectangles_round_outwards_and_stay_in_the_frame() {
        assert_eq!(rect_of(&[10.4, 20.6, 30.2, 40.0], (100, 100)), (10, 20, 21, 20));
        assert_eq!(rect_of(&[-5.0, -1.0, 120.0, 50.5], (100, 80)), (0, 0, 100, 51));
        assert_eq!(rect_of(&[f32::NAN, 0.0, 10.0, 10.0], (100, 80)), (0, 0, 10, 10));
        assert_eq!(rect_of(&[150.0, 0.0, 160.0, 10.0], (100, 80)), (100, 0, 0, 10));
    }

    #[test]
    fn faces_written_are_read_back_and_others_are_boxes() {
        gst::init().unwrap();
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().unwrap();
        attach(b, &[face(5.0), face(100.0)], &[3, 4], true, (320, 240));
        VideoRegionOfInterestMeta::add(b, "face", (200, 10, 30, 40));
        VideoRegionOfInterestMeta::add(b, "licence-plate", (0, 0, 10, 10));
        let given = given_faces(b, (320, 240));
        assert_eq!(given.len(), 3);
        for (g, f) in given.iter().zip([face(5.0), face(100.0)]) {
            assert_eq!((g.bbox, g.score, g.landmarks), (f.bbox, f.score, Some(f.landmarks)));
        }
        assert_eq!(given[2], GivenFace { bbox: [200.0, 10.0, 230.0, 50.0], score: 1.0, landmarks: None });
        let ids: Vec<i32> = b.iter_meta::<VideoRegionOfInterestMeta>().map(|m| m.id()).collect();
        assert_eq!(ids, [3, 4, 0, 0]);
        // Read on a frame of another size (an element scaled the frame, not the parameters):
        // the rectangles no longer match their boxes, and the faces are boxes again.
        assert!(given_faces(b, (32, 24)).iter().all(|g| g.landmarks.is_none()));
        // A rectangle moved without its parameters.
        b.iter_meta_mut::<VideoRegionOfInterestMeta>().next().unwrap().set_rect((6, 10, 40, 50));
        assert_eq!(given_faces(b, (320, 240))[0].landmarks, None);
        assert!(has_ours(b));
        remove_ours(b);
        assert!(!has_ours(b));
        let left: Vec<&str> = b.iter_meta::<VideoRegionOfInterestMeta>().map(|m| m.roi_type()).collect();
        assert_eq!(left, ["face", "licence-plate"]);
        scale_all(b, 2);
        assert_eq!(b.iter_meta::<VideoRegionOfInterestMeta>().next().unwrap().rect(), (400, 20, 60, 80));
    }

    #[test]
    fn upscaled_faces_move_by_pixel_centres() {
        let f = upscaled(&face(5.0), 2);
        assert_eq!(f.bbox[0], 10.5);
        assert_eq!(f.landmarks[4], [66.5, 85.5]);
        assert_eq!(upscaled(&face(5.0), 1), face(5.0));
    }
}
