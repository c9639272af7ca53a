//! Faces as GstAnalytics metadata (feature `analytics`, GStreamer 1.24 or later): what
//! gpenfilter writes, a stock `objectdetectionoverlay` drawing it, and an upstream element's
//! `face` entries restored without our detector.

mod common;

/// Built without the feature: right only where GStreamer has no analytics library (1.22).
#[cfg(not(feature = "analytics"))]
#[test]
fn analytics_is_off_only_where_gstreamer_lacks_it() {
    let found = std::process::Command::new("pkg-config").args(["--atleast-version=1.24", "gstreamer-analytics-1.0"]).status();
    assert!(
        !found.is_ok_and(|s| s.success()),
        "gstreamer-analytics-1.0 >= 1.24 is installed: run the tests with --features analytics (scripts/test.sh does)"
    );
    println!("skipped: the analytics tests need GStreamer 1.24 or later (feature `analytics`); this GStreamer has no analytics library");
}

#[cfg(feature = "analytics")]
mod on {
    use std::sync::{Arc, Mutex};

    use super::common;
    use gst::prelude::*;
    use gst_analytics::prelude::*;
    use gst_analytics::{AnalyticsODMtd, AnalyticsRelationMeta, AnalyticsTrackingMtd, RelTypes};
    use gst_video::VideoRegionOfInterestMeta;

    /// The two-people photograph as RGB, its width cut to a multiple of 4 (rows need no padding).
    fn two_people() -> (Vec<u8>, (usize, usize)) {
        common::init();
        let (full, w, h) = common::decode_image(&common::shared().join("media/images/two_people.jpg"));
        let w4 = w / 4 * 4;
        (full.chunks(3 * w).flat_map(|row| row[..3 * w4].to_vec()).collect(), (w4, h))
    }

    fn props() -> String {
        format!(
            "size=256 device=cpu model={} detector-model={}",
            common::gpen_fixture("gpen-256-tiny.pth").display(),
            common::detector().display()
        )
    }

    /// Pushes `frames` (RGB, `size`) through `appsrc ! {middle} ! appsink` and returns the
    /// buffers out and the statistics of the element named `g`. An error on the bus panics.
    fn run(middle: &str, frames: Vec<gst::Buffer>, (w, h): (usize, usize), caps_out: &str) -> (Vec<gst::Buffer>, gst::Structure) {
        common::init();
        let (pipeline, src, sink) = common::app_pipeline(&format!(
            "appsrc name=src format=time caps=video/x-raw,format=RGB,width={w},height={h},framerate=30/1 ! {middle} \
             ! {caps_out} ! appsink name=sink sync=false"
        ));
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    o.lock().unwrap().push(sample.buffer_owned().unwrap());
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing).unwrap();
        for (i, mut b) in frames.into_iter().enumerate() {
            b.make_mut().set_pts(gst::ClockTime::from_nseconds(i as u64 * 1_000_000_000 / 30));
            src.push_buffer(b).unwrap();
        }
        src.end_of_stream().unwrap();
        for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(600)) {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
                _ => {}
            }
        }
        let stats = pipeline.by_name("g").unwrap().property::<gst::Structure>("stats");
        pipeline.set_state(gst::State::Null).unwrap();
        let out = out.lock().unwrap().clone();
        (out, stats)
    }

    /// A `face` object-detection entry: rectangle, confidence, and the ids of the tracking
    /// entries it relates to.
    type Entry = ((i32, i32, i32, i32), f32, Vec<u64>);

    fn face_entries(b: &gst::BufferRef) -> Vec<Entry> {
        let Some(meta) = b.meta::<AnalyticsRelationMeta>() else { return Vec::new() };
        let face = glib::Quark::from_str("face");
        meta.iter::<AnalyticsODMtd>()
            .filter(|od| od.obj_type() == Some(face))
            .map(|od| {
                let l = od.location().unwrap();
                let tracks = meta.iter_direct_related::<AnalyticsTrackingMtd>(od.id(), RelTypes::RELATE_TO).map(|t| t.info().0).collect();
                ((l.x, l.y, l.w, l.h), l.loc_conf_lvl, tracks)
            })
            .collect()
    }

    /// The entries gpenfilter's `face` region metas describe, in the same form.
    fn from_rois(b: &gst::BufferRef) -> Vec<Entry> {
        b.iter_meta::<VideoRegionOfInterestMeta>()
            .filter_map(|m| {
                let p = m.param("gpenfilter")?;
                let (x, y, w, h) = m.rect();
                let score = p.get::<f64>("score").unwrap() as f32;
                Some(((x as i32, y as i32, w as i32, h as i32), score, vec![p.get::<u64>("track-id").unwrap()]))
            })
            .collect()
    }

    fn frames(rgb: &[u8], n: usize) -> Vec<gst::Buffer> {
        (0..n).map(|_| gst::Buffer::from_slice(rgb.to_vec())).collect()
    }

    #[test]
    fn each_face_is_an_object_detection_entry_related_to_its_track() {
        let (rgb, size) = two_people();
        let (out, stats) = run(&format!("gpenfilter name=g {}", props()), frames(&rgb, 2), size, "identity");
        assert_eq!(common::count(&stats, "faces-restored"), 4);
        for b in &out {
            let entries = face_entries(b);
            assert_eq!(entries.len(), 2, "two people, one entry each");
            // Box in output pixels, the detector's confidence, the track id: as the region metas.
            assert_eq!(entries, from_rois(b));
            assert!(entries.iter().all(|e| e.1 > 0.5 && e.2.len() == 1));
        }
        assert_eq!(
            face_entries(&out[0]).iter().map(|e| &e.2).collect::<Vec<_>>(),
            face_entries(&out[1]).iter().map(|e| &e.2).collect::<Vec<_>>(),
            "the same tracks on both frames"
        );

        // face-metas=false: neither kind of metadata.
        let (out, _) = run(&format!("gpenfilter name=g face-metas=false {}", props()), frames(&rgb, 1), size, "identity");
        assert!(out[0].meta::<AnalyticsRelationMeta>().is_none());
    }

    #[test]
    fn objectdetectionoverlay_draws_the_faces() {
        let (rgb, size) = two_people();
        let Ok(_) = gst::ElementFactory::make("objectdetectionoverlay").build() else {
            panic!("objectdetectionoverlay (gst-plugins-bad 1.24 or later, analyticsoverlay) is not installed");
        };
        let (w, h) = size;
        let caps = format!("video/x-raw,format=RGB,width={w},height={h}");
        // restore=false: the pixels stay the photograph's, so any change is the overlay's.
        let middle = |overlay: &str| format!("gpenfilter name=g restore=false {} ! videoconvert ! {overlay} ! videoconvert", props());
        let (drawn, _) = run(&middle("objectdetectionoverlay"), frames(&rgb, 1), size, &caps);
        let (plain, _) = run(&middle("identity"), frames(&rgb, 1), size, &caps);
        let entries = face_entries(&plain[0]);
        assert_eq!(entries.len(), 2);
        let (a, b) = (drawn[0].map_readable().unwrap(), plain[0].map_readable().unwrap());
        assert_eq!(b.as_slice(), &rgb[..], "without the overlay the frame is the photograph");
        let changed = |x: usize, y: usize| a[3 * (y * w + x)..3 * (y * w + x) + 3] != b[3 * (y * w + x)..3 * (y * w + x) + 3];
        for ((x, y, bw, bh), _, _) in &entries {
            let (x0, y0, x1, y1) = (*x as usize, *y as usize, (*x + *bw) as usize, (*y + *bh) as usize);
            // The box's outline is drawn: most of its left and right edges changed (within 2 px).
            let near = |px: usize, py: usize| (px.saturating_sub(2)..=(px + 2).min(w - 1)).any(|xx| changed(xx, py));
            let rows = y0 + 4..y1.min(h) - 4;
            let n = rows.len();
            let drawn_rows = rows.filter(|&yy| near(x0, yy) && near(x1.min(w - 1), yy)).count();
            println!("box at ({x0}, {y0})-({x1}, {y1}): outline on {drawn_rows} of {n} rows");
            assert!(drawn_rows * 10 >= n * 9, "box ({x0}, {y0})-({x1}, {y1}): outline on {drawn_rows} of {n} rows");
            // Its inside, away from the edges and the label, is not painted over.
            let (cx, cy) = ((x0 + x1) / 2, (y0 + y1) / 2);
            assert!(!changed(cx, cy), "the middle of the face is untouched");
        }
        // Far from the faces (the bottom rows), nothing changed.
        assert!((h - 10..h).all(|yy| (0..w).all(|xx| !changed(xx, yy))), "the overlay drew outside the faces");
    }

    /// Boxes around the faces as another detector might cut them (tighter than RetinaFace's,
    /// no landmarks), as that element's `face` entries, plus a `car` and a `face` on the wall.
    fn upstream_entries(b: &mut gst::BufferRef, faces: &[Entry]) {
        let mut meta = AnalyticsRelationMeta::add(b);
        let face = glib::Quark::from_str("face");
        for ((x, y, w, h), _, _) in faces {
            let (mx, my) = (w / 10, h / 10);
            meta.add_od_mtd(face, x + mx, y + my, w - 2 * mx, h - 2 * my, 0.8).unwrap();
        }
        meta.add_od_mtd(glib::Quark::from_str("car"), 300, 300, 100, 50, 0.9).unwrap();
        meta.add_od_mtd(face, 5, 5, 60, 60, 0.6).unwrap();
    }

    #[test]
    fn upstream_face_entries_are_restored_without_the_detector() {
        let (rgb, size) = two_people();
        // Where our detector puts the faces.
        let (reference, _) = run(&format!("gpenfilter name=g restore=false {}", props()), frames(&rgb, 1), size, "identity");
        let want = face_entries(&reference[0]);
        assert_eq!(want.len(), 2);

        let mut input = frames(&rgb, 2);
        for f in &mut input {
            upstream_entries(f.make_mut(), &want);
        }
        let (out, stats) = run(&format!("gpenfilter name=g faces-from=upstream {}", props()), input, size, "identity");
        assert_eq!(common::count(&stats, "detector-runs"), 0, "{stats}");
        // Three `face` entries a frame (not the car); the one on the wall has no face inside.
        let from_metas = (common::count(&stats, "faces-from-metas"), common::count(&stats, "metas-skipped"));
        assert_eq!(from_metas, (6, 2), "{stats}");
        assert_eq!(common::count(&stats, "faces-restored"), 4, "{stats}");
        assert_ne!(out[0].map_readable().unwrap().as_slice(), &rgb[..], "the faces were restored");
        // The upstream entries stay; each face restored has an entry with its box and track
        // (a new one, or the upstream one where the box is the same).
        for b in &out {
            let (entries, rois) = (face_entries(b), from_rois(b));
            assert_eq!(rois.len(), 2);
            let upstream: Vec<_> = entries.iter().take(3).map(|e| e.0).collect();
            let mut want_upstream = Vec::new();
            for ((x, y, w, h), _, _) in &want {
                want_upstream.push((x + w / 10, y + h / 10, w - 2 * (w / 10), h - 2 * (h / 10)));
            }
            want_upstream.push((5, 5, 60, 60));
            assert_eq!(upstream, want_upstream);
            for r in &rois {
                assert!(entries.iter().any(|e| e.0 == r.0 && e.2 == r.2), "{r:?} not among {entries:?}");
            }
        }
    }
}
