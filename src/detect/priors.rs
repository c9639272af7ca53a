//! RetinaFace's anchors (priors) per variant, and the decoding of one prior's regressions.

/// Anchor layout of a RetinaFace variant.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorConfig {
    pub min_sizes: [[f32; 2]; 3],
    pub steps: [i64; 3],
    pub variance: [f32; 2],
}

impl PriorConfig {
    /// Anchors of the original RetinaFace (Pytorch_Retinaface, GPEN's R50).
    pub fn standard() -> Self {
        PriorConfig { min_sizes: [[16.0, 32.0], [64.0, 128.0], [256.0, 512.0]], steps: [8, 16, 32], variance: [0.1, 0.2] }
    }

    /// The smaller anchors of Face-Detector-1MB.
    pub fn small() -> Self {
        PriorConfig { min_sizes: [[10.0, 20.0], [32.0, 64.0], [128.0, 256.0]], ..Self::standard() }
    }

    /// Feature-map sizes `(rows, cols)` of the three levels for an input of `height x width`.
    pub fn feature_maps(&self, height: i64, width: i64) -> [(i64, i64); 3] {
        self.steps.map(|s| ((height + s - 1) / s, (width + s - 1) / s))
    }

    /// Priors `(cx, cy, w, h)`, normalised by the input size, in the order the heads emit them
    /// (level, row, column, anchor).
    pub fn priors(&self, height: i64, width: i64) -> Vec<[f32; 4]> {
        let mut out = Vec::new();
        for (k, (rows, cols)) in self.feature_maps(height, width).into_iter().enumerate() {
            let step = self.steps[k] as f32;
            for i in 0..rows {
                for j in 0..cols {
                    for &m in &self.min_sizes[k] {
                        out.push([
                            (j as f32 + 0.5) * step / width as f32,
                            (i as f32 + 0.5) * step / height as f32,
                            m / width as f32,
                            m / height as f32,
                        ]);
                    }
                }
            }
        }
        out
    }
}

/// Decodes one prior's regressions into a face in input pixels.
pub fn decode(prior: &[f32; 4], loc: &[f32; 4], landms: &[f32; 10], variance: [f32; 2], size: (f32, f32)) -> ([f32; 4], [[f32; 2]; 5]) {
    let (w, h) = size;
    let cx = prior[0] + loc[0] * variance[0] * prior[2];
    let cy = prior[1] + loc[1] * variance[0] * prior[3];
    let bw = prior[2] * (loc[2] * variance[1]).exp();
    let bh = prior[3] * (loc[3] * variance[1]).exp();
    let bbox = [(cx - bw / 2.0) * w, (cy - bh / 2.0) * h, (cx + bw / 2.0) * w, (cy + bh / 2.0) * h];
    let mut lm = [[0f32; 2]; 5];
    for (k, p) in lm.iter_mut().enumerate() {
        p[0] = (prior[0] + landms[2 * k] * variance[0] * prior[2]) * w;
        p[1] = (prior[1] + landms[2 * k + 1] * variance[0] * prior[3]) * h;
    }
    (bbox, lm)
}
