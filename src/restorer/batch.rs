//! Choosing the frames of a batch ahead and giving them back their faces: the first frame that
//! awaits one, with the whole frames after it that fit its last batch of `face-batch`
//! ([`prepare`]), the forward left to [`AheadJob::run`] on any thread, and its result attached
//! to the frames still there ([`attach`]). [`restore_ahead`] does the three at once.

use std::sync::atomic::Ordering;

use tch::Tensor;

use super::ahead::{Ahead, AheadDone, AheadJob, AheadSlot, JOBS};
use super::detections::Detections;
use super::engine::Engine;
use super::stream::Stream;
use super::work::{crops_of, to_unit};
use crate::error::Error;
use crate::memory;

/// The frames chosen for a batch ahead.
struct Chosen<'a> {
    /// The frames, with their places in the frames chosen from.
    frames: Vec<(usize, &'a mut Detections)>,
    faces: usize,
    /// No later frame can join: the batch is full, or the next frame's faces do not fit.
    closed: bool,
}

/// The first of `frames` whose faces await a batch ahead, and the whole frames after it that
/// fit its last batch of the plan's `face-batch`.
fn choose<'a>(engine: &Engine, stream: &Stream, frames: impl IntoIterator<Item = &'a mut Detections>) -> Option<Chosen<'a>> {
    let batch = engine.plan().face_batch.max(1);
    let mut frames = frames.into_iter().enumerate().skip_while(|(_, d)| stream.faces_ahead(d) == 0);
    let first = frames.next()?;
    let n0 = stream.faces_ahead(first.1);
    let room = n0.div_ceil(batch) * batch;
    let mut chosen = Chosen { frames: vec![first], faces: n0, closed: n0 == room };
    for (i, d) in frames {
        let n = stream.faces_ahead(d);
        if chosen.faces + n > room {
            chosen.closed = true;
            break;
        }
        if n > 0 {
            chosen.faces += n;
            chosen.frames.push((i, d));
            chosen.closed = chosen.faces == room;
        }
    }
    Some(chosen)
}

/// A batch ahead chosen from `frames` (in stream order, none of them in a batch in flight):
/// crops cut, the forward left to [`AheadJob::run`], and the places in `frames` of the frames
/// it holds. `None` when there is nothing to restore ahead, when the batch does not fit the
/// budget (its frames are then finished alone), when it holds one frame and `alone` is false,
/// or when more frames could join it and it need not go yet (`now` false).
pub fn prepare<'a>(
    engine: &Engine,
    stream: &Stream,
    frames: impl IntoIterator<Item = &'a mut Detections>,
    now: bool,
    alone: bool,
) -> Result<Option<(AheadJob, Vec<usize>)>, Error> {
    let Some(Chosen { frames: chosen, faces, closed }) = choose(engine, stream, frames) else { return Ok(None) };
    if !(now || closed) || (chosen.len() == 1 && !alone) {
        return Ok(None);
    }
    let plan = engine.plan();
    if engine.estimate(&plan, faces, chosen[0].1.size()) > engine.budget() {
        return Ok(None);
    }
    let _guard = tch::no_grad_guard();
    let mut crops = Vec::with_capacity(chosen.len());
    for (_, d) in &chosen {
        crops.push(crops_of(engine, &d.frame, &d.faces, d.stretch)?);
    }
    let present: Vec<&Tensor> = crops.iter().flatten().collect();
    if present.is_empty() {
        return Ok(None);
    }
    let input = to_unit(&Tensor::f_cat(&present, 0)?)?;
    let id = JOBS.fetch_add(1, Ordering::Relaxed);
    let members = chosen.iter().map(|(i, _)| *i).collect();
    Ok(Some((AheadJob { id, forward: engine.generator_forward(), plan, input, crops }, members)))
}

/// Gives the frames of the batch `done`, in order, their restored faces; returns how many.
/// A batch that ran out of memory leaves each of its frames to the memory policy on its own
/// (0 restored); another error is returned, its frames restored alone all the same.
pub fn attach<'a>(frames: impl IntoIterator<Item = &'a mut Detections>, done: AheadDone) -> Result<usize, Error> {
    let mine: Vec<&mut Detections> = frames.into_iter().collect();
    let (restored, plan) = match (done.restored, done.plan) {
        (Ok(r), Some(plan)) if mine.len() == done.crops.len() => (r, plan),
        (result, _) => {
            for d in mine {
                d.ahead = AheadSlot::Alone;
            }
            return match result {
                Err(e) if e.is_out_of_memory() => {
                    memory::release_cached();
                    Ok(0)
                }
                Err(e) => Err(e),
                Ok(_) => Ok(0),
            };
        }
    };
    // Every frame leaves the batch here, restored or alone.
    let (mut at, mut failed) = (0, None);
    for (d, c) in mine.into_iter().zip(done.crops) {
        let n = c.as_ref().map_or(0, |c| c.size()[0]);
        d.ahead = match c.map(|crops| restored.f_narrow(0, at, n).map(|r| (crops, r))) {
            Some(Ok((crops, restored))) => AheadSlot::Restored(Ahead { size: plan.size, half: plan.half, crops, restored }),
            Some(Err(e)) => {
                failed.get_or_insert(e);
                AheadSlot::Alone
            }
            None => AheadSlot::Alone,
        };
        at += n;
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(at as usize),
    }
}

/// Restores ahead, here and now, the faces of the first of `frames` (the next to be finished,
/// in stream order) in batches of the plan's `face-batch`, filling its last batch with the
/// faces of the frames that follow. Their finish then uses these faces instead of running the
/// generator. Returns the faces restored ahead: 0 when the first frame needs no restoration,
/// when no other frame fits its batches (it is then finished alone, as without look-ahead), or
/// when the batch does not fit the memory budget or runs out of memory (each frame then goes
/// through the memory policy on its own).
pub fn restore_ahead<'a>(engine: &Engine, stream: &Stream, frames: impl IntoIterator<Item = &'a mut Detections>) -> Result<usize, Error> {
    let mut frames: Vec<&'a mut Detections> = frames.into_iter().collect();
    if frames.first().is_none_or(|d| stream.faces_ahead(d) == 0) {
        return Ok(0);
    }
    let Some((job, members)) = prepare(engine, stream, frames.iter_mut().map(|d| &mut **d), true, false)? else { return Ok(0) };
    let mine = frames.into_iter().enumerate().filter(|(i, _)| members.contains(i)).map(|(_, d)| d);
    attach(mine, job.run())
}
