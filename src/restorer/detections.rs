//! A frame between its begin and its finish: the frame on the device, its faces and their
//! tracks, and its fate when it was decided already.

use std::time::Duration;

use tch::Tensor;

use super::ahead::AheadSlot;
use super::outcome::Outcome;
use crate::align::Stretch;
use crate::detect::Face;

/// A frame begun ([`Stream::begin`](super::Stream::begin)) and not finished yet.
pub struct Detections {
    /// The faces to restore, best first (video: followed along tracks).
    pub faces: Vec<Face>,
    /// The track of each face; empty for a still image.
    pub ids: Vec<u64>,
    /// Whether the detector ran on this frame (else the faces were carried by their tracks).
    pub detected: bool,
    /// Whether this frame began a new scene (every track was ended before it).
    pub scene_cut: bool,
    /// The frame, `1 x 3 x H x W` float 0..255 on the device (undefined when unreadable).
    pub(super) frame: Tensor,
    /// Decided before restoration (the detector ran out of memory, the memory is unreadable).
    pub(super) decided: Option<Outcome>,
    /// The frame's number in its stream (video), for the state its tracks carry to the next.
    pub(super) serial: Option<u64>,
    /// The faces restored ahead in a batch with other frames' ([`super::batch`]).
    pub(super) ahead: AheadSlot,
    /// Wall time of registering the tracked faces' crops onto the previous frame's.
    pub registration: Duration,
    /// Each face's thumbnail as registered (empty when nothing was registered).
    pub(super) thumbs: Vec<Option<Tensor>>,
    /// How the frame's pixels are displayed: faces are aligned in display geometry.
    pub(super) stretch: Stretch,
}

impl std::fmt::Debug for Detections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detections")
            .field("faces", &self.faces)
            .field("ids", &self.ids)
            .field("detected", &self.detected)
            .field("scene_cut", &self.scene_cut)
            .field("decided", &self.decided)
            .field("serial", &self.serial)
            .field("restored_ahead", &self.restored_ahead())
            .finish()
    }
}

impl Detections {
    /// A frame with no faces (yet), `decided` or not, numbered `serial` in its stream.
    pub(super) fn empty(frame: Tensor, decided: Option<Outcome>, serial: Option<u64>) -> Self {
        Detections {
            faces: Vec::new(),
            ids: Vec::new(),
            detected: false,
            scene_cut: false,
            frame,
            decided,
            serial,
            ahead: AheadSlot::Open,
            registration: Duration::ZERO,
            thumbs: Vec::new(),
            stretch: Stretch::NONE,
        }
    }

    /// Whether the frame's faces were restored ahead, in a batch with other frames' faces.
    pub fn restored_ahead(&self) -> bool {
        matches!(self.ahead, AheadSlot::Restored(_))
    }

    /// Whether the frame's faces may still join a batch ahead: neither restored in one nor
    /// left, after a failed one, to be restored alone.
    pub(super) fn open_ahead(&self) -> bool {
        matches!(self.ahead, AheadSlot::Open)
    }

    /// The frame's fate, when it was decided as it began.
    pub fn decided(&self) -> Option<&Outcome> {
        self.decided.as_ref()
    }

    /// `(width, height)` of the frame.
    pub(super) fn size(&self) -> (i64, i64) {
        let s = self.frame.size();
        (s[3], s[2])
    }
}
