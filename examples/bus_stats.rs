//! Embedding `gpenfilter` in a Rust application: build a pipeline, run it, and follow what the
//! element does from the bus (its `gpenfilter-stats` element messages, QoS messages for dropped
//! frames, errors).
//!
//! ```text
//! cargo run --release --example bus_stats -- VIDEO [gpenfilter PROPERTY=VALUE ...]
//! cargo run --release --example bus_stats -- ../shared/media/videos/short_hamilton_clip.mp4 \
//!     model=../shared/fixtures/gpen/gpen-256-tiny.pth size=256 \
//!     detector-model=../shared/weights/retinaface-mnet025-fd1mb.pth
//! ```
//! It prints one line per statistics message and exits 0 at EOS, 1 on an error.

use gst::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(video) = args.first() else {
        eprintln!("usage: bus_stats VIDEO [gpenfilter PROPERTY=VALUE ...]");
        std::process::exit(2);
    };
    gst::init().expect("GStreamer initialises");
    // An application linking the crate registers the element itself; one using the installed
    // plugin would skip this.
    gstgpen::plugin_register_static().expect("the gpen plugin registers");

    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc").property("location", video).build().unwrap();
    let decode = gst::ElementFactory::make("decodebin").build().unwrap();
    let convert = gst::ElementFactory::make("videoconvert").build().unwrap();
    let filter = gst::ElementFactory::make("gpenfilter").property("post-messages", true).build().unwrap();
    for kv in &args[1..] {
        let Some((k, v)) = kv.split_once('=') else {
            eprintln!("bus_stats: {kv}: expected PROPERTY=VALUE");
            std::process::exit(2);
        };
        if filter.find_property(k).is_none() {
            eprintln!("bus_stats: gpenfilter has no property {k}");
            std::process::exit(2);
        }
        filter.set_property_from_str(k, v);
    }
    let sink = gst::ElementFactory::make("fakesink").build().unwrap();
    pipeline.add_many([&src, &decode, &convert, &filter, &sink]).unwrap();
    src.link(&decode).unwrap();
    gst::Element::link_many([&convert, &filter, &sink]).unwrap();
    let convert_sink = convert.static_pad("sink").unwrap();
    decode.connect_pad_added(move |_, pad| {
        if pad.query_caps(None).structure(0).is_some_and(|s| s.name().starts_with("video/")) && !convert_sink.is_linked() {
            let _ = pad.link(&convert_sink);
        }
    });

    let _ = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus().unwrap();
    let mut code = 0;
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Element(m) => {
                let Some(s) = m.structure().filter(|s| s.name() == "gpenfilter-stats") else { continue };
                let n = |f: &str| s.get::<u64>(f).unwrap_or(0);
                println!(
                    "stats{}: frames in {} out {} dropped {} passed-through {}, faces restored {}, plan {}, {:.1} ms/frame (worst {:.1})",
                    if s.get::<bool>("eos").unwrap_or(false) { " (final)" } else { "" },
                    n("frames-in"),
                    n("frames-out"),
                    n("frames-dropped"),
                    n("frames-passed-through"),
                    n("faces-restored"),
                    s.get::<String>("plan").unwrap_or_default(),
                    s.get::<f64>("mean-ms").unwrap_or(0.0),
                    s.get::<f64>("worst-ms").unwrap_or(0.0),
                );
            }
            gst::MessageView::Qos(q) => {
                let (_, dropped) = q.stats();
                println!("qos: frame at {} dropped ({dropped} dropped so far)", q.get().2.display());
            }
            gst::MessageView::Error(e) => {
                eprintln!("bus_stats: {} ({})", e.error(), e.debug().unwrap_or_default());
                code = 1;
                break;
            }
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    std::process::exit(code);
}
