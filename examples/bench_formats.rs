//! A frame's handling in the stream's own format against the videoconvert sandwich: NV12 (1080p)
//! (the Hamilton clip scaled up, with faces; a textured gradient, without) through
//! `appsrc ! gpenfilter ! fakesink` and `appsrc ! videoconvert ! gpenfilter ! videoconvert !
//! fakesink`, with the tiny GPEN-512, and with its forward skipped (`GST_GPEN_SKIP_FORWARD`,
//! feature `fault-injection`) so that only the frame's handling and the detector are left.
//!
//! ```text
//! cargo run --release --features fault-injection --example bench_formats -- [--frames 8] [--threads 2] \
//!     [--width 1920 --height 1080] [--upscale 1|2|4]
//! ```
//! Prints, per run: frames per second and CPU time per frame (user + system, all threads), and
//! the NV12 run's ratio to the sandwich's; and the detector alone on the same frames.

#[path = "common/batching.rs"]
#[allow(dead_code)] // its shared() only
mod batching;
#[path = "common/clip.rs"]
mod clip;

use batching::shared;
use gst::prelude::*;
use std::time::Instant;

/// CPU seconds this process has used (user + system, every thread).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// `n` NV12 frames of `info` with no face: a gradient with a fine texture, which changes per frame.
fn faceless_nv12(n: usize, info: &gst_video::VideoInfo) -> Vec<gst::Buffer> {
    (0..n)
        .map(|i| {
            let mut b = gst::Buffer::with_size(info.size()).unwrap();
            {
                let mut map = b.get_mut().unwrap().map_writable().unwrap();
                for (k, v) in map.iter_mut().enumerate() {
                    *v = ((k % 1920) / 8 + (k / 1920) % 17 * 3 + i * 5) as u8;
                }
            }
            b
        })
        .collect()
}

/// The seconds and CPU seconds of `frames` pushed through `launch`'s `appsrc name=src` to its
/// `fakesink name=sink`, after one frame that loads the models.
fn run(launch: &str, frames: &[gst::Buffer], caps: &gst::Caps) -> (f64, f64) {
    let pipeline = gst::parse::launch(launch).unwrap().downcast::<gst::Pipeline>().unwrap();
    let src = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    src.set_caps(Some(caps));
    src.set_format(gst::Format::Time);
    let arrived = std::sync::Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    let seen = arrived.clone();
    pipeline.by_name("sink").unwrap().static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        *seen.0.lock().unwrap() += 1;
        seen.1.notify_all();
        gst::PadProbeReturn::Ok
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    let push = |i: usize, b: &gst::Buffer| {
        let mut b = b.copy();
        b.get_mut().unwrap().set_pts(gst::ClockTime::from_mseconds(i as u64 * 40));
        src.push_buffer(b).unwrap();
    };
    let wait = |n: usize| {
        let mut got = arrived.0.lock().unwrap();
        while *got < n {
            got = arrived.1.wait(got).unwrap();
        }
    };
    push(0, &frames[0]);
    wait(1);
    let (t, cpu) = (Instant::now(), cpu_seconds());
    for (i, f) in frames.iter().enumerate() {
        push(i + 1, f);
    }
    wait(frames.len() + 1);
    let out = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    src.end_of_stream().unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

fn main() {
    let (mut frames_n, mut threads, mut width, mut height, mut upscale) = (8, 2, 1920usize, 1080usize, 1);
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--frames" => frames_n = w[1].parse().unwrap(),
            "--threads" => threads = w[1].parse().unwrap(),
            "--width" => width = w[1].parse().unwrap(),
            "--height" => height = w[1].parse().unwrap(),
            "--upscale" => upscale = w[1].parse().unwrap(),
            _ => {}
        }
    }
    tch::set_num_threads(threads);
    // The forward of the elements named `skip` returns its input.
    std::env::set_var("GST_GPEN_SKIP_FORWARD", "skip:1");
    gst::init().unwrap();
    gstgpen::plugin_register_static().unwrap();
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, width as u32, height as u32)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .unwrap();
    let caps = info.to_caps().unwrap();
    let (clip, _) = clip::clip_buffers(&shared(), &format!("video/x-raw,format=NV12,width={width},height={height}"), frames_n);
    let faceless = faceless_nv12(frames_n, &info);
    let model = shared().join("fixtures/gpen/gpen-512-tiny.pth");
    let detector = shared().join("weights/retinaface-mnet025-fd1mb.pth");
    let props = |name: &str| {
        format!(
            "gpenfilter name={name} model={} size=512 device=cpu detector-model={} upscale={upscale}",
            model.display(),
            detector.display()
        )
    };
    println!("{width}x{height} NV12, {} frames, upscale={upscale}, tiny GPEN-512 fp32 on the CPU ({threads} threads)", clip.len());
    println!("| frames | forward | path | frames/s | CPU ms/frame | NV12 / sandwich (CPU) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (what, frames) in [("with faces", &clip), ("without faces", &faceless)] {
        for (forward, name) in [("skipped", "skip"), ("tiny GPEN-512", "real")] {
            let direct = format!("appsrc name=src ! {} ! fakesink name=sink sync=false", props(name));
            let sandwich = format!(
                "appsrc name=src ! videoconvert ! video/x-raw,format=RGB ! {} ! videoconvert ! video/x-raw,format=NV12 ! fakesink name=sink sync=false",
                props(name)
            );
            let (s1, c1) = run(&direct, frames, &caps);
            let (s2, c2) = run(&sandwich, frames, &caps);
            let n = frames.len() as f64;
            println!("| {what} | {forward} | NV12 | {:.2} | {:.0} | {:.2} |", n / s1, 1e3 * c1 / n, c1 / c2);
            println!("| {what} | {forward} | videoconvert sandwich | {:.2} | {:.0} | |", n / s2, 1e3 * c2 / n);
        }
    }
    // What a frame without faces cannot do without: the detector, on the frame read from NV12.
    let det = gstgpen::detect::RetinaFace::load(&detector, None, tch::Device::Cpu).unwrap();
    let (t, cpu) = (Instant::now(), cpu_seconds());
    for b in &faceless {
        let f = gst_video::VideoFrameRef::from_buffer_ref_readable(b.as_ref(), &info).unwrap();
        let layout = gstgpen::gpenfilter::frame_layout(&f).unwrap();
        let rgb = gstgpen::restorer::frame::to_tensor(gstgpen::gpenfilter::planes(&f), layout, tch::Device::Cpu).unwrap();
        drop(gstgpen::detect::detect_at_scales(&det, &rgb, &[1.0, 320.0 / width.max(height) as f64], 0.9).unwrap());
    }
    let n = faceless.len() as f64;
    println!(
        "| without faces | (the detector alone) | NV12 read + detector | {:.2} | {:.0} | |",
        n / t.elapsed().as_secs_f64(),
        1e3 * (cpu_seconds() - cpu) / n
    );
}
