//! Properties read only when the element starts (GST_PARAM_MUTABLE_READY) are refused while it
//! is PAUSED or PLAYING: the old value reads back, and a WARNING names the property and says it
//! takes effect at the next start. In NULL or READY they are taken.

mod common;

use std::cmp::Ordering;

use gst::prelude::*;

/// The start-only properties the element must have (those the probe found accepted and ignored).
const MUST_BE_START_ONLY: [&str; 9] = ["size", "model", "fp16", "mask", "upscale", "device", "batch-latency", "aligned", "detector-model"];

fn same(a: &glib::Value, b: &glib::Value) -> bool {
    a.compare(b) == Some(Ordering::Equal)
}

/// A valid value of `pspec` other than `current`.
fn another_value(pspec: &glib::ParamSpec, current: &glib::Value) -> glib::Value {
    let candidates: Vec<String> = if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt>() {
        let c = current.get::<u32>().unwrap();
        vec![(if c < p.maximum() { c + 1 } else { c - 1 }).to_string()]
    } else if pspec.is::<glib::ParamSpecBoolean>() {
        vec![(!current.get::<bool>().unwrap()).to_string()]
    } else if pspec.is::<glib::ParamSpecString>() {
        vec!["/nonexistent/changed-while-playing".into()]
    } else if pspec.is::<glib::ParamSpecEnum>() {
        glib::EnumClass::with_type(pspec.value_type()).unwrap().values().iter().map(|v| v.nick().to_owned()).collect()
    } else if pspec.is::<glib::ParamSpecFlags>() {
        glib::FlagsClass::with_type(pspec.value_type()).unwrap().values().iter().map(|v| v.nick().to_owned()).collect()
    } else {
        panic!("{}: no other value made for {}", pspec.name(), pspec.type_().name())
    };
    candidates
        .iter()
        .filter_map(|c| glib::Value::deserialize_with_pspec(c, pspec).ok())
        .find(|v| !same(v, current))
        .unwrap_or_else(|| panic!("{}: no value other than the current one among {candidates:?}", pspec.name()))
}

fn warnings(bus: &gst::Bus) -> Vec<String> {
    std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Warning]))
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn start_only_properties_are_refused_while_running_and_taken_when_stopped() {
    common::init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc ! video/x-raw,width=64,height=48,framerate=30/1 ! videoconvert ! gpenfilter name=g size=256 \
         model={} detector-model={} device=cpu ! fakesink sync=true",
        common::gpen_fixture("gpen-256-tiny.pth").display(),
        common::detector().display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let g = pipeline.by_name("g").unwrap();
    let bus = pipeline.bus().unwrap();
    let start_only: Vec<glib::ParamSpec> = g
        .list_properties()
        .iter()
        .filter(|p| {
            let f = p.flags();
            f.contains(glib::ParamFlags::WRITABLE)
                && f.contains(gst::PARAM_FLAG_MUTABLE_READY)
                && !f.intersects(gst::PARAM_FLAG_MUTABLE_PAUSED | gst::PARAM_FLAG_MUTABLE_PLAYING)
        })
        .cloned()
        .collect();
    for name in MUST_BE_START_ONLY {
        assert!(start_only.iter().any(|p| p.name() == name), "{name} is flagged changeable only in NULL or READY");
    }
    for state in [gst::State::Paused, gst::State::Playing] {
        pipeline.set_state(state).unwrap();
        let (r, now, _) = pipeline.state(gst::ClockTime::from_seconds(60));
        assert!(r.is_ok() && now == state, "{state:?}: {r:?} {now:?}");
        let _ = warnings(&bus);
        for pspec in &start_only {
            let before = g.property_value(pspec.name());
            g.set_property_from_value(pspec.name(), &another_value(pspec, &before));
            assert!(same(&g.property_value(pspec.name()), &before), "{}: the old value stays while {state:?}", pspec.name());
            let said = warnings(&bus);
            assert!(
                said.iter().any(|w| w.starts_with(&format!("{} cannot change", pspec.name())) && w.contains("next start")),
                "{} set while {state:?}: a warning names it and when it takes effect: {said:?}",
                pspec.name()
            );
        }
    }
    // Stopped, they are taken (and nothing is said).
    pipeline.set_state(gst::State::Ready).unwrap();
    let _ = warnings(&bus);
    for pspec in &start_only {
        let before = g.property_value(pspec.name());
        let other = another_value(pspec, &before);
        g.set_property_from_value(pspec.name(), &other);
        assert!(same(&g.property_value(pspec.name()), &other), "{}: taken in READY", pspec.name());
    }
    assert_eq!(warnings(&bus), Vec::<String>::new());
    pipeline.set_state(gst::State::Null).unwrap();
}
