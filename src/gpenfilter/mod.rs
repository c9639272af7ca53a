//! `gpenfilter`: GPEN face restoration as a GStreamer video filter.
//!
//! ```text
//! gst-launch-1.0 filesrc location=faces.mp4 ! decodebin ! \
//!     gpenfilter size=512 fp16=true ! x264enc ! mp4mux ! \
//!     filesink location=restored.mp4
//! ```

use gst::glib;
use gst::prelude::*;

#[cfg(feature = "analytics")]
mod analytics;
mod caps;
mod enums;
mod frames;
mod imp;
pub mod meta;
mod properties;
mod report;
mod stats;

// How a mapped GStreamer frame lies in memory, for applications that hand frames to the core.
pub use caps::{frame_layout, planes, FORMATS};
pub use enums::{DetectorVariant, FacesFrom, Mask, MaskRegions, MemoryPolicy, Size, Upscale};
pub use imp::GpenFilter;

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    MemoryPolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Size::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    DetectorVariant::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Upscale::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Mask::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    MaskRegions::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    FacesFrom::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(Some(plugin), "gpenfilter", gst::Rank::NONE, GpenFilter::static_type())
}
