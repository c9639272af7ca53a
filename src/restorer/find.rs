//! The faces of a frame tensor as the detector finds them: at the detection size (and a
//! reduced pass for small-anchor detectors), best first, filtered by size and count.

use tch::Tensor;

use super::settings::FaceSettings;
use crate::align::Stretch;
use crate::detect::{detect_at_scales_with, DetectorVariant, Face, RetinaFace};
use crate::error::Error;

/// Long side of the extra reduced-scale pass of small-anchor detectors, which miss faces that
/// fill the frame.
const REDUCED_PASS: f64 = 320.0;

/// The faces of a frame tensor, best first, filtered by size and count; `extra` device values
/// are read in the same copy as the detections. The detector sees the frame in display
/// proportions (`stretch`), resampled for it alone; the faces are in stored pixels.
pub(super) fn find_faces(
    detector: &RetinaFace,
    settings: &FaceSettings,
    frame: &Tensor,
    stretch: Stretch,
    extra: &[&Tensor],
) -> Result<(Vec<Face>, Vec<Vec<f32>>), Error> {
    let _guard = tch::no_grad_guard();
    let (height, width) = (frame.size()[2] as f64 * stretch.y, frame.size()[3] as f64 * stretch.x);
    let live = &settings.live;
    let long = width.max(height);
    let size = settings.detection_size;
    let main = if size > 0 && long > size as f64 { size as f64 / long } else { 1.0 };
    let mut scales = vec![main];
    if detector.variant() == DetectorVariant::Fd1mb && long * main > 1.5 * REDUCED_PASS {
        scales.push(REDUCED_PASS / long);
    }
    // From stored pixels, per axis (exactly `[s, s]` for square pixels: a product by 1.0).
    let scales: Vec<[f64; 2]> = scales.into_iter().map(|s| [s * stretch.x, s * stretch.y]).collect();
    let (mut faces, values) = detect_at_scales_with(detector, frame, &scales, live.threshold, extra)?;
    faces.retain(|face| face.width().min(face.height()) >= live.min_face_size);
    if live.max_faces > 0 {
        faces.truncate(live.max_faces);
    }
    Ok((faces, values))
}
