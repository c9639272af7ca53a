//! Faces followed across frames: detections matched to tracks by box overlap, each track's
//! landmarks smoothed by a One-Euro filter (steady when the face is still, little lag when it
//! moves), tracks ended after a few frames without their face, all reset at a scene cut.
//! Pure: no tensors, no GStreamer; the element feeds it detections and timestamps.

use crate::detect::{iou, Face};

/// A One-Euro filter (Casiez et al.: a low-pass whose cutoff rises with the signal's speed)
/// that predicts along its speed estimate before blending in each new value, as an alpha-beta
/// tracker does: the plain One-Euro filter trails steady motion by (1 - a) / a frames' worth,
/// which at the cutoffs that steady a detector's jitter is several pixels; predicting removes
/// that lag, so the cutoff can stay low.
#[derive(Debug, Clone, Copy)]
pub struct OneEuro {
    /// Cutoff (Hz) when the signal is still: lower is steadier.
    pub min_cutoff: f64,
    /// How fast the cutoff rises with speed (per unit/s): higher follows changes of motion
    /// sooner.
    pub beta: f64,
    value: Option<f64>,
    /// Units per second.
    speed: f64,
    /// Seconds predicted since the last value was seen.
    unseen: f64,
}

fn alpha(cutoff: f64, dt: f64) -> f64 {
    let tau = 1.0 / (2.0 * std::f64::consts::PI * cutoff);
    1.0 / (1.0 + tau / dt)
}

impl OneEuro {
    pub fn new(min_cutoff: f64, beta: f64) -> Self {
        OneEuro { min_cutoff, beta, value: None, speed: 0.0, unseen: 0.0 }
    }

    /// The filtered value of `x` seen `dt` seconds after the previous one.
    pub fn filter(&mut self, x: f64, dt: f64) -> f64 {
        let Some(prev) = self.value else {
            self.value = Some(x);
            return x;
        };
        let dt = dt.max(1e-6);
        let predicted = prev + self.speed * dt;
        let innovation = x - predicted;
        // After predicted frames the gains are those of the whole time since the last value,
        // so that a detection every Nth frame corrects as much as N detections would.
        let since = std::mem::take(&mut self.unseen) + dt;
        let a = alpha(self.min_cutoff + self.beta * self.speed.abs(), since);
        // Benedict and Bordner's speed gain for that position gain: critically damped.
        let b = a * a / (2.0 - a);
        let v = predicted + a * innovation;
        self.speed += b * innovation / since;
        self.value = Some(v);
        v
    }

    /// Where the value is expected `dt` seconds on, at its estimated speed (frames the detector
    /// skipped); the estimate becomes the filter's value.
    pub fn predict(&mut self, dt: f64) -> Option<f64> {
        let v = self.value? + self.speed * dt;
        self.value = Some(v);
        self.unseen += dt;
        Some(v)
    }
}

/// How tracks are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerSettings {
    /// Least box overlap (IoU) for a detection to continue a track.
    pub min_iou: f32,
    /// Frames a track survives without its face.
    pub max_misses: u32,
    /// Smoothing strength, 0 (off) to 1: maps to the One-Euro filter's still-face cutoff.
    pub smoothing: f64,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        // Ten frames bridge the short gaps where a turning or blurred face is missed.
        TrackerSettings { min_iou: 0.3, max_misses: 10, smoothing: 0.5 }
    }
}

/// A face followed across frames.
#[derive(Debug, Clone)]
pub struct Track {
    pub id: u64,
    /// The latest detection, with smoothed landmarks.
    pub face: Face,
    /// Consecutive frames without a matching detection.
    pub misses: u32,
    filters: [[OneEuro; 2]; 5],
}

/// The tracks of one stream.
#[derive(Debug, Default)]
pub struct Tracker {
    pub settings: TrackerSettings,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Self {
        Tracker { settings, tracks: Vec::new(), next_id: 1 }
    }

    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Ends every track (a scene cut: nothing carries over).
    pub fn reset(&mut self) {
        self.tracks.clear();
    }

    /// Tracks begun so far (ids are never reused).
    pub fn started(&self) -> u64 {
        self.next_id - 1
    }

    /// For a frame the detector skipped, `dt` seconds after the previous one: the faces of the
    /// tracks seen at the last detection, moved along at their estimated speed (landmarks and box
    /// alike). With smoothing off there is no speed estimate and they stay where they were.
    pub fn predict(&mut self, dt: f64) -> Vec<(u64, Face)> {
        let mut out = Vec::new();
        for track in self.tracks.iter_mut().filter(|t| t.misses == 0) {
            let old = track.face.landmarks;
            for (p, point) in track.face.landmarks.iter_mut().enumerate() {
                for (c, v) in point.iter_mut().enumerate() {
                    if let Some(x) = track.filters[p][c].predict(dt) {
                        *v = x as f32;
                    }
                }
            }
            let shift = |c: usize| track.face.landmarks.iter().zip(&old).map(|(n, o)| n[c] - o[c]).sum::<f32>() / 5.0;
            let (dx, dy) = (shift(0), shift(1));
            let b = &mut track.face.bbox;
            *b = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy];
            out.push((track.id, track.face));
        }
        out
    }

    /// The still-face cutoff (Hz) of the smoothing strength. Strength 1: 0.05 Hz (very
    /// steady); 0.5: 1 Hz; 0: 20 Hz (about the frame rate, little smoothing).
    fn min_cutoff(&self) -> f64 {
        0.05 * 400f64.powf(1.0 - self.settings.smoothing.clamp(0.0, 1.0))
    }

    fn filters(&self) -> [[OneEuro; 2]; 5] {
        filters_at(self.min_cutoff())
    }

    /// Matches this frame's detections (`dt` seconds after the previous frame) to the tracks:
    /// greedily by overlap, best pairs first. Returns the faces in detection order, each with its
    /// track id and smoothed landmarks. Unmatched detections start tracks; tracks unmatched for
    /// more than `max_misses` frames end.
    pub fn update(&mut self, detections: &[Face], dt: f64) -> Vec<(u64, Face)> {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (d, det) in detections.iter().enumerate() {
            for (t, track) in self.tracks.iter().enumerate() {
                let o = iou(&det.bbox, &track.face.bbox);
                if o >= self.settings.min_iou {
                    pairs.push((o, d, t));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut det_track: Vec<Option<usize>> = vec![None; detections.len()];
        let mut taken = vec![false; self.tracks.len()];
        for (_, d, t) in pairs {
            if det_track[d].is_none() && !taken[t] {
                det_track[d] = Some(t);
                taken[t] = true;
            }
        }
        for (t, track) in self.tracks.iter_mut().enumerate() {
            if !taken[t] {
                track.misses += 1;
            }
        }
        let smoothing = self.settings.smoothing > 0.0;
        // A strength changed while playing applies to the faces already followed.
        let min_cutoff = self.min_cutoff();
        for f in self.tracks.iter_mut().flat_map(|t| t.filters.iter_mut().flatten()) {
            f.min_cutoff = min_cutoff;
        }
        let mut out = Vec::with_capacity(detections.len());
        for (d, det) in detections.iter().enumerate() {
            let t = match det_track[d] {
                Some(t) => t,
                None => {
                    let filters = self.filters();
                    self.tracks.push(Track { id: self.next_id, face: *det, misses: 0, filters });
                    self.next_id += 1;
                    self.tracks.len() - 1
                }
            };
            let track = &mut self.tracks[t];
            if track.misses > 0 {
                // After a gap the landmarks start afresh: the face may have moved or turned, and
                // its speed is unknown.
                track.filters = filters_at(min_cutoff);
            }
            let mut face = *det;
            if smoothing {
                for (p, point) in face.landmarks.iter_mut().enumerate() {
                    for (c, v) in point.iter_mut().enumerate() {
                        *v = track.filters[p][c].filter(*v as f64, dt) as f32;
                    }
                }
            }
            track.face = face;
            track.misses = 0;
            out.push((track.id, face));
        }
        let max = self.settings.max_misses;
        self.tracks.retain(|t| t.misses <= max);
        out
    }
}

/// The ten filters of a track's five landmarks.
fn filters_at(min_cutoff: f64) -> [[OneEuro; 2]; 5] {
    // Beta measured on the detector's landmarks on sub-pixel motion (tests/tracking.rs):
    // 0.02 per px/s halves their jitter and keeps steady motion within half a pixel.
    [[OneEuro::new(min_cutoff, 0.02); 2]; 5]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32) -> Face {
        let landmarks = [[x + 10.0, y + 12.0], [x + 30.0, y + 12.0], [x + 20.0, y + 22.0], [x + 12.0, y + 32.0], [x + 28.0, y + 32.0]];
        Face { bbox: [x, y, x + 40.0, y + 45.0], score: 0.99, landmarks }
    }

    /// Deterministic jitter in -0.5..0.5.
    fn jitter(i: usize) -> f32 {
        (((i * 7919) % 101) as f32 / 100.0) - 0.5
    }

    #[test]
    fn a_still_face_is_steadied() {
        let mut t = Tracker::new(TrackerSettings::default());
        let mut raw_spread = 0f32;
        let mut smooth_spread = 0f32;
        for i in 0..120 {
            let f = face(100.0 + jitter(i) * 2.0, 50.0);
            let (_, s) = t.update(&[f], 1.0 / 30.0)[0];
            if i >= 30 {
                raw_spread = raw_spread.max((f.landmarks[0][0] - 110.0).abs());
                smooth_spread = smooth_spread.max((s.landmarks[0][0] - 110.0).abs());
            }
        }
        assert!(smooth_spread < raw_spread / 2.0, "smoothed {smooth_spread} against raw {raw_spread}");
    }

    #[test]
    fn a_moving_face_is_followed_with_little_lag() {
        let mut t = Tracker::new(TrackerSettings::default());
        let mut lag = 0f32;
        for i in 0..90 {
            // 60 px per second.
            let x = 100.0 + i as f32 * 2.0;
            let (_, s) = t.update(&[face(x, 50.0)], 1.0 / 30.0)[0];
            if i >= 30 {
                lag = lag.max((s.landmarks[0][0] - (x + 10.0)).abs());
            }
        }
        assert!(lag <= 1.0, "lag {lag} px on steady motion");
    }

    #[test]
    fn ids_persist_and_lost_faces_end_their_tracks() {
        let mut t = Tracker::new(TrackerSettings { max_misses: 2, ..Default::default() });
        let first = t.update(&[face(0.0, 0.0), face(200.0, 0.0)], 0.04);
        let ids: Vec<u64> = first.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2]);
        // Order of detections changes, ids follow the faces.
        let next = t.update(&[face(202.0, 1.0), face(2.0, 1.0)], 0.04);
        assert_eq!(next.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2, 1]);
        // The second face disappears: its track survives two frames, then ends.
        for _ in 0..2 {
            t.update(&[face(2.0, 1.0)], 0.04);
            assert_eq!(t.tracks().len(), 2);
        }
        t.update(&[face(2.0, 1.0)], 0.04);
        assert_eq!(t.tracks().len(), 1);
        // It comes back as a new track.
        let back = t.update(&[face(2.0, 1.0), face(202.0, 1.0)], 0.04);
        assert_eq!(back[1].0, 3);
    }

    #[test]
    fn skipped_frames_follow_the_estimated_motion() {
        let mut t = Tracker::new(TrackerSettings::default());
        // 60 px per second to the right, detected every frame for a second.
        for i in 0..30 {
            t.update(&[face(100.0 + i as f32 * 2.0, 50.0)], 1.0 / 30.0);
        }
        // Four frames without detection: the face keeps moving about 2 px a frame.
        let mut last = t.tracks()[0].face;
        for _ in 0..4 {
            let predicted = t.predict(1.0 / 30.0);
            assert_eq!(predicted.len(), 1);
            let (id, f) = predicted[0];
            assert_eq!(id, 1);
            let step = f.landmarks[0][0] - last.landmarks[0][0];
            assert!((step - 2.0).abs() < 0.5, "step {step} px");
            assert!((f.bbox[0] - last.bbox[0] - step).abs() < 1e-3, "the box moves with the landmarks");
            last = f;
        }
        // Detection resumes on the same track.
        let (id, _) = t.update(&[face(100.0 + 34.0 * 2.0, 50.0)], 1.0 / 30.0)[0];
        assert_eq!((id, t.started()), (1, 1));
    }

    #[test]
    fn a_scene_cut_resets_and_smoothing_off_passes_landmarks_through() {
        let mut t = Tracker::new(TrackerSettings { smoothing: 0.0, ..Default::default() });
        t.update(&[face(0.0, 0.0)], 0.04);
        let f = face(0.7, 0.3);
        let (_, out) = t.update(&[f], 0.04)[0];
        assert_eq!(out.landmarks, f.landmarks);
        t.reset();
        assert!(t.tracks().is_empty());
        assert_eq!(t.update(&[f], 0.04)[0].0, 2, "a new track after the cut");
    }
}
