//! Faces followed across frames: detections matched to tracks by box overlap, each track's
//! landmarks smoothed by a One-Euro filter (steady when the face is still, little lag when it
//! moves), tracks ended after a few frames without their face, all reset at a scene cut.
//! Pure: no tensors, no GStreamer; the element feeds it detections and timestamps.

use crate::detect::{iou, Face};

/// Casiez et al.'s One-Euro filter for one coordinate: a low-pass whose cutoff rises with the
/// speed of the signal.
#[derive(Debug, Clone, Copy)]
pub struct OneEuro {
    /// Cutoff (Hz) when the signal is still: lower is steadier.
    pub min_cutoff: f64,
    /// How fast the cutoff rises with speed (per unit/s): higher follows motion with less lag.
    pub beta: f64,
    /// Cutoff (Hz) of the speed estimate.
    pub d_cutoff: f64,
    value: Option<f64>,
    speed: f64,
}

fn alpha(cutoff: f64, dt: f64) -> f64 {
    let tau = 1.0 / (2.0 * std::f64::consts::PI * cutoff);
    1.0 / (1.0 + tau / dt)
}

impl OneEuro {
    pub fn new(min_cutoff: f64, beta: f64) -> Self {
        OneEuro { min_cutoff, beta, d_cutoff: 1.0, value: None, speed: 0.0 }
    }

    /// The filtered value of `x` seen `dt` seconds after the previous one.
    pub fn filter(&mut self, x: f64, dt: f64) -> f64 {
        let Some(prev) = self.value else {
            self.value = Some(x);
            return x;
        };
        let dt = dt.max(1e-6);
        let speed = (x - prev) / dt;
        self.speed += alpha(self.d_cutoff, dt) * (speed - self.speed);
        let cutoff = self.min_cutoff + self.beta * self.speed.abs();
        let v = prev + alpha(cutoff, dt) * (x - prev);
        self.value = Some(v);
        v
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
        TrackerSettings { min_iou: 0.3, max_misses: 5, smoothing: 0.5 }
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

    fn filters(&self) -> [[OneEuro; 2]; 5] {
        // Strength 1: a 0.05 Hz still cutoff (very steady); 0.5: about 1 Hz; beta keeps moving
        // faces within a pixel or so of lag at video frame rates.
        let min_cutoff = 0.05 * 400f64.powf(1.0 - self.settings.smoothing.clamp(0.0, 1.0));
        [[OneEuro::new(min_cutoff, 0.3); 2]; 5]
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
