//! Out-of-memory errors injected with GST_GPEN_FAIL_EVERY drive the memory policy. One test
//! function: the switch is an environment variable, read when an element starts.

mod common;

use std::sync::{Arc, Mutex};

use common::count;
use gst::prelude::*;

struct Run {
    stats: gst::Structure,
    qos_messages: usize,
    input: Vec<Vec<u8>>,
    output: Vec<Vec<u8>>,
}

/// Visible RGB pixels of each buffer through `pad`.
fn capture(pad: &gst::Pad) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let frames = Arc::new(Mutex::new(Vec::new()));
    let f2 = frames.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(b) = info.buffer() {
            let v = gst_video::VideoInfo::from_caps(&pad.current_caps().unwrap()).unwrap();
            let (row, stride) = (v.width() as usize * 3, v.stride()[0] as usize);
            let map = b.map_readable().unwrap();
            f2.lock().unwrap().push((0..v.height() as usize).flat_map(|y| map[y * stride..y * stride + row].to_vec()).collect());
        }
        gst::PadProbeReturn::Ok
    });
    frames
}

fn run(fail_every: u64, props: &str, frames: u32) -> Run {
    std::env::set_var(gstgpen::memory::FAIL_EVERY_ENV, fail_every.to_string());
    let description = format!(
        "filesrc location={img} ! jpegdec ! imagefreeze num-buffers={frames} ! videoconvert ! video/x-raw,format=RGB \
         ! gpenfilter name=g size=256 model={model} detector-model={det} device=cpu face-batch=2 {props} ! fakesink",
        img = common::shared().join("media/images/two_people.jpg").display(),
        model = common::gpen_fixture("gpen-256-tiny.pth").display(),
        det = common::detector().display(),
    );
    let pipeline = gst::parse::launch(&description).unwrap().downcast::<gst::Pipeline>().unwrap();
    let g = pipeline.by_name("g").unwrap();
    let input = capture(&g.static_pad("sink").unwrap());
    let output = capture(&g.static_pad("src").unwrap());
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut qos = 0;
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Qos(_) => qos += 1,
            gst::MessageView::Error(e) => panic!("{} {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    let stats = g.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    std::env::remove_var(gstgpen::memory::FAIL_EVERY_ENV);
    let (input, output) = (input.lock().unwrap().clone(), output.lock().unwrap().clone());
    Run { stats, qos_messages: qos, input, output }
}

#[test]
fn injected_out_of_memory_drives_every_policy() {
    common::init();
    let frames = 12;

    // degrade: every 3rd forward fails; each failure is retried on the next rung, and once the
    // ladder is exhausted (fp16, face-batch 1, no smaller checkpoint) the frame is dropped.
    let r = run(3, "", frames);
    println!("degrade: {}", r.stats);
    let s = &r.stats;
    assert_eq!(count(s, "frames-in"), frames as u64);
    assert_eq!(count(s, "frames-in"), count(s, "frames-out") + count(s, "frames-dropped"));
    assert_eq!(r.output.len() as u64, count(s, "frames-out"));
    assert!(count(s, "retries") >= 2, "{s}");
    assert!(count(s, "frames-dropped") >= 1, "{s}");
    assert_eq!(r.qos_messages as u64, count(s, "frames-dropped"));
    assert_eq!(s.get::<String>("plan").unwrap(), "size=256 fp16=true face-batch=1");

    // drop: no retry; a failing frame is dropped at once.
    let r = run(2, "memory-policy=drop", frames);
    println!("drop: {}", r.stats);
    let s = &r.stats;
    assert_eq!(count(s, "retries"), 0);
    assert!(count(s, "frames-dropped") >= 5, "{s}");
    assert_eq!(count(s, "frames-in"), count(s, "frames-out") + count(s, "frames-dropped"));
    assert_eq!(r.qos_messages as u64, count(s, "frames-dropped"));
    assert_eq!(s.get::<String>("plan").unwrap(), "size=256 fp16=false face-batch=2");

    // passthrough: a failing frame goes out as it came in.
    let r = run(2, "memory-policy=passthrough", frames);
    println!("passthrough: {}", r.stats);
    let s = &r.stats;
    let passed = count(s, "frames-passed-through");
    assert!(passed >= 5, "{s}");
    assert_eq!(count(s, "frames-out"), frames as u64);
    let identical = r.input.iter().zip(&r.output).filter(|(i, o)| i == o).count() as u64;
    assert_eq!(identical, passed, "passed-through frames must be bit-identical, restored ones not");

    // error: the first failure stops the pipeline with a message.
    std::env::set_var(gstgpen::memory::FAIL_EVERY_ENV, "1");
    let p = gst::parse::launch(&format!(
        "filesrc location={} ! jpegdec ! imagefreeze num-buffers=2 ! videoconvert ! gpenfilter size=256 model={} \
         detector-model={} device=cpu memory-policy=error ! fakesink",
        common::shared().join("media/images/two_people.jpg").display(),
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        common::detector().display(),
    ))
    .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let err = p.bus().unwrap().iter_timed(gst::ClockTime::from_seconds(60)).find_map(|m| match m.view() {
        gst::MessageView::Error(e) => Some(e.error().to_string()),
        gst::MessageView::Eos(_) => Some(String::new()),
        _ => None,
    });
    p.set_state(gst::State::Null).unwrap();
    std::env::remove_var(gstgpen::memory::FAIL_EVERY_ENV);
    let err = err.unwrap();
    assert!(err.contains("memory-policy=error") && err.contains("injected"), "{err}");
}
