//! gst-gpen: face restoration with GPEN on libtorch, as the GStreamer element `gpenfilter`.
//!
//! The restoration core ([`checkpoint`], [`gpen`], [`restorer`]) knows nothing of GStreamer;
//! [`gpenfilter`] is the glue.

pub mod align;
pub mod checkpoint;
pub mod detect;
pub mod error;
pub mod gpen;
pub mod gpenfilter;
pub mod memory;
pub mod nn;
pub mod parse;
pub mod registry;
pub mod restorer;
pub mod sys;
pub mod track;
pub mod transfer;
pub mod upscale;

pub use error::{Error, Network, Setting};
pub use restorer::{Engine, PackedLayout, Restorer, RestorerSettings, Stream};

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // Before libtorch is first asked about CUDA, which it answers once for the process.
    let _ = sys::load_cuda_backend();
    gpenfilter::register(plugin)
}

gst::plugin_define!(
    gpen,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
