//! What a stream of whole frames follows from frame to frame: its tracks and what they kept of
//! the last written frame, the crops registered onto the previous frame's, the flicker meter.

use std::time::{Duration, Instant};

use tch::Tensor;

use super::engine::Engine;
use super::lock::Lock;
use super::settings::FaceSettings;
use super::temporal::{FlickerMeter, TrackMemory};
use super::video::VideoFaces;
use crate::align::Stretch;
use crate::detect::Face;
use crate::error::Error;

/// What a stream of whole frames follows from frame to frame.
#[derive(Debug)]
pub(super) struct FaceStream {
    /// What each live track kept of the last written frame, in aligned space.
    pub(super) tracks: TrackMemory,
    /// Each live track's crop, registered onto the previous frame's while blending is on.
    pub(super) lock: Lock,
    /// The flicker of the stream's pasted regions.
    pub(super) flicker: FlickerMeter,
    /// Summed change of parsing masks between consecutive frames of a track, before and after
    /// smoothing, kept on the device until asked for ([`Stream::mask_change`](super::Stream::mask_change)).
    pub(super) mask_change: Option<(Tensor, Tensor, u64)>,
    /// Faces pasted as their luminance only (`color=auto` on black-and-white faces), counted on
    /// the device until asked for ([`Stream::faces_grey`](super::Stream::faces_grey)).
    pub(super) faces_grey: Option<Tensor>,
    pub(super) settings: FaceSettings,
    pub(super) video: VideoFaces,
    /// Frames begun so far: each is numbered as it arrives, and its tracks' state is taken up
    /// when it is finished (frames are finished in order, possibly several begins later).
    pub(super) arrived: u64,
    /// The engine's plan the kept faces and masks were made under ([`Engine::epoch`]).
    epoch: u64,
}

impl FaceStream {
    pub(super) fn new(settings: &FaceSettings, engine: &Engine) -> Self {
        FaceStream {
            tracks: TrackMemory::default(),
            lock: Lock::default(),
            flicker: FlickerMeter::default(),
            mask_change: None,
            faces_grey: None,
            settings: settings.clone(),
            video: VideoFaces::new(settings.live.smoothing),
            arrived: 0,
            epoch: engine.epoch,
        }
    }

    /// Forgets the kept faces and masks when the engine changed plans since they were made.
    pub(super) fn follow_plan(&mut self, engine: &Engine) {
        if self.epoch != engine.epoch {
            self.tracks.clear();
            self.epoch = engine.epoch;
        }
    }

    /// With blending on, registers the tracked faces of the frame just begun (see
    /// [`Lock::follow`]); returns their registered thumbnails and the time it took.
    pub(super) fn register(
        &mut self,
        frame: &Tensor,
        faces: &mut [Face],
        ids: &[u64],
        size: i64,
        stretch: Stretch,
    ) -> Result<(Vec<Option<Tensor>>, Duration), Error> {
        let started = Instant::now();
        if self.settings.live.consistency > 0.0 {
            let thumbs = self.lock.follow(frame, faces, ids, self.arrived, size, stretch)?;
            return Ok((thumbs, started.elapsed()));
        }
        self.lock.clear();
        Ok((Vec::new(), started.elapsed()))
    }

    pub(super) fn reset(&mut self) {
        self.video.reset();
        self.lock.clear();
        self.tracks.clear();
        self.flicker.forget();
    }
}
