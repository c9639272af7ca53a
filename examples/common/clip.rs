//! The sample clip decoded, shared by the benchmarks that run on it.

use std::path::Path;

/// The sample clip's frames as packed RGB, and their size.
pub fn clip_frames(shared: &Path) -> (Vec<Vec<u8>>, usize, usize) {
    use gst::prelude::*;
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false",
        shared.join("media/videos/short_hamilton_clip.mp4").display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("sink").unwrap().downcast::<gst_app::AppSink>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (mut frames, mut size) = (Vec::new(), (0, 0));
    while let Ok(sample) = sink.pull_sample() {
        let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
        size = (info.width() as usize, info.height() as usize);
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(sample.buffer().unwrap(), &info).unwrap();
        let stride = info.stride()[0] as usize;
        let data = frame.plane_data(0).unwrap();
        frames.push((0..size.1).flat_map(|y| data[y * stride..y * stride + 3 * size.0].to_vec()).collect());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (frames, size.0, size.1)
}
