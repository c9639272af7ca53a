//! What the core decided, told to the pipeline: a frame's outcome as statistics, messages and a
//! flow return, and errors as GStreamer errors with the property to change. Decides nothing:
//! the core's [`Outcome`] and [`Error`] say what happened. Also the element's debug category.

use std::sync::Mutex;
use std::time::Instant;

use gst::prelude::*;
use gst_base::prelude::*;
use once_cell::sync::Lazy;

use super::frames::FrameTimes;
use super::properties::property_of;
use super::stats::Stats;
use crate::error::{Error, Setting};
use crate::memory::Plan;
use crate::restorer::Outcome;

pub static CAT: Lazy<gst::DebugCategory> =
    Lazy::new(|| gst::DebugCategory::new("gpenfilter", gst::DebugColorFlags::empty(), Some("GPEN face restoration")));

/// A set-up failure as a GStreamer error: the domain that fits, worded with the property to
/// change where a setting is at fault.
pub fn start_error(e: &Error) -> gst::ErrorMessage {
    use crate::checkpoint::CheckpointError as C;
    let named = |setting: Setting| format!("{setting} (property {})", property_of(setting));
    if e.is_out_of_memory() && !matches!(e, Error::OutOfMemory(_)) {
        return gst::error_msg!(
            gst::ResourceError::NoSpaceLeft,
            ("Out of memory while loading the models: {}", e),
            ["set a smaller size, fp16=true, or free device memory; {}", named(Setting::Budget)]
        );
    }
    match e {
        Error::InvalidSetting { setting, problem, hint } => {
            gst::error_msg!(gst::LibraryError::Settings, ("{}: {}; {}", named(*setting), problem, hint))
        }
        Error::FileNotFound { setting, path, problem, hint } => {
            gst::error_msg!(gst::ResourceError::NotFound, ("{}: {}: {}; {}", named(*setting), path.display(), problem, hint))
        }
        Error::Device { device, problem, hint } => {
            gst::error_msg!(gst::ResourceError::NotFound, ("{}: `{}`: {}; {}", named(Setting::Device), device, problem, hint))
        }
        Error::Checkpoint(C::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            gst::error_msg!(gst::ResourceError::NotFound, ("{}", e))
        }
        Error::Checkpoint(C::Io { .. }) => gst::error_msg!(gst::ResourceError::OpenRead, ("{}", e)),
        Error::Checkpoint(_) | Error::ModelMismatch { .. } | Error::UnsafeCheckpoint { .. } => {
            gst::error_msg!(gst::ResourceError::Read, ("{}", e))
        }
        Error::OutOfMemory(_) => gst::error_msg!(gst::ResourceError::NoSpaceLeft, ("{}", e), ["{}", named(Setting::Budget)]),
        Error::Torch(_)
        | Error::Accelerator(_)
        | Error::BufferTooSmall { .. }
        | Error::OutputMismatch(_)
        | Error::NotNegotiated
        | Error::NetworkInput { .. }
        | Error::WorkerLost(_)
        | Error::ForwardPanicked
        | Error::Internal(_) => gst::error_msg!(gst::LibraryError::Init, ("{}", e)),
    }
}

/// What became of a frame, told to the pipeline: statistics, messages and the flow return.
/// `plan`: the plan after the frame; `started`: when the work on it began.
pub fn conclude(
    element: &gst_base::BaseTransform,
    stats: &Mutex<Stats>,
    outcome: Result<Outcome, Error>,
    plan: Plan,
    times: FrameTimes,
    started: Instant,
) -> Result<gst::FlowSuccess, gst::FlowError> {
    let outcome = match outcome {
        Ok(o) => o,
        Err(e @ Error::OutOfMemory(_)) => {
            gst::element_error!(
                element,
                gst::ResourceError::NoSpaceLeft,
                ("Out of memory, and memory-policy=error: {}", e),
                ["set a larger vram-budget, a smaller size, fp16=true, a smaller tile-size, or memory-policy=degrade"]
            );
            return Err(gst::FlowError::Error);
        }
        Err(e) => {
            gst::element_error!(element, gst::StreamError::Failed, ("Restoring a frame failed: {}", e));
            return Err(gst::FlowError::Error);
        }
    };
    {
        let mut stats = stats.lock().unwrap();
        stats.record(&outcome, started.elapsed());
        if stats.plan != Some(plan) {
            gst::info!(CAT, obj = element, "plan now {plan} (was {:?})", stats.plan.map(|p| p.to_string()));
            stats.plan = Some(plan);
        }
    }
    Ok(match &outcome {
        Outcome::Dropped { reason } => {
            gst::warning!(CAT, obj = element, "dropped frame {:?}: {reason}", times.pts);
            // Taken before posting: a bus handler may read the statistics.
            let warning = stats.lock().unwrap().drop_warning(reason, Instant::now());
            if let Some(text) = warning {
                gst::element_warning!(element, gst::StreamError::Failed, ("{}", text));
            }
            post_drop(element, stats, times);
            gst_base::BASE_TRANSFORM_FLOW_DROPPED
        }
        Outcome::PassedThrough { reason } => {
            gst::warning!(CAT, obj = element, "frame {:?} passed through unprocessed: {reason}", times.pts);
            gst::FlowSuccess::Ok
        }
        Outcome::Unreadable { have, need } => {
            let (width, height) = element
                .sink_pad()
                .current_caps()
                .and_then(|c| gst_video::VideoInfo::from_caps(&c).ok())
                .map_or((0, 0), |i| (i.width(), i.height()));
            gst::element_warning!(
                element,
                gst::StreamError::Format,
                (
                    "Frame {:?} passed through unrestored: its buffer has {} bytes, but a {width}x{height} frame as the caps \
                     describe needs {need}",
                    times.pts,
                    have
                ),
                ["the element upstream must send buffers laid out as its caps say (rows padded to 4 bytes for RGB); \
                  a videoconvert before gpenfilter repacks them"]
            );
            gst::FlowSuccess::Ok
        }
        Outcome::Restored { retried: true, plan, .. } => {
            gst::warning!(CAT, obj = element, "out of memory: frame {:?} redone with {plan}", times.pts);
            gst::FlowSuccess::Ok
        }
        Outcome::NoFaces | Outcome::Described { .. } | Outcome::Restored { .. } => gst::FlowSuccess::Ok,
    })
}

/// A QoS message for a frame the memory policy dropped.
fn post_drop(element: &gst_base::BaseTransform, stats: &Mutex<Stats>, times: FrameTimes) {
    let (processed, dropped) = stats.lock().unwrap().qos_counts();
    let segment = element.segment();
    let (running, stream) = match segment.downcast_ref::<gst::ClockTime>() {
        Some(seg) => (times.pts.and_then(|p| seg.to_running_time(p)), times.pts.and_then(|p| seg.to_stream_time(p))),
        None => (None, None),
    };
    let msg = gst::message::Qos::builder(false)
        .running_time(running)
        .stream_time(stream)
        .timestamp(times.pts)
        .duration(times.duration)
        .values(0, 1.0, 0)
        .stats(gst::format::Buffers::from_u64(processed), gst::format::Buffers::from_u64(dropped))
        .src(element)
        .build();
    let _ = element.post_message(msg);
}
