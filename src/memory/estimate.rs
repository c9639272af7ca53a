//! A pure estimate of a plan's peak memory, from the model's channel table.

use super::plan::Plan;
use crate::gpen::{Banding, GpenConfig, Strips};

/// Predicts peak memory from the model's channel table. The constants count the tensors alive
/// at once in this implementation's forward pass; `calibration` scales the activation part
/// after one measured run (1.0 before).
#[derive(Debug, Clone, PartialEq)]
pub struct Estimator {
    pub calibration: f64,
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator { calibration: 1.0 }
    }
}

impl Estimator {
    /// Bytes of the generator's weights in a precision (half keeps the style path in fp32,
    /// which is small, and the modulated convs' fp32 masters).
    pub fn weight_bytes(cfg: &GpenConfig, half: bool) -> u64 {
        let params: i64 =
            cfg.expected_shapes().iter().filter(|(n, _)| !n.ends_with(".kernel")).map(|(_, s)| s.iter().product::<i64>()).sum();
        let bytes = if half { 3 } else { 4 }; // half: about half the convs stay fp32 masters
        params as u64 * bytes
    }

    /// Elements alive at the peak of one forward of `batch` faces with `elem_bytes` per element
    /// (which decide the banding of the top levels, [`Strips::plan`]).
    pub fn activation_elements(cfg: &GpenConfig, batch: i64, elem_bytes: i64) -> u64 {
        Self::activation_elements_with(cfg, batch, elem_bytes, Banding::Default)
    }

    /// As [`activation_elements`](Self::activation_elements), with the top levels banded as
    /// `banding` says.
    pub fn activation_elements_with(cfg: &GpenConfig, batch: i64, elem_bytes: i64, banding: Banding) -> u64 {
        let size = cfg.size;
        let strips = Strips::plan_with(cfg, batch, elem_bytes, banding);
        let entry = strips.map_or(size, |s| size >> s.levels);
        // Banded levels exist a band (with its halos) at a time, beside the whole entry map.
        let (share, held) = match strips {
            Some(s) => {
                let rows = s.rows + 2 * Strips::halo(s.levels) * (1 << s.levels);
                ((rows as f64 / size as f64).min(1.0), 2 * cfg.channels(entry) * entry * entry)
            }
            None => (1.0, 0),
        };
        // Encoder features stay alive until the decoder uses them; with bands the top one never
        // exists whole.
        let first = i64::from(strips.is_some());
        let encoder: i64 = (first..cfg.log_size() - 1).map(|i| cfg.channels(size >> i) * (size >> i) * (size >> i)).sum();
        // Worst decoder level: the up-convolution's (2r+1)^2 output and its blurred copy, the
        // level's input, and the concatenation with the encoder feature and its activation.
        let level = (3..=cfg.log_size())
            .map(|l| {
                let r = 1i64 << l;
                let c = cfg.channels(r);
                let input = 2 * cfg.channels(r / 2) * (r / 2) * (r / 2);
                let up = c * (2 * r + 1) * (2 * r + 1) + c * r * r;
                let styled = 5 * c * r * r;
                let work = (input + up.max(styled)) as f64;
                if r > entry {
                    held as f64 + work * share
                } else {
                    work
                }
            })
            .fold(0.0, f64::max);
        ((encoder as f64 + level) * batch as f64) as u64
    }

    /// Bytes of face parsing a batch of `batch` faces with GPEN's ParseNet (official
    /// configuration, 512x512 input), weights included. The peak is in the first down-sampling
    /// block: its input (64 channels at 512), the full-resolution output of its first conv (128
    /// channels) and that output padded for the second, beside the shortcut (128 at 256); the
    /// masks and their blur (float, 512x512) are small beside it.
    pub fn parse_bytes(batch: i64, elem_bytes: i64) -> u64 {
        const WEIGHTS: i64 = 21_300_000;
        let r = 512i64 * 512;
        let peak = 64 * r + 128 * r + 128 * 514 * 514 + 128 * r / 4;
        ((WEIGHTS + peak * batch) * elem_bytes) as u64
    }

    /// Peak bytes of restoring a frame of `width x height` with `faces` faces under `plan`.
    pub fn peak_bytes(&self, cfg: &GpenConfig, plan: &Plan, faces: usize, frame: (i64, i64)) -> u64 {
        self.peak_bytes_with(cfg, plan, faces, frame, Banding::Default)
    }

    /// As [`peak_bytes`](Self::peak_bytes), with the top levels banded as `banding` says.
    pub fn peak_bytes_with(&self, cfg: &GpenConfig, plan: &Plan, faces: usize, (width, height): (i64, i64), banding: Banding) -> u64 {
        let elem = if plan.half { 2.0 } else { 4.0 };
        let batch = faces.min(plan.face_batch).max(1) as i64;
        let activations = Self::activation_elements_with(cfg, batch, elem as i64, banding) as f64 * elem * self.calibration;
        // The float frame, the crops and restored faces of every face (fp32), paste buffers.
        let s = (plan.size * plan.size) as f64;
        let frame = (width * height) as f64 * 4.0 * (3.0 + 4.0);
        let faces_bytes = faces as f64 * s * 4.0 * 3.0 * 2.0;
        // Kept by each face's track for the next frame: its restored face (temporal
        // consistency) and its parsing mask as parsed and as pasted.
        let kept = faces as f64 * s * 4.0 * (3.0 + 2.0);
        let parse = if plan.parse { Self::parse_bytes(batch, elem as i64) as f64 } else { 0.0 };
        Self::weight_bytes(cfg, plan.half) as f64 as u64 + (activations + frame + faces_bytes + kept + parse) as u64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn face_parsing_adds_its_own_cost_only_when_planned() {
        let e = Estimator::default();
        let c512 = GpenConfig::official(512);
        let rect = plan(512, false, 1);
        let parse = Plan { parse: true, ..rect };
        let extra = e.peak_bytes(&c512, &parse, 1, (1920, 1080)) - e.peak_bytes(&c512, &rect, 1, (1920, 1080));
        assert_eq!(extra, Estimator::parse_bytes(1, 4));
        // About 370 MiB of activations a face in fp32, beside 85 MB of weights.
        assert!((400 << 20..500 << 20).contains(&extra), "{} MiB", extra >> 20);
        assert!(Estimator::parse_bytes(4, 2) < Estimator::parse_bytes(4, 4));
    }

    #[test]
    fn whole_maps_cost_more_than_bands_only_where_banding_applies() {
        let e = Estimator::default();
        let plan = Plan { size: 512, half: false, face_batch: 1, tile: None, parse: false };
        let c512 = GpenConfig::official(512);
        let (banded, whole) = (
            e.peak_bytes_with(&c512, &plan, 1, (1920, 1080), Banding::Default),
            e.peak_bytes_with(&c512, &plan, 1, (1920, 1080), Banding::Off),
        );
        assert!(whole > banded + (100 << 20), "whole {} MiB, banded {} MiB", whole >> 20, banded >> 20);
        assert_eq!(e.peak_bytes(&c512, &plan, 1, (1920, 1080)), banded);
        // GPEN-256 in half precision is never banded: both the same.
        let plan = Plan { size: 256, half: true, face_batch: 1, tile: None, parse: false };
        let c256 = GpenConfig::official(256);
        assert_eq!(e.peak_bytes_with(&c256, &plan, 1, (640, 360), Banding::Off), e.peak_bytes(&c256, &plan, 1, (640, 360)));
    }

    use super::*;
    use crate::memory::mib;

    fn plan(size: i64, half: bool, face_batch: usize) -> Plan {
        Plan { size, half, face_batch, tile: None, parse: false }
    }

    #[test]
    fn estimate_grows_with_size_batch_and_precision() {
        let e = Estimator::default();
        let hd = (1920, 1080);
        let c512 = GpenConfig::official(512);
        let c1024 = GpenConfig::official(1024);
        let p = |c: &GpenConfig, pl: Plan| e.peak_bytes(c, &pl, 4, hd);
        assert!(p(&c1024, plan(1024, false, 1)) > p(&c512, plan(512, false, 1)));
        assert!(p(&c512, plan(512, false, 4)) > p(&c512, plan(512, false, 1)));
        assert!(p(&c512, plan(512, true, 1)) < p(&c512, plan(512, false, 1)));
        // More faces than the batch only add their crops, restorations and track states (a face
        // and two masks), not activations: 44 bytes a pixel of each face.
        let (b1, b8) = (e.peak_bytes(&c512, &plan(512, false, 1), 1, hd), e.peak_bytes(&c512, &plan(512, false, 1), 8, hd));
        assert_eq!(b8 - b1, 7 * 512 * 512 * 44);
    }

    #[test]
    fn estimate_for_one_512_face_is_in_the_measured_range() {
        // Measured on CPU (scripts/bench.sh): about 0.95 GiB peak resident for one fp32 512
        // face with banded top levels, of which about 0.37 GiB is the libtorch runtime itself.
        let b = Estimator::default().peak_bytes(&GpenConfig::official(512), &plan(512, false, 1), 1, (512, 512));
        assert!((450 << 20..900 << 20).contains(&b), "{} MiB", mib(b));
    }

    #[test]
    fn banded_levels_cut_the_estimate_of_large_maps_only() {
        // GPEN-512 fp32 bands its top two levels; the tiny maps of GPEN-256 bf16 are not banded.
        // Whole maps: ~130 MiB of encoder features and ~400 MiB at the top level; banded: the
        // encoder below its top, the 128x128 map held, one band of the top level.
        let c512 = GpenConfig::official(512);
        let banded = Estimator::activation_elements(&c512, 1, 4) * 4;
        assert!((128 << 20..320 << 20).contains(&banded), "{} MiB", mib(banded));
        assert!(Estimator::activation_elements(&c512, 4, 4) > Estimator::activation_elements(&c512, 1, 4));
        let c256 = GpenConfig::official(256);
        assert_eq!(Strips::plan(&c256, 1, 2), None);
        assert_eq!(Estimator::activation_elements(&c256, 2, 2), 2 * Estimator::activation_elements(&c256, 1, 2));
    }

    #[test]
    fn calibration_scales_the_activations_only() {
        let c = GpenConfig::official(256);
        let hd = (640, 360);
        let base = Estimator::default().peak_bytes(&c, &plan(256, false, 1), 1, hd);
        let double = Estimator { calibration: 2.0 }.peak_bytes(&c, &plan(256, false, 1), 1, hd);
        let act = Estimator::activation_elements(&c, 1, 4) * 4;
        assert!((double - base).abs_diff(act) < 1024);
    }
}
