//! A detected face: its box, score and five landmarks, in frame pixels.

/// A detected face: box `[x1, y1, x2, y2]`, score, and five landmarks in RetinaFace order (eye
/// image-left, eye image-right, nose, mouth corner image-left, mouth corner image-right), in
/// frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }

    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }

    /// Maps coordinates found on a frame scaled by `scale` back to the frame.
    pub fn unscaled(&self, scale: f32) -> Face {
        self.unscaled_xy([scale, scale])
    }

    /// Maps coordinates found on a frame scaled by `sx` in x and `sy` in y back to the frame.
    pub fn unscaled_xy(&self, [sx, sy]: [f32; 2]) -> Face {
        let [x1, y1, x2, y2] = self.bbox;
        Face { bbox: [x1 / sx, y1 / sy, x2 / sx, y2 / sy], score: self.score, landmarks: self.landmarks.map(|[x, y]| [x / sx, y / sy]) }
    }
}
