//! A stream: what follows one sequence of frames. Its mode, its faces and tracks, the crops
//! registered frame to frame, the faces and masks kept for blending and the flicker meter.
//! Every frame is begun ([`Stream::begin`]: uploaded, its faces found and followed) and
//! finished ([`Stream::finish`]: restored under the engine's memory policy and written, or
//! left as it is); the stream alone says what becomes of it ([`Outcome`]).

use tch::{Device, Tensor};

use super::color;
use super::detections::Detections;
use super::engine::Engine;
use super::faces::FaceStream;
use super::find::find_faces;
use super::frame;
use super::given::{self, FaceSource};
use super::layout::{FrameLayout, Planes, PlanesMut};
use super::outcome::{FrameOutput, Outcome};
use super::settings::{ColorMode, LiveSettings, RestorerSettings};
use super::temporal::Flicker;
use super::video::VideoCounters;
use super::work::{self, MaskChange, PasteReport};
use crate::align::Stretch;
use crate::detect::Face;
use crate::error::{Error, Setting};
use crate::memory;
use crate::transfer;
use crate::upscale::Upscaler;

/// What the frames of a stream are, and what is done with them.
#[derive(Debug)]
enum Mode {
    /// Each frame is one aligned face.
    Aligned,
    /// Faces are found in whole frames and pasted back.
    Faces(FaceStream),
    /// As `Faces`, onto the frame upscaled.
    Upscaled(FaceStream),
    /// Faces are found, followed and described; every frame passes through unrestored (`None`:
    /// aligned faces, where there is nothing to find).
    DetectOnly(Option<FaceStream>),
}

/// One stream of frames restored by an [`Engine`].
#[derive(Debug)]
pub struct Stream {
    mode: Mode,
    /// The width of a stored pixel over its height.
    pixel_aspect: f64,
}

impl Stream {
    /// A stream of the frames `settings` describe, on `engine` (made from the same settings).
    pub fn new(engine: &Engine, settings: &RestorerSettings) -> Result<Self, Error> {
        settings.validate()?;
        let faces = || -> Result<FaceStream, Error> {
            engine.face_models()?;
            Ok(FaceStream::new(&settings.faces, engine))
        };
        let mode = match (settings.aligned, settings.restore, settings.upscale.factor) {
            (true, true, _) => Mode::Aligned,
            (true, false, _) => Mode::DetectOnly(None),
            (false, false, _) => Mode::DetectOnly(Some(faces()?)),
            (false, true, 1) => Mode::Faces(faces()?),
            (false, true, f) if engine.upscale_factor() == f => Mode::Upscaled(faces()?),
            (false, true, f) => {
                return Err(Error::invalid(
                    Setting::Upscale,
                    format!("x{f} asked of an engine that upscales x{}", engine.upscale_factor()),
                    "make the stream from the engine's own settings",
                ))
            }
        };
        Ok(Stream { mode, pixel_aspect: 1.0 })
    }

    /// The width of the frames' stored pixels over their height (the caps' pixel aspect
    /// ratio; 1 for square pixels, and for a ratio that is not a positive number). Faces are
    /// found, aligned and pasted in display geometry, so GPEN sees undistorted faces; what the
    /// stream reports of them stays in stored pixels.
    pub fn set_pixel_aspect(&mut self, aspect: f64) {
        self.pixel_aspect = if aspect.is_finite() && aspect > 0.0 { aspect } else { 1.0 };
    }

    /// How a whole frame's pixels are displayed.
    fn stretch(&self) -> Stretch {
        Stretch { x: self.pixel_aspect, y: 1.0 }
    }

    fn faces(&self) -> Option<&FaceStream> {
        match &self.mode {
            Mode::Faces(s) | Mode::Upscaled(s) | Mode::DetectOnly(Some(s)) => Some(s),
            Mode::Aligned | Mode::DetectOnly(None) => None,
        }
    }

    fn faces_mut(&mut self) -> Option<&mut FaceStream> {
        match &mut self.mode {
            Mode::Faces(s) | Mode::Upscaled(s) | Mode::DetectOnly(Some(s)) => Some(s),
            Mode::Aligned | Mode::DetectOnly(None) => None,
        }
    }

    fn face_stream(&mut self) -> Result<&mut FaceStream, Error> {
        self.faces_mut().ok_or_else(not_whole_frames)
    }

    /// Stage one of a frame: the frame uploaded and, for whole frames, its faces followed along
    /// tracks (`dt`: seconds since the previous frame). A detector that runs out of memory
    /// leaves the frame to the memory policy: the result then carries the frame's fate.
    pub fn begin<'a>(
        &mut self,
        engine: &Engine,
        data: impl Into<Planes<'a>>,
        layout: impl Into<FrameLayout>,
        dt: f64,
    ) -> Result<Detections, Error> {
        self.begin_from(engine, data, layout, dt, FaceSource::Detector)
    }

    /// As [`begin`](Self::begin), with the frame's faces from `source`: the detector, faces
    /// found elsewhere, or both. Given faces are followed along tracks as detected ones are.
    pub fn begin_from<'a>(
        &mut self,
        engine: &Engine,
        data: impl Into<Planes<'a>>,
        layout: impl Into<FrameLayout>,
        dt: f64,
        source: FaceSource,
    ) -> Result<Detections, Error> {
        let stretch = self.stretch();
        self.begin_picture(engine, data.into(), layout.into(), dt, source, stretch)
    }

    /// As [`begin_from`](Self::begin_from), for one field of an interlaced frame (`frame_dt`:
    /// seconds since the previous frame). Fields are begun in temporal order as pictures of
    /// their own: followed at the field rate, their pixels displayed twice as tall. The
    /// field's `data` and `layout` are [`Field::of`](super::Field::of) and its layout; it is
    /// finished into the same lines of the output.
    pub fn begin_field_from<'a>(
        &mut self,
        engine: &Engine,
        data: impl Into<Planes<'a>>,
        layout: impl Into<FrameLayout>,
        frame_dt: f64,
        source: FaceSource,
    ) -> Result<Detections, Error> {
        let stretch = Stretch { y: 2.0, ..self.stretch() };
        self.begin_picture(engine, data.into(), layout.into(), frame_dt / 2.0, source, stretch)
    }

    fn begin_picture(
        &mut self,
        engine: &Engine,
        data: Planes<'_>,
        layout: FrameLayout,
        dt: f64,
        source: FaceSource,
        stretch: Stretch,
    ) -> Result<Detections, Error> {
        let frame = match frame::to_tensor(data, layout, engine.device) {
            Ok(f) => f,
            // No room for the frame itself: the policy decides; a pass-through is made on the CPU.
            Err(e) if e.is_out_of_memory() => {
                memory::release_cached();
                self.reset();
                let decided = Some(engine.give_up(format!("frame upload: {e}"))?);
                let frame = frame::to_tensor(data, layout, Device::Cpu)?;
                return Ok(Detections::empty(frame, decided, None));
            }
            Err(e) => return Err(e),
        };
        let Some(stage) = self.faces_mut() else { return Ok(Detections::empty(frame, None, None)) };
        let models = engine.face_models()?;
        let interval = stage.settings.live.detection_interval;
        stage.arrived += 1;
        let serial = Some(stage.arrived);
        let (detector, settings) = (&models.detector, &stage.settings);
        let found = match &source {
            FaceSource::Detector => stage.video.next(&frame, dt, interval, |extra| find_faces(detector, settings, &frame, stretch, extra)),
            FaceSource::Given(g) => {
                stage.video.next_supplied(&frame, dt, |extra| given::supply(detector, settings, &frame, stretch, g, false, extra))
            }
            FaceSource::Both(g) => {
                stage.video.next_supplied(&frame, dt, |extra| given::supply(detector, settings, &frame, stretch, g, true, extra))
            }
        };
        match found {
            Ok(mut t) => {
                let (thumbs, registration) = stage.register(&frame, &mut t.faces, &t.ids, models.paster.size(), stretch)?;
                let (faces, ids, detected, scene_cut) = (t.faces, t.ids, t.detected, t.scene_cut);
                Ok(Detections { faces, ids, detected, scene_cut, registration, thumbs, stretch, ..Detections::empty(frame, None, serial) })
            }
            Err(e) if e.is_out_of_memory() => {
                memory::release_cached();
                stage.tracks.clear();
                // No smaller plan helps the detector: the policy decides at once.
                let decided = Some(engine.give_up(format!("face detection: {e}"))?);
                Ok(Detections { detected: true, ..Detections::empty(frame, decided, serial) })
            }
            Err(e) => Err(e),
        }
    }

    /// A frame whose memory does not hold it (`have` of the `need`ed bytes): it is begun with
    /// its fate decided, passed through as it came, in its place among the stream's frames.
    pub fn unreadable(&self, have: usize, need: usize) -> Detections {
        Detections::empty(Tensor::new(), Some(Outcome::Unreadable { have, need }), None)
    }

    /// What [`finish`](Self::finish) will do with the frame's memory.
    pub fn output_of(&self, d: &Detections) -> FrameOutput {
        let upscaled = matches!(self.mode, Mode::Upscaled(..));
        match &d.decided {
            Some(Outcome::Dropped { .. }) => FrameOutput::Dropped,
            Some(Outcome::Unreadable { .. }) => FrameOutput::Unchanged,
            Some(_) if upscaled => FrameOutput::Written,
            Some(_) => FrameOutput::Unchanged,
            None => match &self.mode {
                Mode::DetectOnly(_) => FrameOutput::Unchanged,
                Mode::Aligned | Mode::Upscaled(_) => FrameOutput::Written,
                Mode::Faces(_) if d.faces.is_empty() => FrameOutput::Unchanged,
                Mode::Faces(_) => FrameOutput::Written,
            },
        }
    }

    /// The faces the generator would restore for `d` when it is finished, if they can be
    /// restored ahead (whole frames, not upscaled, to be written, not restored ahead yet).
    pub(super) fn faces_ahead(&self, d: &Detections) -> usize {
        let eligible = matches!(self.mode, Mode::Faces(_)) && d.open_ahead() && d.decided.is_none();
        if eligible && self.output_of(d) == FrameOutput::Written {
            d.faces.len()
        } else {
            0
        }
    }

    /// Whether `d`'s faces may still be restored ahead.
    pub fn awaits_ahead(&self, d: &Detections) -> bool {
        self.faces_ahead(d) > 0
    }

    /// Stage two of a frame: its faces restored under the engine's memory policy and written
    /// into `out` (the input buffer itself for in-place use, or the output frame when
    /// upscaling). `out` may be `None` when nothing is written ([`output_of`](Self::output_of)
    /// is not [`FrameOutput::Written`]).
    pub fn finish<'a>(
        &mut self,
        engine: &mut Engine,
        d: Detections,
        out: Option<(impl Into<PlanesMut<'a>>, impl Into<FrameLayout>)>,
    ) -> Result<Outcome, Error> {
        self.take_up(&d);
        if self.output_of(&d) != FrameOutput::Written {
            return Ok(match (d.decided, &self.mode) {
                (Some(decided), _) => decided,
                (None, Mode::DetectOnly(_)) if !d.faces.is_empty() => Outcome::Described { faces: d.faces.len() },
                (None, _) => Outcome::NoFaces,
            });
        }
        let Some((data, layout)) = out else {
            return Err(Error::Internal("this frame is written, but no output frame was given".into()));
        };
        let (mut data, layout) = (data.into(), layout.into());
        let (w, h) = d.size();
        let f = engine.upscale_factor();
        if layout.size() != (w * f, h * f) {
            let upscaled = if f > 1 { format!(" upscaled x{f}") } else { String::new() };
            return Err(Error::OutputMismatch(format!(
                "a {w}x{h} frame{upscaled} does not fill a {}x{} output",
                layout.width(),
                layout.height()
            )));
        }
        let bicubic = |data: PlanesMut<'_>| -> Result<(), Error> {
            frame::write_frame(&Upscaler::Bicubic(f).upscale(&d.frame.f_to_device(Device::Cpu)?, 0, 0)?, data, layout)
        };
        if let Some(outcome @ Outcome::PassedThrough { .. }) = &d.decided {
            bicubic(data)?;
            return Ok(outcome.clone());
        }
        let faces = if matches!(self.mode, Mode::Aligned) { 1 } else { d.faces.len() };
        let outcome = engine.run(faces, (w, h), &mut |engine: &Engine| self.restore(engine, &d, data.reborrow(), &layout))?;
        match outcome {
            Outcome::Restored { faces: 0, .. } => Ok(Outcome::NoFaces),
            Outcome::PassedThrough { .. } if f > 1 => {
                bicubic(data)?;
                Ok(outcome)
            }
            o => Ok(o),
        }
    }

    /// Both stages on a frame restored in place (no upscaling).
    pub fn process<'a>(
        &mut self,
        engine: &mut Engine,
        data: impl Into<PlanesMut<'a>>,
        layout: impl Into<FrameLayout>,
        dt: f64,
    ) -> Result<Outcome, Error> {
        let (data, layout) = (data.into(), layout.into());
        let d = self.begin(engine, data.as_planes(), layout, dt)?;
        self.finish(engine, d, Some((data, layout)))
    }

    /// The work of one try at a frame under the engine's current plan: the faces restored.
    fn restore(&mut self, engine: &Engine, d: &Detections, data: PlanesMut<'_>, layout: &FrameLayout) -> Result<usize, Error> {
        let faces = (&d.faces[..], &d.ids[..], &d.thumbs[..], d.stretch);
        match &mut self.mode {
            Mode::Aligned => work::restore_aligned(engine, &d.frame, data, layout).map(|_| 1),
            Mode::DetectOnly(_) => Err(Error::Internal("a detect-only stream restores nothing".into())),
            Mode::Faces(stage) => {
                let ahead = d.ahead.restored().filter(|a| a.fits(&engine.plan()));
                work::restore_onto(engine, stage, &d.frame, &d.frame, faces, ahead, Some((data, layout))).map(|r| r.restored)
            }
            Mode::Upscaled(stage) => {
                let Some(up) = &engine.upscaler else {
                    return Err(Error::Internal("an upscaled stream on an engine without an upscaler".into()));
                };
                let mut background = up.upscale(&d.frame, engine.plan().tile.unwrap_or(0), engine.tile_overlap)?;
                // A black-and-white frame leaves black and white under `auto`: an upscaling
                // network may colour it (bicubic interpolation keeps R = G = B exactly).
                if matches!(up, Upscaler::Net(_)) && stage.settings.live.color == ColorMode::Auto {
                    background = color::grey_frame(&d.frame, background)?;
                }
                let mut restored = 0;
                if !d.faces.is_empty() {
                    let f = up.factor();
                    // Pixel centres: x in the frame is (x + 0.5) * f - 0.5 in the upscaled one.
                    let scale = |v: f32| (v + 0.5) * f as f32 - 0.5;
                    let faces: Vec<Face> = d
                        .faces
                        .iter()
                        .map(|x| Face {
                            bbox: x.bbox.map(scale),
                            score: x.score,
                            landmarks: x.landmarks.map(|[a, b]| [scale(a), scale(b)]),
                        })
                        .collect();
                    // Crops come from the frame upscaled bilinearly, as GPEN takes them; the faces
                    // are composed into the upscaled frame, which then comes down once.
                    let (w, h) = d.size();
                    let crops_from = d.frame.f_upsample_bilinear2d([h * f, w * f], false, None, None)?.f_round()?.f_clamp(0.0, 255.0)?;
                    restored =
                        work::restore_onto(engine, stage, &crops_from, &background, (&faces, &d.ids, &d.thumbs, d.stretch), None, None)?
                            .restored;
                }
                frame::write_frame(&background, data, layout)?;
                Ok(restored)
            }
        }
    }

    /// Before a frame is finished: its tracks' state is the one its predecessor left, and a
    /// scene cut starts the flicker figure afresh.
    fn take_up(&mut self, d: &Detections) {
        if let (Some(stage), Some(serial)) = (self.faces_mut(), d.serial) {
            stage.tracks.serial = serial;
            if d.scene_cut {
                stage.flicker.forget();
            }
        }
    }

    /// A still image's faces (no tracking), best first, filtered by size and count; keep the
    /// result for [`restore_faces`](Self::restore_faces).
    pub fn detect<'a>(&self, engine: &Engine, data: impl Into<Planes<'a>>, layout: impl Into<FrameLayout>) -> Result<Detections, Error> {
        let stage = self.faces().ok_or_else(not_whole_frames)?;
        let frame = frame::to_tensor(data, layout, engine.device)?;
        let stretch = self.stretch();
        let (faces, _) = find_faces(&engine.face_models()?.detector, &stage.settings, &frame, stretch, &[])?;
        Ok(Detections { faces, detected: true, stretch, ..Detections::empty(frame, None, None) })
    }

    /// A still image with faces found elsewhere (another detector, a previous pass, metadata):
    /// the frame uploaded with `faces`, ready for [`restore_faces`](Self::restore_faces) or
    /// [`finish`](Self::finish).
    pub fn with_faces<'a>(
        &self,
        engine: &Engine,
        data: impl Into<Planes<'a>>,
        layout: impl Into<FrameLayout>,
        faces: Vec<Face>,
    ) -> Result<Detections, Error> {
        let frame = frame::to_tensor(data, layout, engine.device)?;
        Ok(Detections { faces, ..Detections::empty(frame, None, None) })
    }

    /// Restores the detected faces and pastes them back into the frame in place, with no
    /// memory policy (for tests and benchmarks of the stages).
    pub fn restore_faces<'a>(
        &mut self,
        engine: &Engine,
        d: &Detections,
        data: impl Into<PlanesMut<'a>>,
        layout: impl Into<FrameLayout>,
    ) -> Result<PasteReport, Error> {
        // The frame's tracks take up the state its predecessor left (blending, flicker meter).
        self.take_up(d);
        let stage = self.face_stream()?;
        let mut report = work::restore_onto(
            engine,
            stage,
            &d.frame,
            &d.frame,
            (&d.faces, &d.ids, &d.thumbs, d.stretch),
            None,
            Some((data.into(), &layout.into())),
        )?;
        report.timings.registration = d.registration;
        Ok(report)
    }

    /// Changes the face settings that may change while frames flow; they apply from the next
    /// frame on. No-op for aligned faces.
    pub fn set_live(&mut self, live: LiveSettings) -> Result<(), Error> {
        live.validate()?;
        if let Some(stage) = self.faces_mut() {
            stage.settings.live = live;
            stage.video.set_smoothing(live.smoothing);
        }
        Ok(())
    }

    /// Ends every track and forgets the previous frame (a seek, a flush, new caps): the next
    /// frame is detected afresh.
    pub fn reset(&mut self) {
        if let Some(stage) = self.faces_mut() {
            stage.reset();
        }
    }

    /// Whether frames are detected and described only, never restored.
    pub fn detect_only(&self) -> bool {
        matches!(self.mode, Mode::DetectOnly(_))
    }

    /// What tracking did so far (zeros for aligned faces).
    pub fn video_counters(&self) -> VideoCounters {
        self.faces().map(|s| s.video.counters()).unwrap_or_default()
    }

    /// How much restored faces changed from frame to frame against the input so far (one read
    /// from the device; zeros for aligned faces).
    pub fn flicker(&self) -> Result<Flicker, Error> {
        self.faces().map_or(Ok(Flicker::default()), |s| s.flicker.read())
    }

    /// Faces pasted as their luminance only so far (`color=auto` on black-and-white faces; one
    /// read from the device).
    pub fn faces_grey(&self) -> Result<u64, Error> {
        match self.faces().and_then(|s| s.faces_grey.as_ref()) {
            Some(n) => Ok(transfer::download(n)?.f_int64_value(&[])?.max(0) as u64),
            None => Ok(0),
        }
    }

    /// Restored faces kept by live tracks for blending (at most one per track).
    pub fn faces_kept(&self) -> usize {
        self.faces().map_or(0, |s| s.tracks.faces_kept())
    }

    /// How much parsing masks changed between consecutive frames of a track so far (one read
    /// from the device).
    pub fn mask_change(&self) -> Result<MaskChange, Error> {
        let Some((raw, pasted, n)) = self.faces().and_then(|s| s.mask_change.as_ref()) else { return Ok(MaskChange::default()) };
        let v = transfer::download_f32(&[raw, pasted])?;
        Ok(MaskChange { raw: v[0][0] as f64 / *n as f64, pasted: v[1][0] as f64 / *n as f64, pairs: *n })
    }
}

fn not_whole_frames() -> Error {
    Error::invalid(Setting::Mode, "faces are found in whole frames only", "restore whole frames")
}
