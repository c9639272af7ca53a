//! One model, many streams: loaded models are shared per (file, key, device, precision) by every
//! restorer of the process, and freed when the last one using them goes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use once_cell::sync::Lazy;
use tch::{Device, Kind};

use crate::detect::{DetectorVariant, RetinaFace};
use crate::gpen::FullGenerator;
use crate::parse::ParseNet;
use crate::upscale::RrdbNet;
use crate::Error;

/// A generator file, its wrapper key, the device and the compute precision.
type GeneratorKey = (PathBuf, Option<String>, Device, Kind);
type DetectorKey = (PathBuf, Option<DetectorVariant>, Device);
type UpscalerKey = (PathBuf, Device);
/// A ParseNet file, the device and the compute precision.
type ParserKey = (PathBuf, Device, Kind);

static GENERATORS: Lazy<Mutex<HashMap<GeneratorKey, Weak<FullGenerator>>>> = Lazy::new(Default::default);
static DETECTORS: Lazy<Mutex<HashMap<DetectorKey, Weak<RetinaFace>>>> = Lazy::new(Default::default);
static UPSCALERS: Lazy<Mutex<HashMap<UpscalerKey, Weak<RrdbNet>>>> = Lazy::new(Default::default);
static PARSERS: Lazy<Mutex<HashMap<ParserKey, Weak<ParseNet>>>> = Lazy::new(Default::default);
static GENERATOR_LOADS: AtomicU64 = AtomicU64::new(0);
static LOADS_BY_FILE: Lazy<Mutex<HashMap<PathBuf, u64>>> = Lazy::new(Default::default);

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The generator of `path` on `device` in `kind`, loaded once for the whole process.
pub fn generator(path: &Path, key: Option<&str>, device: Device, kind: Kind) -> Result<Arc<FullGenerator>, Error> {
    let k = (canonical(path), key.map(str::to_owned), device, kind);
    // Held while loading, so two streams asking at once load the file once.
    let mut map = GENERATORS.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(model) = map.get(&k).and_then(Weak::upgrade) {
        return Ok(model);
    }
    let model = Arc::new(FullGenerator::load(path, key, device, kind)?);
    GENERATOR_LOADS.fetch_add(1, Ordering::Relaxed);
    *LOADS_BY_FILE.lock().unwrap_or_else(|p| p.into_inner()).entry(k.0.clone()).or_default() += 1;
    map.insert(k, Arc::downgrade(&model));
    Ok(model)
}

/// The live model under `k` in `map`, or a new one from `load` (the map stays locked while
/// loading, so two streams asking at once load the file once).
fn shared<K: std::hash::Hash + Eq, T>(
    map: &Mutex<HashMap<K, Weak<T>>>,
    k: K,
    load: impl FnOnce() -> Result<T, Error>,
) -> Result<Arc<T>, Error> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(model) = map.get(&k).and_then(Weak::upgrade) {
        return Ok(model);
    }
    let model = Arc::new(load()?);
    map.insert(k, Arc::downgrade(&model));
    Ok(model)
}

/// The detector of `path`, loaded once for the whole process.
pub fn detector(path: &Path, variant: Option<DetectorVariant>, device: Device) -> Result<Arc<RetinaFace>, Error> {
    shared(&DETECTORS, (canonical(path), variant, device), || RetinaFace::load(path, variant, device))
}

/// The RRDBNet upscaler of `path`, loaded once for the whole process.
pub fn upscaler(path: &Path, device: Device) -> Result<Arc<RrdbNet>, Error> {
    shared(&UPSCALERS, (canonical(path), device), || RrdbNet::new(path, device))
}

/// The ParseNet face parser of `path` on `device` in `kind`, loaded once for the whole process.
pub fn parser(path: &Path, device: Device, kind: Kind) -> Result<Arc<ParseNet>, Error> {
    shared(&PARSERS, (canonical(path), device, kind), || ParseNet::load(path, device, kind))
}

/// Generator loads since the process started (for tests and statistics).
pub fn generator_loads() -> u64 {
    GENERATOR_LOADS.load(Ordering::Relaxed)
}

/// Times the generator file at `path` was loaded since the process started.
pub fn loads_of(path: &Path) -> u64 {
    LOADS_BY_FILE.lock().unwrap_or_else(|p| p.into_inner()).get(&canonical(path)).copied().unwrap_or(0)
}

/// Generators alive now, by file.
pub fn live_generators(path: &Path) -> usize {
    let path = canonical(path);
    let map = GENERATORS.lock().unwrap_or_else(|p| p.into_inner());
    map.iter().filter(|(k, w)| k.0 == path && w.strong_count() > 0).count()
}
