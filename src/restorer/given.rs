//! Faces found elsewhere (another detector, an earlier pass, metadata on the frame), restored as
//! the detector's are: a face with its five landmarks is aligned as it is; one with a box only
//! gets its landmarks from the detector run inside the box.

use tch::Tensor;

use super::find::find_faces;
use super::settings::FaceSettings;
use crate::align::Stretch;
use crate::detect::{detect_at_scales, iou, Face, RetinaFace, NMS_THRESHOLD};
use crate::error::Error;
use crate::restorer::video::Supplied;

/// A face found elsewhere: its box `[x1, y1, x2, y2]` in frame pixels, a score, and its five
/// landmarks (RetinaFace order) when its source had them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GivenFace {
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: Option<[[f32; 2]; 5]>,
}

/// Where the faces of a frame come from ([`Restorer::begin_from`](super::Stream::begin_from)).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum FaceSource {
    /// The detector, on its schedule (`detection-interval`).
    #[default]
    Detector,
    /// These faces only; the detector never looks at the whole frame.
    Given(Vec<GivenFace>),
    /// These faces and the detector's, run on every frame; a detected face overlapping a given
    /// one is the same face, and the given one is kept.
    Both(Vec<GivenFace>),
}

/// How far a box without landmarks is grown on each side, as a share of its width and height,
/// before the detector looks inside it: RetinaFace needs context around a face, and a tight box
/// from another detector may cut off the brows or chin that the alignment needs.
const GROW: f32 = 0.5;

/// Long side, in pixels, a larger grown box is scaled down to for the detector: a face of about
/// half that, well inside the anchors of every variant. Smaller boxes are detected at their
/// native size, as whole frames are (enlarged, the landmarks move by several pixels).
const REFINE_SIZE: f64 = 320.0;

/// The faces of a frame for [`VideoFaces::next_supplied`](super::video::VideoFaces::next_supplied):
/// `given` (landmarks found inside the boxes that lack them), with the detector's faces when
/// `detect`; `extra` device values are read in the same copy as the detections, or alone.
pub(super) fn supply(
    detector: &RetinaFace,
    settings: &FaceSettings,
    frame: &Tensor,
    stretch: Stretch,
    given: &[GivenFace],
    detect: bool,
    extra: &[&Tensor],
) -> Result<Supplied, Error> {
    let live = &settings.live;
    let mut faces = Vec::with_capacity(given.len());
    let mut skipped = 0;
    for g in given {
        let face = match g.landmarks {
            Some(landmarks) => Some(Face { bbox: g.bbox, score: g.score, landmarks }),
            None => refine(detector, live.threshold, frame, &g.bbox)?,
        };
        match face {
            Some(f) => faces.push(f),
            None => skipped += 1,
        }
    }
    faces.retain(|f| f.width().min(f.height()) >= live.min_face_size);
    let values = if detect {
        let (detected, values) = find_faces(detector, settings, frame, stretch, extra)?;
        let new: Vec<Face> = detected.into_iter().filter(|d| faces.iter().all(|g| iou(&g.bbox, &d.bbox) <= NMS_THRESHOLD)).collect();
        faces.extend(new);
        values
    } else {
        crate::transfer::download_f32(extra)?
    };
    if live.max_faces > 0 {
        faces.truncate(live.max_faces);
    }
    Ok(Supplied { faces, extra: values, detected: detect, skipped })
}

/// The face inside `bbox`, found by the detector on the grown box: of the faces whose centre
/// lies in `bbox`, the one overlapping it most; `None` when there is none.
fn refine(detector: &RetinaFace, threshold: f64, frame: &Tensor, bbox: &[f32; 4]) -> Result<Option<Face>, Error> {
    let _guard = tch::no_grad_guard();
    let (h, w) = (frame.size()[2], frame.size()[3]);
    let (bw, bh) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let x0 = ((bbox[0] - GROW * bw).floor() as i64).clamp(0, w);
    let x1 = ((bbox[2] + GROW * bw).ceil() as i64).clamp(0, w);
    let y0 = ((bbox[1] - GROW * bh).floor() as i64).clamp(0, h);
    let y1 = ((bbox[3] + GROW * bh).ceil() as i64).clamp(0, h);
    // Too small (or off the frame) to hold a face the detector could find.
    if !(bw > 0.0 && bh > 0.0) || x1 - x0 < 8 || y1 - y0 < 8 {
        return Ok(None);
    }
    let crop = frame.f_narrow(3, x0, x1 - x0)?.f_narrow(2, y0, y1 - y0)?;
    let scale = (REFINE_SIZE / (x1 - x0).max(y1 - y0) as f64).min(1.0);
    let found = detect_at_scales(detector, &crop, &[scale], threshold)?;
    let (dx, dy) = (x0 as f32, y0 as f32);
    let inside = |f: &Face| {
        let (cx, cy) = ((f.bbox[0] + f.bbox[2]) / 2.0, (f.bbox[1] + f.bbox[3]) / 2.0);
        cx >= bbox[0] && cx <= bbox[2] && cy >= bbox[1] && cy <= bbox[3]
    };
    Ok(found
        .into_iter()
        .map(|f| Face {
            bbox: [f.bbox[0] + dx, f.bbox[1] + dy, f.bbox[2] + dx, f.bbox[3] + dy],
            score: f.score,
            landmarks: f.landmarks.map(|[x, y]| [x + dx, y + dy]),
        })
        .filter(inside)
        .max_by(|a, b| iou(&a.bbox, bbox).total_cmp(&iou(&b.bbox, bbox))))
}
