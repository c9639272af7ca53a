//! Soak: many frames through `gpenfilter` on CPU with the small test checkpoint, sampling the
//! process's resident memory every few hundred frames, to show that nothing grows.
//!
//! ```text
//! cargo run --release --example soak -- [--frames 10000] [--every 500] [--fail-every N]
//! ```
//! Frames: astronaut.png (from ../shared) moving along a sub-pixel path, 320x320, cycling
//! through 90 poses. `--fail-every N` makes every Nth generator forward fail as out of memory,
//! so the memory policy degrades and recovers over and over (it goes back up after
//! `RECOVER_AFTER` good frames, so N must be larger than that to see both).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gst::prelude::*;
use tch::{Kind, Tensor};

#[path = "../tests/common/motion.rs"]
mod motion;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1024.0
}

fn main() {
    let (mut frames, mut every, mut fail_every) = (10_000u64, 500u64, 0u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{a} needs a number"));
        match a.as_str() {
            "--frames" => frames = value(),
            "--every" => every = value(),
            "--fail-every" => fail_every = value(),
            other => panic!("unknown argument {other}"),
        }
    }
    if fail_every > 0 {
        std::env::set_var(gstgpen::memory::FAIL_EVERY_ENV, format!("soak:{fail_every}"));
    }
    gst::init().unwrap();
    gstgpen::plugin_register_static().unwrap();
    tch::set_num_threads(2);

    let img = image::open(shared().join("media/images/astronaut.png")).unwrap().to_rgb8();
    let photo = Tensor::from_slice(img.as_raw()).reshape([512, 512, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float);
    let photo = photo.upsample_bilinear2d([320, 320], false, None, None);
    let clip: Vec<gst::Buffer> = motion::path(90).iter().map(|p| gst::Buffer::from_slice(motion::render(&photo, p))).collect();

    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time block=true max-bytes=2000000 caps=video/x-raw,format=RGB,width=320,height=320,framerate=30/1 \
         ! gpenfilter name=soak size=256 model={} detector-model={} device=cpu ! fakesink sync=false",
        shared().join("fixtures/gpen/gpen-256-tiny.pth").display(),
        shared().join("weights/retinaface-mnet025-fd1mb.pth").display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    let g = pipeline.by_name("soak").unwrap();
    let out = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    {
        let out = out.clone();
        let element = g.downgrade();
        g.static_pad("src").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let n = out.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(every) {
                // The element's locks are free here: the buffer is already on its way downstream.
                let s = element.upgrade().map(|e| e.property::<gst::Structure>("stats"));
                let field = |name: &str| s.as_ref().and_then(|s| s.get::<u64>(name).ok()).unwrap_or(u64::MAX);
                println!(
                    "frames {n:>6}  rss {:>7.1} MiB  {:>6.1} s  retries {}  dropped {}  plan {}",
                    rss_mib(),
                    started.elapsed().as_secs_f64(),
                    field("retries"),
                    field("frames-dropped"),
                    s.as_ref().and_then(|s| s.get::<String>("plan").ok()).unwrap_or_default()
                );
                let _ = std::io::stdout().flush();
            }
            gst::PadProbeReturn::Ok
        });
    }
    println!("soak: {frames} frames of 320x320, fail-every {fail_every}, rss at start {:.1} MiB", rss_mib());
    pipeline.set_state(gst::State::Playing).unwrap();
    for i in 0..frames {
        let mut b = clip[(i % clip.len() as u64) as usize].copy();
        b.get_mut().unwrap().set_pts(gst::ClockTime::from_nseconds(i * 1_000_000_000 / 30));
        if src.push_buffer(b).is_err() {
            break;
        }
    }
    src.end_of_stream().unwrap();
    for msg in pipeline.bus().unwrap().iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    let stats = g.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    println!("done: {stats}");
}
