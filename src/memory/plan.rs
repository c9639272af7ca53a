//! What a frame is processed with, and what the memory policy does with one that does not fit.

/// What a frame is processed with; the rungs of the degradation ladder change these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub size: i64,
    pub half: bool,
    pub face_batch: usize,
    /// Input pixels per upscaler tile (0: the whole frame); `None` when nothing is upscaled.
    pub tile: Option<i64>,
    /// Faces are pasted through face-parsing masks (ParseNet), else through the rectangle.
    pub parse: bool,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "size={} fp16={} face-batch={}", self.size, self.half, self.face_batch)?;
        if let Some(t) = self.tile {
            write!(f, " tile-size={t}")?;
        }
        if self.parse {
            write!(f, " mask=parse")?;
        }
        Ok(())
    }
}

/// What happens to a frame that does not fit in the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryPolicy {
    /// Walk the ladder: half precision, smaller face batches, the next smaller size (when its
    /// checkpoint is in the model folder); when nothing fits, drop the frame.
    #[default]
    Degrade,
    /// Drop the frame.
    Drop,
    /// Leave the frame as it is.
    Passthrough,
    /// Fail.
    Error,
}

/// The memory budget and what to do when a frame does not fit.
#[derive(Debug, Clone, Default)]
pub struct MemorySettings {
    /// MiB the restoration may use (weights included); 0 = what the device has free at start
    /// (on the CPU, the system's available memory).
    pub budget_mib: u64,
    pub policy: MemoryPolicy,
    /// Testing switch (feature `fault-injection`): every Nth generator forward fails as out of
    /// memory (0 = off).
    pub fail_every: u64,
}
