//! Where the segments of an input begin. The input's packets are read without decoding
//! (`parsebin`): their timestamps and keyframe flags are all it takes, so every worker computes
//! the same cut points from the file alone, in seconds even for hours of video.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gst::prelude::*;

use crate::files;
use crate::streams::{is_still, is_video, make};

/// The video packets of a file.
pub struct Scan {
    /// Presentation times of every frame, in nanoseconds, sorted.
    pub pts: Vec<u64>,
    /// Presentation times of the keyframes, sorted.
    pub keyframes: Vec<u64>,
    /// Decode-order presentation times (the order the file stores the frames in).
    pub decode_order: Vec<u64>,
    /// Duration of the last frame (ns), or 0 when the file does not say.
    pub last_duration: u64,
    /// Audio streams in the file.
    pub audio_streams: usize,
    /// The file's comment tag: a segment's says which it is ([`Segment::label`]) and where it
    /// comes from ([`crate::identity`]).
    pub comment: Option<String>,
}

impl Scan {
    /// The input's video frames (the packets of its first video stream).
    pub fn frames(&self) -> usize {
        self.pts.len()
    }
}

/// One segment: the frames with presentation times in `[start, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start: u64,
    /// None for the last segment: it runs to the end.
    pub end: Option<u64>,
    /// Index of the segment's first frame among all of the input's frames.
    pub first_frame: usize,
    pub frames: usize,
}

impl Segment {
    /// What a segment file says of itself (its comment tag): which segment of which count, and
    /// its frames among the input's, so that the join and a resumed run recognise it.
    pub fn label(&self, index: usize, count: usize, input_frames: usize) -> String {
        format!(
            "gst-gpen-restore segment {index}/{count}: frames {}..{} of {input_frames}, from {} ns",
            self.first_frame,
            self.first_frame + self.frames,
            self.start
        )
    }
}

/// Reads the video packets of `path` (the first video stream); 2 and a message when there are none.
pub fn scan(path: &Path) -> Result<Scan, (i32, String)> {
    files::check_input(path)?;
    let pipeline = gst::Pipeline::new();
    let src = make("filesrc").map_err(|e| (2, e))?;
    src.set_property("location", path.to_str().unwrap_or_default());
    let parse = make("parsebin").map_err(|e| (2, e))?;
    pipeline.add_many([&src, &parse]).unwrap();
    src.link(&parse).unwrap();
    let packets: Arc<Mutex<Vec<(u64, bool, u64)>>> = Arc::default();
    let has_video = Arc::new(Mutex::new(false));
    let audio_streams = Arc::new(Mutex::new(0));
    let comment: Arc<Mutex<Option<String>>> = Arc::default();
    let still = Arc::new(Mutex::new(None));
    {
        let (pipeline, packets, has_video, audio_streams, comment, still) =
            (pipeline.downgrade(), packets.clone(), has_video.clone(), audio_streams.clone(), comment.clone(), still.clone());
        parse.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pipeline.upgrade() else { return };
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let is_video = is_video(&caps);
            if is_still(&caps) {
                *still.lock().unwrap() = caps.structure(0).map(|s| s.name().to_string());
            }
            if caps.structure(0).is_some_and(|s| s.name().starts_with("audio/")) {
                *audio_streams.lock().unwrap() += 1;
            }
            let sink = gst::ElementFactory::make("fakesink").property("sync", false).property("async", false).build().unwrap();
            pipeline.add(&sink).unwrap();
            let first_video = is_video && !std::mem::replace(&mut *has_video.lock().unwrap(), true);
            if first_video {
                let comment = comment.clone();
                sink.static_pad("sink").unwrap().add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                    if let Some(gst::EventView::Tag(t)) = info.event().map(|e| e.view()) {
                        if let Some(c) = t.tag().get::<gst::tags::Comment>() {
                            *comment.lock().unwrap() = Some(c.get().to_owned());
                        }
                    }
                    gst::PadProbeReturn::Ok
                });
                let packets = packets.clone();
                sink.static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    if let Some(b) = info.buffer() {
                        if let Some(pts) = b.pts() {
                            let key = !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
                            packets.lock().unwrap().push((pts.nseconds(), key, b.duration().map_or(0, |d| d.nseconds())));
                        }
                    }
                    gst::PadProbeReturn::Ok
                });
            }
            let _ = pad.link(&sink.static_pad("sink").unwrap());
            let _ = sink.sync_state_with_parent();
        });
    }
    let result = run_to_eos(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();
    result.map_err(|e| (2, format!("{}: cannot be read ({e})", path.display())))?;
    let packets = std::mem::take(&mut *packets.lock().unwrap());
    if packets.is_empty() {
        if let Some(image) = still.lock().unwrap().take() {
            return Err((
                2,
                format!(
                    "{}: a still image ({image}), not a video: the command restores video files. For a picture, use the \
                     element: gst-launch-1.0 filesrc location=IN ! decodebin ! videoconvert ! imagefreeze num-buffers=1 ! \
                     gpenfilter ! videoconvert ! pngenc ! filesink location=OUT.png",
                    path.display()
                ),
            ));
        }
        return Err((
            2,
            format!("{}: no video stream with timestamps was found (an audio-only or unknown file?): give a video file", path.display()),
        ));
    }
    let decode_order: Vec<u64> = packets.iter().map(|p| p.0).collect();
    let mut pts = decode_order.clone();
    pts.sort_unstable();
    let mut keyframes: Vec<u64> = packets.iter().filter(|p| p.1).map(|p| p.0).collect();
    keyframes.sort_unstable();
    let last_duration = packets.iter().max_by_key(|p| p.0).map_or(0, |p| p.2);
    let audio_streams = *audio_streams.lock().unwrap();
    let comment = comment.lock().unwrap().take();
    Ok(Scan { pts, keyframes, decode_order, last_duration, audio_streams, comment })
}

/// Plays `pipeline` to its end; the first error's text otherwise.
pub fn run_to_eos(pipeline: &gst::Pipeline) -> Result<(), String> {
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The reason follows on the bus.
    }
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => return Ok(()),
            gst::MessageView::Error(e) => return Err(format!("{}{}", e.error(), e.debug().map(|d| format!(" ({d})")).unwrap_or_default())),
            _ => {}
        }
    }
    Ok(())
}

/// Up to `n - 1` cut points on `keyframes`, each the keyframe nearest to `k / n` of the way from
/// the first frame to the last, strictly increasing, and leaving a keyframe for each cut still to
/// come. Fewer when there are not enough keyframes after the first one. A pure function of its
/// arguments: every worker finds the same cuts.
pub fn cuts(keyframes: &[u64], first: u64, last: u64, n: u32) -> Vec<u64> {
    // The first frame starts segment 0 anyway; only later keyframes can start another.
    let candidates: Vec<u64> = keyframes.iter().copied().filter(|&k| k > first).collect();
    let wanted = (n.saturating_sub(1) as usize).min(candidates.len());
    let span = last.saturating_sub(first) as f64;
    let mut out = Vec::with_capacity(wanted);
    let mut lo = 0;
    for k in 1..=wanted {
        let target = first as f64 + span * k as f64 / (wanted + 1) as f64;
        // Room for the cuts after this one.
        let hi = candidates.len() - (wanted - k);
        let best =
            (lo..hi).min_by(|&a, &b| (candidates[a] as f64 - target).abs().total_cmp(&(candidates[b] as f64 - target).abs())).unwrap();
        out.push(candidates[best]);
        lo = best + 1;
    }
    out
}

/// The segments of a scanned input for `n` workers: `n` of them, or as many as it has keyframes.
pub fn segments(scan: &Scan, n: u32) -> Vec<Segment> {
    let (first, last) = (scan.pts[0], *scan.pts.last().unwrap());
    let cuts = cuts(&scan.keyframes, first, last, n);
    let starts: Vec<u64> = std::iter::once(first).chain(cuts.iter().copied()).collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = starts.get(i + 1).copied();
            let first_frame = scan.pts.partition_point(|&p| p < start);
            let last_frame = end.map_or(scan.pts.len(), |e| scan.pts.partition_point(|&p| p < e));
            Segment { start, end, first_frame, frames: last_frame - first_frame }
        })
        .collect()
}

/// `--plan N`: the segments as JSON on stdout.
pub fn print(input: &PathBuf, n: u32) -> Result<i32, (i32, String)> {
    let scan = scan(input)?;
    let segs = segments(&scan, n);
    if segs.len() < n as usize {
        eprintln!(
            "gst-gpen-restore: {} has {} keyframes: {} segments, not {n} (a segment starts on a keyframe)",
            input.display(),
            scan.keyframes.len(),
            segs.len()
        );
    }
    let json = serde_json::json!({
        "input": input,
        "frames": scan.pts.len(),
        "keyframes": scan.keyframes.len(),
        "requested": n,
        "segments": segs.iter().map(|s| serde_json::json!({
            "start_ns": s.start,
            "end_ns": s.end,
            "first_frame": s.first_frame,
            "frames": s.frames,
        })).collect::<Vec<_>>(),
    });
    println!("{json}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_on_the_keyframes_nearest_to_equal_parts() {
        // Keyframes every second over 10 s: 3 segments cut at 3 and 7 (nearest to 3.33 and 6.67).
        let keys: Vec<u64> = (0..10).map(|s| s * 1_000_000_000).collect();
        assert_eq!(cuts(&keys, 0, 10_000_000_000, 3), vec![3_000_000_000, 7_000_000_000]);
        assert_eq!(cuts(&keys, 0, 10_000_000_000, 1), Vec::<u64>::new());
    }

    #[test]
    fn crowded_targets_still_get_distinct_cuts() {
        // The nearest keyframe may come before the target (300 for 400), not only after it.
        assert_eq!(cuts(&[0, 300, 700, 1000], 0, 1200, 3), vec![300, 700]);
        // Two targets nearest to the same keyframe: the second takes the next one.
        let keys = [0, 100, 110, 900];
        assert_eq!(cuts(&keys, 0, 1000, 4), vec![100, 110, 900]);
        // Fewer keyframes than segments: one segment per keyframe.
        assert_eq!(cuts(&keys, 0, 1000, 10), vec![100, 110, 900]);
        assert_eq!(cuts(&[0], 0, 1000, 3), Vec::<u64>::new());
    }

    #[test]
    fn segments_cover_every_frame_once() {
        let pts: Vec<u64> = (0..100).map(|i| i * 10).collect();
        let keyframes: Vec<u64> = (0..100).step_by(25).map(|i| i * 10).collect();
        let scan = Scan { decode_order: pts.clone(), pts, keyframes, last_duration: 10, audio_streams: 0, comment: None };
        let segs = segments(&scan, 3);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs.iter().map(|s| s.frames).sum::<usize>(), 100);
        assert_eq!((segs[0].first_frame, segs[1].first_frame, segs[2].first_frame), (0, 25, 75));
        assert_eq!(segs[2].end, None);
    }
}
