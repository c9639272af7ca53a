//! Host/device transfers per frame, counted on the CPU where they cost nothing (`gstgpen::transfer`
//! counts every copy of the data path whatever the device): a frame with faces waits for the
//! device twice (its detections, read with the scene change, and the restored frame) and is
//! copied up twice (the frame, and one table of every face's transforms); upscaled in tiles, once
//! more (the tiles' blending windows). Registering tracked faces' crops (with
//! `temporal-consistency`, the default) adds one wait (their thumbnails) and two copies up (the
//! thumbnails' sampling grids, the registered thumbnails). One test per process: the counters
//! are global.

mod common;

use gstgpen::restorer::{DeviceSpec, FaceSettings, LiveSettings, Outcome, PackedLayout, Restorer, RestorerSettings, UpscaleSettings};
use gstgpen::transfer::{transfers, Transfers};

fn restorer(aligned: bool, detection_interval: u32, consistency: f64) -> Restorer {
    Restorer::new(&RestorerSettings {
        model: Some(common::gpen_fixture("gpen-256-tiny.pth")),
        size: 256,
        device: DeviceSpec::Cpu,
        aligned,
        faces: FaceSettings {
            detector_model: Some(common::detector()),
            live: LiveSettings { detection_interval, consistency, ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

/// The transfers of one frame restored in place, and what became of it.
fn frame(r: &mut Restorer, input: &[u8], layout: &PackedLayout) -> (Transfers, Outcome) {
    let mut out = input.to_vec();
    let before = transfers();
    let outcome = r.process(&mut out, layout, 1.0 / 25.0).unwrap();
    let after = transfers();
    (Transfers { uploads: after.uploads - before.uploads, downloads: after.downloads - before.downloads }, outcome)
}

#[test]
fn each_frame_waits_for_the_device_twice() {
    let (input, w, h) = common::decode_image(&common::shared().join("media/images/solvay_conference_1927.png"));
    let layout = PackedLayout::rgb(w, h);
    let two_each = Transfers { uploads: 2, downloads: 2 };

    // Whole frames, detector on every frame, no registration. The first frame has no scene
    // change to read.
    let mut r = restorer(false, 1, 0.0);
    let (first, outcome) = frame(&mut r, &input, &layout);
    assert!(matches!(outcome, Outcome::Restored { faces, .. } if faces >= 20), "{outcome:?}");
    assert_eq!(first, two_each, "first frame");
    for i in 0..3 {
        let (t, outcome) = frame(&mut r, &input, &layout);
        assert!(matches!(outcome, Outcome::Restored { .. }), "{outcome:?}");
        assert_eq!(t, two_each, "frame {i}: every face's transforms go up in one copy; detections and scene change come down in one");
    }

    // Detector every third frame: between runs the scene change is read alone.
    let mut r = restorer(false, 3, 0.0);
    let counts: Vec<Transfers> = (0..6).map(|_| frame(&mut r, &input, &layout).0).collect();
    assert_eq!(counts, vec![two_each; 6], "detection-interval=3");

    // By default the tracked faces' crops are registered: their thumbnails come down together
    // (all faces in one copy), their sampling grids and the registered thumbnails go up.
    let mut r = restorer(false, 1, 0.8);
    let counts: Vec<Transfers> = (0..3).map(|_| frame(&mut r, &input, &layout).0).collect();
    assert_eq!(counts, vec![Transfers { uploads: 4, downloads: 3 }; 3], "registration");

    // Aligned faces: the frame up, the frame down.
    let (face, fw, fh) = common::decode_image(&common::gpen_fixture("gpen-256-tiny.input0.png"));
    let mut r = restorer(true, 1, 0.8);
    let (t, outcome) = frame(&mut r, &face, &PackedLayout::rgb(fw, fh));
    assert!(matches!(outcome, Outcome::Restored { faces: 1, .. }), "{outcome:?}");
    assert_eq!(t, Transfers { uploads: 1, downloads: 1 }, "aligned");

    // Upscaled x2 in tiles: one more copy up (every tile's blending windows in one table); the
    // faces are composed into the upscaled frame on the device, which comes down once.
    let (photo, pw, ph) = common::decode_image(&common::shared().join("media/images/two_people.jpg"));
    let mut r = Restorer::new(&RestorerSettings {
        upscale: UpscaleSettings {
            factor: 2,
            model: Some(common::shared().join("fixtures/rrdbnet/rrdbnet-x2-tiny.pth")),
            tile: 256,
            overlap: 32,
        },
        ..common::tiny_settings(LiveSettings { consistency: 0.0, ..Default::default() })
    })
    .unwrap();
    for i in 0..2 {
        let layout = PackedLayout::rgb(pw, ph);
        let mut out = vec![0u8; 4 * pw * ph * 3];
        let before = transfers();
        let d = r.begin(&photo, layout, 1.0 / 25.0).unwrap();
        let outcome = r.finish(d, Some((&mut out, &PackedLayout::rgb(2 * pw, 2 * ph)))).unwrap();
        let after = transfers();
        assert!(matches!(outcome, Outcome::Restored { faces: 2, .. }), "{outcome:?}");
        let t = Transfers { uploads: after.uploads - before.uploads, downloads: after.downloads - before.downloads };
        assert_eq!(t, Transfers { uploads: 3, downloads: 2 }, "upscaled frame {i}");
    }
}
