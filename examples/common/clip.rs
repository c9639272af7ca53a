//! The sample clip decoded, shared by the benchmarks that run on it.

use std::path::Path;

/// The sample clip's frames as packed RGB, and their size.
#[allow(dead_code)] // not every benchmark that includes this file takes packed RGB
pub fn clip_frames(shared: &Path) -> (Vec<Vec<u8>>, usize, usize) {
    let (buffers, info) = clip_buffers(shared, "video/x-raw,format=RGB", usize::MAX);
    let (w, h) = (info.width() as usize, info.height() as usize);
    let frames = buffers
        .iter()
        .map(|b| {
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(b.as_ref(), &info).unwrap();
            let stride = info.stride()[0] as usize;
            let data = frame.plane_data(0).unwrap();
            (0..h).flat_map(|y| data[y * stride..y * stride + 3 * w].to_vec()).collect()
        })
        .collect();
    (frames, w, h)
}

/// The sample clip's first `n` frames as buffers of `caps` (a `video/x-raw` format, and a size
/// the clip is scaled to), with their info.
pub fn clip_buffers(shared: &Path, caps: &str, n: usize) -> (Vec<gst::Buffer>, gst_video::VideoInfo) {
    let clip = shared.join("media/videos/short_hamilton_clip.mp4");
    buffers_of(
        &format!("filesrc location={} ! decodebin ! videoconvert ! videoscale ! {caps} ! appsink name=sink sync=false", clip.display()),
        n,
    )
}

/// The first `n` buffers that reach the `appsink name=sink` of the pipeline `launch`, with
/// their info.
pub fn buffers_of(launch: &str, n: usize) -> (Vec<gst::Buffer>, gst_video::VideoInfo) {
    use gst::prelude::*;
    gst::init().unwrap();
    let pipeline = gst::parse::launch(launch).unwrap().downcast::<gst::Pipeline>().unwrap();
    let sink = pipeline.by_name("sink").unwrap().downcast::<gst_app::AppSink>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (mut frames, mut info) = (Vec::new(), None);
    while let Ok(sample) = sink.pull_sample() {
        info.get_or_insert_with(|| gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap());
        if frames.len() < n {
            frames.push(sample.buffer_owned().unwrap());
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (frames, info.expect("the clip has frames"))
}
