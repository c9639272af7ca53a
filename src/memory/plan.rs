//! What a frame is processed with.

/// What a frame is processed with; the rungs of the degradation ladder change these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub size: i64,
    pub half: bool,
    pub face_batch: usize,
    /// Input pixels per upscaler tile (0: the whole frame); `None` when nothing is upscaled.
    pub tile: Option<i64>,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "size={} fp16={} face-batch={}", self.size, self.half, self.face_batch)?;
        match self.tile {
            Some(t) => write!(f, " tile-size={t}"),
            None => Ok(()),
        }
    }
}
