//! What a stream's faces carry from frame to frame: scene cuts, tracks with smoothed landmarks,
//! and the detection interval (tracks carry the faces between detector runs).

use tch::{Kind, Tensor};

use crate::detect::Face;
use crate::error::Error;
use crate::track::{Tracker, TrackerSettings};

/// Mean absolute change (0..1) of the frame's thumbnail above which a frame starts a new scene.
/// The cuts of the Hamilton test clip measure 0.099 to 0.113, motion within its shots at most
/// 0.048.
pub const SCENE_CUT: f64 = 0.075;

/// How much each frame differs from the previous one, from small grey thumbnails.
#[derive(Debug, Default)]
pub struct SceneChange {
    previous: Option<Tensor>,
}

impl SceneChange {
    /// The mean absolute change (0..1) of the thumbnail of `frame` (`1 x 3 x H x W`, 0..255)
    /// from the previous frame's, still on the frame's device (read it when it is needed); 0
    /// for the first frame and after a change of size.
    pub fn change(&mut self, frame: &Tensor) -> Result<Option<Tensor>, Error> {
        let _guard = tch::no_grad_guard();
        let (h, w) = (frame.size()[2], frame.size()[3]);
        // A subsample of the pixels: a 1080p frame costs about 30 000 reads, not two million.
        let step = (h.min(w) / 72).max(1);
        let thumb =
            frame.f_slice(2, 0, h, step)?.f_slice(3, 0, w, step)?.f_mean_dim(1, true, Kind::Float)?.f_adaptive_avg_pool2d([18, 32])?;
        let change = match &self.previous {
            Some(prev) if prev.size() == thumb.size() => Some(prev.f_sub(&thumb)?.f_abs()?.f_mean(Kind::Float)?.f_div_scalar(255.0)?),
            _ => None,
        };
        self.previous = Some(thumb);
        Ok(change)
    }

    /// As [`change`](Self::change), read on the host.
    pub fn observe(&mut self, frame: &Tensor) -> Result<f64, Error> {
        match self.change(frame)? {
            Some(c) => Ok(crate::transfer::download_f32(&[&c])?[0][0] as f64),
            None => Ok(0.0),
        }
    }

    pub fn forget(&mut self) {
        self.previous = None;
    }
}

/// What tracking did so far.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct VideoCounters {
    pub detector_runs: u64,
    pub scene_cuts: u64,
    pub tracks_started: u64,
    pub live_tracks: u64,
    /// Faces given without landmarks in whose box the detector found no face (not restored).
    pub given_skipped: u64,
}

/// The faces of one frame of a video.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackedFaces {
    pub faces: Vec<Face>,
    /// The track of each face.
    pub ids: Vec<u64>,
    /// Whether the detector ran on this frame (else the faces were carried by their tracks).
    pub detected: bool,
    /// Whether this frame began a new scene (every track was ended before it).
    pub scene_cut: bool,
}

/// The faces of a frame found by the caller's means ([`VideoFaces::next_supplied`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Supplied {
    pub faces: Vec<Face>,
    /// The device values asked for, read on the host.
    pub extra: Vec<Vec<f32>>,
    /// Whether the detector ran on the whole frame.
    pub detected: bool,
    /// Given faces that were left out (no landmarks could be found for them).
    pub skipped: u64,
}

/// A stream's tracks, scenes and detection schedule.
#[derive(Debug, Default)]
pub struct VideoFaces {
    tracker: Tracker,
    scenes: SceneChange,
    /// Frames since the detector last ran; `None` before the first frame.
    since_detection: Option<u32>,
    counters: VideoCounters,
}

impl VideoFaces {
    pub fn new(smoothing: f64) -> Self {
        VideoFaces { tracker: Tracker::new(TrackerSettings { smoothing, ..Default::default() }), ..Default::default() }
    }

    pub fn set_smoothing(&mut self, smoothing: f64) {
        self.tracker.settings.smoothing = smoothing;
    }

    /// The faces of `frame`, `dt` seconds after the previous one. The detector runs every
    /// `interval`th frame and after a scene cut; tracks carry the faces in between. `detect`
    /// finds the faces and reads the device values it is given in the same copy: when the
    /// detector is due anyway, the scene change travels with the detections, so the device is
    /// waited for once.
    pub fn next(
        &mut self,
        frame: &Tensor,
        dt: f64,
        interval: u32,
        detect: impl FnOnce(&[&Tensor]) -> Result<(Vec<Face>, Vec<Vec<f32>>), Error>,
    ) -> Result<TrackedFaces, Error> {
        let change = self.scenes.change(frame)?;
        let due = self.since_detection.is_none_or(|n| n + 1 >= interval);
        let cut = |v: f32| v as f64 > SCENE_CUT;
        let found = match (due, change) {
            (true, Some(c)) => detect(&[&c]).map(|(faces, extra)| (cut(extra[0][0]), Some(faces))),
            (true, None) => detect(&[]).map(|(faces, _)| (false, Some(faces))),
            (false, Some(c)) => {
                let is_cut = cut(crate::transfer::download_f32(&[&c])?[0][0]);
                if is_cut {
                    detect(&[]).map(|(faces, _)| (true, Some(faces)))
                } else {
                    Ok((false, None))
                }
            }
            (false, None) => Ok((false, None)),
        };
        // A frame whose detection failed (out of memory) may begin a new scene whose cut will not
        // be seen again: nothing carries over from it.
        let (scene_cut, detected) = found.inspect_err(|_| self.reset())?;
        if scene_cut {
            self.tracker.reset();
            self.counters.scene_cuts += 1;
        }
        let tracked = match &detected {
            Some(faces) => {
                self.since_detection = Some(0);
                self.counters.detector_runs += 1;
                self.tracker.update(faces, dt)
            }
            None => {
                self.since_detection = self.since_detection.map(|n| n + 1);
                self.tracker.predict(dt)
            }
        };
        self.counters.tracks_started = self.tracker.started();
        self.counters.live_tracks = self.tracker.tracks().len() as u64;
        let (ids, faces) = tracked.into_iter().unzip();
        Ok(TrackedFaces { faces, ids, detected: detected.is_some(), scene_cut })
    }

    /// The faces of `frame` supplied by the caller (faces found elsewhere, perhaps with the
    /// detector's), `dt` seconds after the previous one, followed along the tracks as detections
    /// are. They come with every frame, so every frame updates the tracks and the detection
    /// interval does not apply. `supply` reads the device values it is given in the same copy as
    /// its own, as [`next`](Self::next)'s `detect` does.
    pub fn next_supplied(
        &mut self,
        frame: &Tensor,
        dt: f64,
        supply: impl FnOnce(&[&Tensor]) -> Result<Supplied, Error>,
    ) -> Result<TrackedFaces, Error> {
        let change = self.scenes.change(frame)?;
        let extra: Vec<&Tensor> = change.iter().collect();
        let s = supply(&extra).inspect_err(|_| self.reset())?;
        let scene_cut = s.extra.first().and_then(|v| v.first()).is_some_and(|&v| v as f64 > SCENE_CUT);
        if scene_cut {
            self.tracker.reset();
            self.counters.scene_cuts += 1;
        }
        self.counters.detector_runs += s.detected as u64;
        self.counters.given_skipped += s.skipped;
        let tracked = self.tracker.update(&s.faces, dt);
        self.counters.tracks_started = self.tracker.started();
        self.counters.live_tracks = self.tracker.tracks().len() as u64;
        let (ids, faces) = tracked.into_iter().unzip();
        Ok(TrackedFaces { faces, ids, detected: s.detected, scene_cut })
    }

    /// Ends every track and forgets the previous frame (a seek, a flush, new caps).
    pub fn reset(&mut self) {
        self.tracker.reset();
        self.scenes.forget();
        self.since_detection = None;
    }

    pub fn counters(&self) -> VideoCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn face(x: f32) -> Face {
        let lm = [[x + 10.0, 20.0], [x + 30.0, 20.0], [x + 20.0, 30.0], [x + 12.0, 40.0], [x + 28.0, 40.0]];
        Face { bbox: [x, 5.0, x + 40.0, 50.0], score: 0.99, landmarks: lm }
    }

    fn grey(v: f64) -> Tensor {
        Tensor::full([1, 3, 72, 128], v, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn the_detector_runs_on_schedule_and_after_cuts() {
        let mut v = VideoFaces::new(0.0);
        let mut runs = Vec::new();
        for i in 0..7 {
            // Frame 4 is a cut: a new picture.
            let frame = grey(if i >= 4 { 200.0 } else { 50.0 });
            let mut ran = false;
            let got = v
                .next(&frame, 1.0 / 30.0, 3, |extra| {
                    ran = true;
                    Ok((vec![face(10.0 + i as f32)], crate::transfer::download_f32(extra)?))
                })
                .unwrap();
            assert_eq!(got.detected, ran);
            assert_eq!(got.faces.len(), 1, "frame {i}: tracks carry the face between detections");
            assert_eq!(got.scene_cut, i == 4, "frame {i}");
            runs.push(ran);
        }
        assert_eq!(runs, [true, false, false, true, true, false, false]);
        let c = v.counters();
        assert_eq!((c.detector_runs, c.scene_cuts, c.tracks_started), (3, 1, 2), "the cut ends the first track");
    }

    #[test]
    fn supplied_faces_are_tracked_every_frame_without_counting_detector_runs() {
        let mut v = VideoFaces::new(0.0);
        for i in 0..4 {
            let frame = grey(if i == 3 { 200.0 } else { 50.0 });
            let got = v
                .next_supplied(&frame, 1.0 / 30.0, |extra| {
                    let extra = crate::transfer::download_f32(extra)?;
                    Ok(Supplied { faces: vec![face(10.0 + i as f32)], extra, detected: false, skipped: 1 })
                })
                .unwrap();
            assert_eq!((got.ids.as_slice(), got.scene_cut), (if i == 3 { &[2][..] } else { &[1][..] }, i == 3), "frame {i}");
            assert_eq!(got.faces[0].bbox[0], 10.0 + i as f32, "smoothing off: the face as given");
        }
        let c = v.counters();
        assert_eq!((c.detector_runs, c.scene_cuts, c.tracks_started, c.given_skipped), (0, 1, 2, 4));
    }

    #[test]
    fn reset_forgets_the_previous_frame_and_the_schedule() {
        let mut v = VideoFaces::new(0.5);
        let none = |_: &[&Tensor]| Ok((Vec::new(), vec![vec![0.0]]));
        v.next(&grey(0.0), 0.03, 10, none).unwrap();
        v.reset();
        // A very different frame right after a reset is not a cut, and is detected afresh.
        let got = v.next(&grey(255.0), 0.03, 10, none).unwrap();
        assert!(got.detected && !got.scene_cut);
        assert_eq!(v.counters().scene_cuts, 0);
    }

    #[test]
    fn scene_change_is_zero_for_the_first_frame_then_the_mean_change() {
        let mut s = SceneChange::default();
        assert_eq!(s.observe(&grey(0.0)).unwrap(), 0.0);
        assert!((s.observe(&grey(51.0)).unwrap() - 0.2).abs() < 1e-6);
        // Thumbnails have one size whatever the frame's, so frames of other sizes compare too.
        assert!((s.observe(&Tensor::zeros([1, 3, 40, 40], (Kind::Float, Device::Cpu))).unwrap() - 0.2).abs() < 1e-6);
        s.forget();
        assert_eq!(s.observe(&grey(255.0)).unwrap(), 0.0);
    }
}
