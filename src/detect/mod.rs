//! Face detection: RetinaFace on libtorch, with the pure geometry around it (priors, decoding,
//! non-maximum suppression) kept apart and unit-tested.

mod face;
mod priors;
mod retinaface;

pub use face::Face;
pub use priors::{decode, PriorConfig};
pub use retinaface::{DetectorVariant, RetinaFace};

/// NMS IoU threshold of the reference detector.
pub const NMS_THRESHOLD: f32 = 0.4;

/// Runs `detector` on `rgb` (`1 x 3 x H x W`, values 0..255, on the detector's device) at each
/// scale (1.0 = native; the image is resized bilinearly), maps the faces back to `rgb`'s pixels
/// and merges the passes by non-maximum suppression.
pub fn detect_at_scales(detector: &RetinaFace, rgb: &tch::Tensor, scales: &[f64], threshold: f64) -> Result<Vec<Face>, tch::TchError> {
    let scales: Vec<[f64; 2]> = scales.iter().map(|&s| [s, s]).collect();
    detect_at_scales_with(detector, rgb, &scales, threshold, &[]).map(|(faces, _)| faces)
}

/// As [`detect_at_scales`], with a scale per axis (`[x, y]`: a picture of non-square pixels is
/// seen by the detector in display proportions), reading the candidates of every pass and the
/// `extra` device values (returned as host values) in one copy from the device.
pub fn detect_at_scales_with(
    detector: &RetinaFace,
    rgb: &tch::Tensor,
    scales: &[[f64; 2]],
    threshold: f64,
    extra: &[&tch::Tensor],
) -> Result<(Vec<Face>, Vec<Vec<f32>>), tch::TchError> {
    let s = rgb.size();
    let (h, w) = (s[2] as f64, s[3] as f64);
    let mut passes = Vec::with_capacity(scales.len());
    for &scale @ [sx, sy] in scales {
        let image = if scale == [1.0, 1.0] {
            rgb.shallow_clone()
        } else {
            // cv2.resize(fx, fy) rounds the size, maps coordinates by 1/scale, and (on 8-bit
            // frames) rounds the values.
            let size = [((h * sy).round() as i64).max(1), ((w * sx).round() as i64).max(1)];
            rgb.f_upsample_bilinear2d(size, false, Some(sy), Some(sx))?.f_round()?
        };
        let size = (image.size()[2], image.size()[3]);
        passes.push((detector.candidates(&image)?, size, scale));
    }
    let mut parts: Vec<&tch::Tensor> = passes.iter().map(|(c, _, _)| c).collect();
    parts.extend_from_slice(extra);
    let mut read = crate::transfer::download_f32(&parts)?;
    let extra_values = read.split_off(passes.len());
    let mut all = Vec::new();
    for ((_, size, scale), rows) in passes.iter().zip(&read) {
        all.extend(detector.decode_candidates(rows, *size, threshold).into_iter().map(|f| f.unscaled_xy(scale.map(|v| v as f32))));
    }
    let kept = non_maximum_suppression(all, NMS_THRESHOLD);
    Ok((if scales.len() > 1 { drop_contained(kept, CONTAINED) } else { kept }, extra_values))
}

/// Share of a face's box inside a larger face's box beyond which it is a fragment of that face.
pub const CONTAINED: f32 = 0.6;

/// Drops faces lying mostly inside a larger face. A detector run at a scale too fine for a big
/// face reports parts of it (eyes, mouth) as faces; the coarser pass finds the whole face, and
/// IoU-based suppression keeps both, as a small box has a small IoU with a big one.
pub fn drop_contained(faces: Vec<Face>, share: f32) -> Vec<Face> {
    let area = |b: &[f32; 4]| (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
    let inside = |small: &Face, big: &Face| {
        let (a, b) = (&small.bbox, &big.bbox);
        let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        area(a) > 0.0 && area(b) > area(a) && w * h >= share * area(a)
    };
    faces.iter().filter(|f| !faces.iter().any(|g| inside(f, g))).copied().collect()
}

/// Intersection over union with the `+1` pixel convention of the reference `py_cpu_nms`.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0] + 1.0).max(0.0) * (r[3] - r[1] + 1.0).max(0.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression: faces by descending score, dropping any that overlaps a kept
/// one by more than `threshold`. Ties keep the earlier face.
pub fn non_maximum_suppression(mut faces: Vec<Face>, threshold: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Face> = Vec::with_capacity(faces.len());
    for f in faces {
        if kept.iter().all(|k| iou(&k.bbox, &f.bbox) <= threshold) {
            kept.push(f);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(bbox: [f32; 4], score: f32) -> Face {
        Face { bbox, score, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn iou_of_identical_disjoint_and_half_boxes() {
        let a = [0.0, 0.0, 9.0, 9.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[20.0, 20.0, 29.0, 29.0]), 0.0);
        // 10x10 boxes shifted by 5: 50 / 150
        assert!((iou(&a, &[5.0, 0.0, 14.0, 9.0]) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn nms_keeps_the_best_of_each_cluster_in_score_order() {
        let faces = vec![
            face([0.0, 0.0, 10.0, 10.0], 0.8),
            face([1.0, 1.0, 11.0, 11.0], 0.9),
            face([50.0, 50.0, 60.0, 60.0], 0.7),
            face([0.0, 0.0, 10.0, 10.0], f32::NAN),
        ];
        let kept = non_maximum_suppression(faces, 0.4);
        // NaN sorts above every number under total_cmp; it is kept, never panics.
        let scores: Vec<f32> = kept.iter().map(|f| f.score).filter(|s| !s.is_nan()).collect();
        assert_eq!(scores, vec![0.7]);
        assert!(kept.iter().any(|f| f.score.is_nan()));
        let kept = non_maximum_suppression(
            vec![face([0.0, 0.0, 10.0, 10.0], 0.8), face([1.0, 1.0, 11.0, 11.0], 0.9), face([50.0, 50.0, 60.0, 60.0], 0.7)],
            0.4,
        );
        assert_eq!(kept.iter().map(|f| f.score).collect::<Vec<_>>(), vec![0.9, 0.7]);
    }

    #[test]
    fn fragments_inside_a_larger_face_are_dropped() {
        let big = face([100.0, 100.0, 400.0, 450.0], 0.95);
        let eye = face([150.0, 180.0, 230.0, 260.0], 0.99);
        let neighbour = face([380.0, 120.0, 480.0, 240.0], 0.9); // 20 % inside the big box
        let kept = drop_contained(vec![eye, big, neighbour], CONTAINED);
        assert_eq!(kept, vec![big, neighbour]);
    }

    #[test]
    fn priors_cover_every_cell_of_every_level() {
        let p = PriorConfig::small();
        // astronaut.png, 512x512: 64x64, 32x32, 16x16 cells, 2 anchors each
        assert_eq!(p.priors(512, 512).len(), 10752);
        assert_eq!(p.feature_maps(241, 427), [(31, 54), (16, 27), (8, 14)]);
        let pr = p.priors(240, 320);
        assert_eq!(pr[0], [4.0 / 320.0, 4.0 / 240.0, 10.0 / 320.0, 10.0 / 240.0]);
        assert_eq!(pr[1][2], 20.0 / 320.0);
    }

    #[test]
    fn decode_of_zero_regression_is_the_prior() {
        let (b, lm) = decode(&[0.5, 0.5, 0.1, 0.2], &[0.0; 4], &[0.0; 10], [0.1, 0.2], (100.0, 50.0));
        for (got, want) in b.iter().zip([45.0, 20.0, 55.0, 30.0]) {
            assert!((got - want).abs() < 1e-4, "{b:?}");
        }
        assert!(lm.iter().all(|p| (p[0] - 50.0).abs() < 1e-4 && (p[1] - 25.0).abs() < 1e-4), "{lm:?}");
    }
}
