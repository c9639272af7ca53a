//! gst-gpen: face restoration with GPEN on libtorch, as the GStreamer element `gpenfilter`.
//!
//! The restoration core ([`checkpoint`], [`gpen`], [`restorer`]) knows nothing of GStreamer;
//! [`gpenfilter`] is the glue.

pub mod align;
pub mod checkpoint;
pub mod cuda;
pub mod detect;
pub mod gpen;
pub mod gpenfilter;
pub mod memory;
pub mod nn;
pub mod registry;
pub mod restorer;
pub mod track;
pub mod upscale;

pub use restorer::{PackedLayout, Restorer, RestorerSettings};

/// Everything that can go wrong while setting up a restoration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Model(#[from] gpen::ModelError),
    /// A setting that cannot work (device, size, file), with how to fix it.
    #[error("{0}")]
    Settings(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A frame did not fit in memory and the memory policy is `error`.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // Before libtorch is first asked about CUDA, which it answers once for the process.
    let _ = cuda::load_backend();
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
