//! The restoration core: frames in memory in, restored frames out. It knows nothing of
//! GStreamer, so tests, examples, benchmarks and the restore command drive it directly.
//!
//! An [`Engine`] holds what streams may share: the models, the memory ladder and its budget.
//! A [`Stream`] follows one sequence of frames: each frame is begun ([`Stream::begin`]:
//! uploaded, its faces found and followed) and finished ([`Stream::finish`]: restored under the
//! engine's memory policy and written), and the stream says what became of it ([`Outcome`]).
//! A [`Lookahead`] holds begun frames so that the generator batches the faces of several.
//! Interlaced frames are begun and finished as their two [`fields`].
//! [`Restorer`] is an engine with one stream of its own. This file only names the parts.

mod ahead;
pub mod batch;
pub mod color;
mod detections;
mod engine;
mod faces;
pub mod fields;
mod find;
pub mod frame;
mod given;
pub mod ladder;
mod layout;
mod lock;
mod lookahead;
pub mod outcome;
pub mod paste;
mod policy;
pub mod settings;
mod single;
mod stream;
pub mod temporal;
pub mod video;
mod work;
pub mod worker;
pub mod yuv;

pub use ahead::{AheadDone, AheadJob, GeneratorCounts};
pub use detections::Detections;
pub use engine::Engine;
pub use fields::Field;
pub use given::{FaceSource, GivenFace};
pub use ladder::RECOVER_AFTER;
pub use layout::{FrameLayout, PackedLayout, Planes, PlanesMut, Samples, YuvLayout};
pub use lookahead::{Held, Lookahead, Release};
pub use outcome::{FrameOutput, Outcome};
pub use settings::*;
pub use single::Restorer;
pub use stream::Stream;
pub use temporal::Flicker;
pub use video::{SceneChange, Supplied, TrackedFaces, VideoCounters, SCENE_CUT};
pub use work::{MaskChange, PasteReport, PasteTimings};
pub use yuv::{Colorimetry, Matrix, Siting};
