//! Video-grade faces: tracks, landmark smoothing, detection interval, scene cuts, measured on
//! clips with known motion and on real footage.

mod common;

use common::motion::{self, Pose};
use gst::prelude::*;

use common::{detector, init};

/// One `gpenfilter-faces` message: detector ran, scene cut, faces as (id, landmarks).
#[derive(Debug, Clone)]
struct FrameFaces {
    detected: bool,
    scene_cut: bool,
    faces: Vec<(u64, [[f64; 2]; 5])>,
}

fn parse_faces(s: &gst::StructureRef) -> FrameFaces {
    let faces = s
        .get::<gst::Array>("faces")
        .unwrap()
        .iter()
        .map(|v| {
            let f = v.get::<gst::Structure>().unwrap();
            let l: Vec<f64> = f.get::<gst::Array>("landmarks").unwrap().iter().map(|v| v.get::<f64>().unwrap()).collect();
            let mut landmarks = [[0.0; 2]; 5];
            for (k, p) in landmarks.iter_mut().enumerate() {
                *p = [l[2 * k], l[2 * k + 1]];
            }
            (f.get::<u64>("id").unwrap(), landmarks)
        })
        .collect();
    FrameFaces { detected: s.get("detected").unwrap(), scene_cut: s.get("scene-cut").unwrap(), faces }
}

/// The `gpenfilter-faces` messages posted until EOS (panics on an error).
fn faces_until_eos(pipeline: &gst::Pipeline) -> Vec<FrameFaces> {
    let mut seen = Vec::new();
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(600)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "gpenfilter-faces") {
                    seen.push(parse_faces(s));
                }
            }
            _ => {}
        }
    }
    seen
}

/// Pushes packed RGB `frames` (`w` x `h`, 30 fps) through a gpenfilter with `props`; returns
/// the faces message of every frame, the output frames and the final statistics.
fn run_frames(frames: &[Vec<u8>], w: usize, h: usize, props: &str) -> (Vec<FrameFaces>, Vec<Vec<u8>>, gst::Structure) {
    init();
    let (pipeline, src, sink) = common::app_pipeline(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width={w},height={h},framerate=30/1 \
         ! gpenfilter name=g size=256 model={} detector-model={} device=cpu post-faces=true {props} \
         ! appsink name=sink sync=false",
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        detector().display()
    ));
    let outputs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = outputs.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let map = sample.buffer().unwrap().map_readable().unwrap();
                o.lock().unwrap().push(map.as_slice().to_vec());
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let mut b = gst::Buffer::from_slice(f.clone());
        let pts = gst::ClockTime::from_nseconds(i as u64 * 1_000_000_000 / 30);
        b.get_mut().unwrap().set_pts(pts);
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    let seen = faces_until_eos(&pipeline);
    let stats = pipeline.by_name("g").unwrap().property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    let outputs = outputs.lock().unwrap().clone();
    (seen, outputs, stats)
}

/// The astronaut along the test path: (frames, poses, width, height).
fn astronaut_clip(n: usize) -> (Vec<Vec<u8>>, Vec<Pose>, usize, usize) {
    let (rgb, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let photo = common::rgb_tensor(&rgb, w, h);
    let poses = motion::path(n);
    (poses.iter().map(|p| motion::render(&photo, p)).collect(), poses, w, h)
}

/// The single face's landmarks per frame.
fn landmarks(seen: &[FrameFaces]) -> Vec<[[f64; 2]; 5]> {
    seen.iter()
        .map(|f| {
            assert_eq!(f.faces.len(), 1, "{f:?}");
            f.faces[0].1
        })
        .collect()
}

/// The photo's landmarks that best explain `observed` along `poses` (least squares: the mean
/// of the observations mapped back).
fn true_landmarks(observed: &[[[f64; 2]; 5]], poses: &[Pose], w: usize, h: usize) -> [[f64; 2]; 5] {
    let mut sum = [[0.0; 2]; 5];
    for (l, pose) in observed.iter().zip(poses) {
        for k in 0..5 {
            let p = pose.invert(l[k], w, h);
            sum[k][0] += p[0] / observed.len() as f64;
            sum[k][1] += p[1] / observed.len() as f64;
        }
    }
    sum
}

/// Residual of each frame's landmarks against the true path (pixels), `[frame][landmark][x|y]`.
fn residuals(observed: &[[[f64; 2]; 5]], truth: &[[f64; 2]; 5], poses: &[Pose], w: usize, h: usize) -> Vec<[[f64; 2]; 5]> {
    observed
        .iter()
        .zip(poses)
        .map(|(l, pose)| {
            let mut r = [[0.0; 2]; 5];
            for k in 0..5 {
                let t = pose.apply(truth[k], w, h);
                r[k] = [l[k][0] - t[0], l[k][1] - t[1]];
            }
            r
        })
        .collect()
}

/// Root mean square of the frame-to-frame change of the residuals from `from` on: the jitter
/// that motion does not explain.
fn jitter(r: &[[[f64; 2]; 5]], from: usize) -> f64 {
    let d: Vec<f64> =
        (from.max(1)..r.len()).flat_map(|t| (0..5).flat_map(move |k| (0..2).map(move |c| r[t][k][c] - r[t - 1][k][c]))).collect();
    (d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64).sqrt()
}

/// Mean of `a - b` over frames `range`, per axis, averaged over the landmarks.
fn mean_offset(a: &[[[f64; 2]; 5]], b: &[[[f64; 2]; 5]], range: std::ops::Range<usize>) -> [f64; 2] {
    let n = (range.len() * 5) as f64;
    let mut m = [0.0; 2];
    for t in range {
        for k in 0..5 {
            for c in 0..2 {
                m[c] += (a[t][k][c] - b[t][k][c]) / n;
            }
        }
    }
    m
}

const FRAMES: usize = 80;
/// Frames the filters are given to settle after each change of motion.
const SETTLE: usize = 10;

#[test]
fn smoothing_halves_the_jitter_without_lagging_behind_motion() {
    let (frames, poses, w, h) = astronaut_clip(FRAMES);
    // Landmark smoothing alone: registration (on with blending) moves the landmarks too.
    let (off, off_out, off_stats) = run_frames(&frames, w, h, "temporal-smoothing=0 temporal-consistency=0");
    let (on, on_out, on_stats) = run_frames(&frames, w, h, "temporal-consistency=0");
    assert_eq!((off_out.len(), on_out.len()), (FRAMES, FRAMES));
    assert_eq!(on_stats.get::<u64>("tracks-started").unwrap(), 1, "{on_stats}");
    assert_eq!(off_stats.get::<u64>("detector-runs").unwrap(), FRAMES as u64);
    assert!(on.iter().all(|f| f.faces.iter().all(|(id, _)| *id == 1)), "one face, one track");
    let (raw, smooth) = (landmarks(&off), landmarks(&on));
    let truth = true_landmarks(&raw, &poses, w, h);
    let (r_off, r_on) = (residuals(&raw, &truth, &poses, w, h), residuals(&smooth, &truth, &poses, w, h));
    let (j_off, j_on) = (jitter(&r_off, SETTLE), jitter(&r_on, SETTLE));
    // Lag: how far the smoothed landmarks trail the raw ones on steady motion (the detector's
    // own bias cancels).
    let steady = FRAMES / 2 + SETTLE..FRAMES;
    let lag = mean_offset(&r_on, &r_off, steady.clone());
    println!("jitter (rms frame-to-frame residual): {j_off:.3} px raw, {j_on:.3} px smoothed ({:.2}); lag on 1.2/0.4 px per frame: {:.3}, {:.3} px", j_on / j_off, lag[0], lag[1]);
    assert!(j_off > 0.05, "the detector should jitter on sub-pixel motion ({j_off} px)");
    assert!(j_on <= 0.5 * j_off, "smoothing leaves {j_on:.3} px of {j_off:.3} px jitter");
    assert!(lag[0].abs() <= 1.0 && lag[1].abs() <= 1.0, "lag {lag:?} px");
    // By default the crops are registered onto the face's content, and the landmarks posted are
    // the registered ones: steadier still, and no later.
    let (locked, _, _) = run_frames(&frames, w, h, "");
    let r_lock = residuals(&landmarks(&locked), &truth, &poses, w, h);
    let (j_lock, lag_lock) = (jitter(&r_lock, SETTLE), mean_offset(&r_lock, &r_off, steady));
    println!("registered: jitter {j_lock:.3} px, lag {:.3}, {:.3} px", lag_lock[0], lag_lock[1]);
    assert!(j_lock <= j_on, "registration made the landmarks jitter more ({j_lock:.3} px against {j_on:.3} px)");
    assert!(lag_lock[0].abs() <= 1.0 && lag_lock[1].abs() <= 1.0, "lag {lag_lock:?} px");
}

#[test]
fn a_static_clip_gives_identical_frames() {
    let (rgb, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let frames = vec![rgb; 5];
    let (seen, out, stats) = run_frames(&frames, w, h, "");
    assert_eq!(out.len(), 5);
    assert_eq!(stats.get::<u64>("faces-restored").unwrap(), 5, "{stats}");
    assert_ne!(out[0], frames[0], "the face was restored");
    for (i, o) in out.iter().enumerate().skip(1) {
        assert!(o == &out[0], "frame {i} differs from frame 0");
    }
    assert!(seen.iter().all(|f| f.faces.len() == 1 && f.faces[0].1 == seen[0].faces[0].1));
}

#[test]
fn detection_interval_carries_faces_along_their_motion() {
    let (frames, poses, w, h) = astronaut_clip(FRAMES);
    // The tracker's carrying alone (registration, on with blending, moves the landmarks too).
    let (every, _, _) = run_frames(&frames, w, h, "temporal-smoothing=0 temporal-consistency=0");
    let (fifth, out, stats) = run_frames(&frames, w, h, "detection-interval=5 temporal-consistency=0");
    assert_eq!(out.len(), FRAMES);
    assert_eq!(stats.get::<u64>("detector-runs").unwrap(), FRAMES.div_ceil(5) as u64, "{stats}");
    assert_eq!(stats.get::<u64>("faces-restored").unwrap(), FRAMES as u64, "every frame keeps its face: {stats}");
    assert_eq!(fifth.iter().filter(|f| f.detected).count(), FRAMES / 5);
    assert!(fifth.iter().enumerate().all(|(i, f)| f.detected == (i % 5 == 0)));
    let raw = landmarks(&every);
    let truth = true_landmarks(&raw, &poses, w, h);
    let carried = residuals(&landmarks(&fifth), &truth, &poses, w, h);
    // What carrying is measured against: holding each detection until the next one.
    let held: Vec<_> = (0..FRAMES).map(|i| raw[i - i % 5]).collect();
    let held = residuals(&held, &truth, &poses, w, h);
    let mean_abs = |r: &[[[f64; 2]; 5]], frames: std::ops::Range<usize>| {
        let skipped: Vec<usize> = frames.filter(|i| i % 5 != 0).collect();
        skipped.iter().flat_map(|&i| r[i].iter().flatten()).map(|v| v.abs()).sum::<f64>() / (skipped.len() * 10) as f64
    };
    let worst = carried[SETTLE..].iter().flat_map(|l| l.iter().flatten()).fold(0f64, |m, v| m.max(v.abs()));
    // From the change of speed on, and in the last ten frames (three detections later).
    let moving = FRAMES / 2..FRAMES;
    let settled = FRAMES - 10..FRAMES;
    let (c, hd) = (mean_abs(&carried, moving.clone()), mean_abs(&held, moving));
    let (cs, hs) = (mean_abs(&carried, settled.clone()), mean_abs(&held, settled));
    println!(
        "detection-interval=5, mean error on the skipped frames: carried along the estimated motion {c:.2} px \
         from the change of speed on, {cs:.2} px once settled; held still {hd:.2} and {hs:.2} px; worst over the \
         clip {worst:.2} px"
    );
    assert!(c < hd, "carrying faces along their motion ({c:.2} px) should beat holding them ({hd:.2} px)");
    assert!(cs < 0.5 * hs && cs <= 1.0, "settled on steady motion, carried faces are {cs:.2} px off (held: {hs:.2} px)");
}

#[test]
fn hamilton_clip_keeps_one_track_per_face_within_a_shot() {
    init();
    let clip = common::shared().join("media/videos/short_hamilton_clip.mp4");
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! gpenfilter name=g size=256 model={} detector-model={} \
         device=cpu post-faces=true ! fakesink sync=false",
        clip.display(),
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        detector().display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let seen = faces_until_eos(&pipeline);
    let stats = pipeline.by_name("g").unwrap().property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(seen.len(), 275);
    assert_eq!(stats.get::<u64>("frames-out").unwrap(), 275, "{stats}");
    // The clip's four shots begin at frames 0, 20, 82 and 211.
    let cuts: Vec<usize> = seen.iter().enumerate().filter(|(_, f)| f.scene_cut).map(|(i, _)| i).collect();
    assert_eq!(cuts, [20, 82, 211], "scene cuts");
    let shots = [0..20, 20..82, 82..211, 211..275];
    let mut report = Vec::new();
    for shot in shots.clone() {
        let mut ids: Vec<u64> = seen[shot.clone()].iter().flat_map(|f| f.faces.iter().map(|(id, _)| *id)).collect();
        ids.sort();
        ids.dedup();
        let most = seen[shot.clone()].iter().map(|f| f.faces.len()).max().unwrap();
        report.push((shot, ids.len(), most));
    }
    println!("tracks per shot (frames, tracks, most faces in one frame): {report:?}; {stats}");
    // The opening shot (two people) and the last (four people at a table) keep one track per
    // person throughout; no track crosses a cut.
    assert_eq!((report[0].1, report[0].2), (2, 2));
    assert_eq!((report[3].1, report[3].2), (4, 4));
    let first_ids = |shot: std::ops::Range<usize>| seen[shot].iter().flat_map(|f| f.faces.iter().map(|(id, _)| *id)).min();
    for w in shots.windows(2) {
        let last_before = seen[w[0].clone()].iter().flat_map(|f| f.faces.iter().map(|(id, _)| *id)).max();
        if let (Some(a), Some(b)) = (last_before, first_ids(w[1].clone())) {
            assert!(b > a, "a track crossed the cut at frame {}", w[1].start);
        }
    }
}

/// A still photo with fresh noise of `sigma` levels in each of `n` frames (a nearly still face
/// as a camera and codec give it).
fn noisy_still(n: usize, sigma: f64) -> (Vec<Vec<u8>>, usize, usize) {
    let (rgb, w, h) = common::decode_image(&common::shared().join("media/images/astronaut.png"));
    let photo = tch::Tensor::from_slice(&rgb).to_kind(tch::Kind::Float);
    tch::manual_seed(7);
    let frames = (0..n)
        .map(|_| Vec::<u8>::try_from((&photo + photo.randn_like() * sigma).round().clamp(0.0, 255.0).to_kind(tch::Kind::Uint8)).unwrap())
        .collect();
    (frames, w, h)
}

#[test]
fn nearly_still_faces_get_no_added_flicker() {
    let (frames, w, h) = noisy_still(20, 0.3);
    let amplification = |props| {
        let (_, out, stats) = run_frames(&frames, w, h, props);
        assert_eq!(out.len(), frames.len());
        assert_eq!(stats.get::<u64>("flicker-pairs").unwrap(), frames.len() as u64 - 1, "{stats}");
        stats.get::<f64>("flicker-amplification").unwrap()
    };
    let (off, landmarks_only, on) =
        (amplification("temporal-smoothing=0 temporal-consistency=0"), amplification("temporal-consistency=0"), amplification(""));
    println!(
        "flicker amplification on a nearly still face: {off:.2} per frame, {landmarks_only:.2} with landmark smoothing, {on:.2} by default"
    );
    assert!(off > 1.0, "per-frame restoration should add flicker here ({off:.2}), or the test shows nothing");
    assert!(on <= 1.0, "by default the restorer must add no flicker ({on:.2})");
    assert!(
        on < 0.6 * landmarks_only,
        "blending in aligned space should cut the flicker left by landmark smoothing ({on:.2} vs {landmarks_only:.2})"
    );
}

/// Mean absolute difference of two packed RGB frames (`w` wide) inside the box `[x0, y0, x1, y1]`.
fn box_error(a: &[u8], b: &[u8], w: usize, [x0, y0, x1, y1]: [usize; 4]) -> f64 {
    let mut sum = 0.0;
    for y in y0..y1 {
        for i in 3 * (y * w + x0)..3 * (y * w + x1) {
            sum += (a[i] as f64 - b[i] as f64).abs();
        }
    }
    sum / (3 * (y1 - y0) * (x1 - x0)) as f64
}

/// The shift `d` (pixels) that best explains `got` as `want` moved: `got(p) = want(p - d)`, one
/// Lucas-Kanade step over the box on grey levels.
fn shift(got: &[u8], want: &[u8], w: usize, [x0, y0, x1, y1]: [usize; 4]) -> [f64; 2] {
    let grey = |f: &[u8], x: usize, y: usize| (0..3).map(|c| f[3 * (y * w + x) + c] as f64).sum::<f64>() / 3.0;
    let (mut a, mut b) = ([[0.0; 2]; 2], [0.0; 2]);
    for y in y0..y1 {
        for x in x0..x1 {
            let g = [(grey(want, x + 1, y) - grey(want, x - 1, y)) / 2.0, (grey(want, x, y + 1) - grey(want, x, y - 1)) / 2.0];
            let e = grey(want, x, y) - grey(got, x, y);
            for i in 0..2 {
                b[i] += g[i] * e;
                for j in 0..2 {
                    a[i][j] += g[i] * g[j];
                }
            }
        }
    }
    let det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
    [(a[1][1] * b[0] - a[0][1] * b[1]) / det, (a[0][0] * b[1] - a[1][0] * b[0]) / det]
}

#[test]
fn blending_follows_motion_without_ghosting() {
    // The ideal: the still face restored once, moved along the path. Frame 0 of the path is the
    // photo itself.
    let (frames, poses, w, h) = astronaut_clip(FRAMES);
    let (seen, still, _) = run_frames(&frames[..1], w, h, "");
    let restored = common::rgb_tensor(&still[0], w, h);
    let ideal: Vec<Vec<u8>> = poses.iter().map(|p| motion::render(&restored, p)).collect();
    // The face: its landmarks' box, grown by half its size, where each frame moved it.
    let l = seen[0].faces[0].1;
    let (lx, ly) = (l.iter().map(|p| p[0]), l.iter().map(|p| p[1]));
    let (bx0, bx1) = (lx.clone().fold(f64::MAX, f64::min), lx.fold(f64::MIN, f64::max));
    let (by0, by1) = (ly.clone().fold(f64::MAX, f64::min), ly.fold(f64::MIN, f64::max));
    let (gx, gy) = ((bx1 - bx0) / 2.0, (by1 - by0) / 2.0);
    let face = |p: &Pose| {
        let (a, b) = (p.apply([bx0 - gx, by0 - gy], w, h), p.apply([bx1 + gx, by1 + gy], w, h));
        [a[0].max(1.0) as usize, a[1].max(1.0) as usize, (b[0] as usize).min(w - 2), (b[1] as usize).min(h - 2)]
    };
    let error = |out: &[Vec<u8>], range: std::ops::Range<usize>| {
        range.clone().map(|t| box_error(&out[t], &ideal[t], w, face(&poses[t]))).sum::<f64>() / range.len() as f64
    };
    let (_, per_frame, _) = run_frames(&frames, w, h, "temporal-smoothing=0 temporal-consistency=0");
    let (_, unblended, _) = run_frames(&frames, w, h, "temporal-consistency=0");
    let (_, blended, _) = run_frames(&frames, w, h, "");
    assert_eq!(blended[0], still[0], "frame 0 is the photo");
    let (e_off, e_smooth, e_on) = (error(&per_frame, 1..FRAMES), error(&unblended, 1..FRAMES), error(&blended, 1..FRAMES));
    // Lag: the shift between output and ideal on steady motion (1.2 and 0.4 px a frame).
    let steady = FRAMES / 2 + SETTLE..FRAMES;
    let mut lag = [0.0; 2];
    for t in steady.clone() {
        let d = shift(&blended[t], &ideal[t], w, face(&poses[t]));
        lag = [lag[0] + d[0] / steady.len() as f64, lag[1] + d[1] / steady.len() as f64];
    }
    println!(
        "mean error against the ideal inside the face: {e_off:.2} levels per frame, {e_smooth:.2} with landmark smoothing, \
         {e_on:.2} blended too; lag on steady motion {:.2}, {:.2} px",
        lag[0], lag[1]
    );
    // By default each crop is registered onto the previous one, so the generator sees the same
    // face as it moves, and blending mixes faces that lie on each other: at most half the error
    // of per-frame restoration, and no ghost of the previous position.
    assert!(e_on <= 0.5 * e_off, "{e_on:.2} levels from the ideal against {e_off:.2} per frame");
    assert!(e_on <= e_smooth, "({e_on:.2} vs {e_smooth:.2} with landmark smoothing alone)");
    assert!(lag[0].abs() <= 1.0 && lag[1].abs() <= 1.0, "the blended face lags {lag:?} px behind");
}
