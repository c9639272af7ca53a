//! A restorer: an engine with one stream of its own, for callers with a single sequence of
//! frames or still images (tests, benchmarks, the examples).

use super::detections::Detections;
use super::engine::Engine;
use super::given::FaceSource;
use super::layout::{FrameLayout, Planes, PlanesMut};
use super::outcome::{FrameOutput, Outcome};
use super::settings::{LiveSettings, RestorerSettings};
use super::stream::Stream;
use super::temporal::Flicker;
use super::video::VideoCounters;
use super::work::{MaskChange, PasteReport};
use crate::detect::Face;
use crate::error::Error;

/// GPEN restoration of one stream of frames: aligned faces, or whole frames (detect, align,
/// restore, paste), optionally upscaled.
#[derive(Debug)]
pub struct Restorer {
    pub engine: Engine,
    pub stream: Stream,
}

impl Restorer {
    /// Loads the models named by `settings`; every failure says what and how to fix it.
    pub fn new(settings: &RestorerSettings) -> Result<Self, Error> {
        let engine = Engine::new(settings)?;
        let stream = Stream::new(&engine, settings)?;
        Ok(Restorer { engine, stream })
    }

    /// See [`Stream::begin`].
    pub fn begin<'a>(&mut self, data: impl Into<Planes<'a>>, layout: impl Into<FrameLayout>, dt: f64) -> Result<Detections, Error> {
        self.stream.begin(&self.engine, data, layout, dt)
    }

    /// See [`Stream::begin_from`].
    pub fn begin_from<'a>(
        &mut self,
        data: impl Into<Planes<'a>>,
        layout: impl Into<FrameLayout>,
        dt: f64,
        source: FaceSource,
    ) -> Result<Detections, Error> {
        self.stream.begin_from(&self.engine, data, layout, dt, source)
    }

    /// See [`Stream::set_pixel_aspect`].
    pub fn set_pixel_aspect(&mut self, aspect: f64) {
        self.stream.set_pixel_aspect(aspect)
    }

    /// See [`Stream::output_of`].
    pub fn output_of(&self, d: &Detections) -> FrameOutput {
        self.stream.output_of(d)
    }

    /// See [`Stream::finish`].
    pub fn finish<'a>(&mut self, d: Detections, out: Option<(impl Into<PlanesMut<'a>>, impl Into<FrameLayout>)>) -> Result<Outcome, Error> {
        self.stream.finish(&mut self.engine, d, out)
    }

    /// Both stages on a frame restored in place (no upscaling).
    pub fn process<'a>(&mut self, data: impl Into<PlanesMut<'a>>, layout: impl Into<FrameLayout>, dt: f64) -> Result<Outcome, Error> {
        self.stream.process(&mut self.engine, data, layout, dt)
    }

    /// See [`Stream::detect`].
    pub fn detect<'a>(&self, data: impl Into<Planes<'a>>, layout: impl Into<FrameLayout>) -> Result<Detections, Error> {
        self.stream.detect(&self.engine, data, layout)
    }

    /// See [`Stream::with_faces`].
    pub fn with_faces<'a>(
        &self,
        data: impl Into<Planes<'a>>,
        layout: impl Into<FrameLayout>,
        faces: Vec<Face>,
    ) -> Result<Detections, Error> {
        self.stream.with_faces(&self.engine, data, layout, faces)
    }

    /// See [`Stream::restore_faces`].
    pub fn restore_faces<'a>(
        &mut self,
        d: &Detections,
        data: impl Into<PlanesMut<'a>>,
        layout: impl Into<FrameLayout>,
    ) -> Result<PasteReport, Error> {
        self.stream.restore_faces(&self.engine, d, data, layout)
    }

    pub fn set_live(&mut self, live: LiveSettings) -> Result<(), Error> {
        self.stream.set_live(live)
    }

    pub fn reset_tracks(&mut self) {
        self.stream.reset();
    }

    pub fn video_counters(&self) -> VideoCounters {
        self.stream.video_counters()
    }

    pub fn flicker(&self) -> Result<Flicker, Error> {
        self.stream.flicker()
    }

    pub fn faces_kept(&self) -> usize {
        self.stream.faces_kept()
    }

    pub fn mask_change(&self) -> Result<MaskChange, Error> {
        self.stream.mask_change()
    }
}

impl std::ops::Deref for Restorer {
    type Target = Engine;

    /// The engine's figures (plan, budget, model, …) read through the restorer.
    fn deref(&self) -> &Engine {
        &self.engine
    }
}
