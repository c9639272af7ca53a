//! Checkpoint files without Python: `.pth` (zip and legacy pickle) and `.safetensors`.
//!
//! libtorch cannot read a Python state dict (its unpickler turns `OrderedDict` into None), so the
//! formats are parsed here, validated before anything is allocated, and turned into tensors.

mod dtype;
mod pickle;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::Tensor;

pub use dtype::Dtype;
use pickle::{PersistentIds, StorageRef, TensorRef};
pub use pickle::{PickleError, Value};

/// Keys under which training code wraps a state dict, tried in this order when no key is given.
pub const WRAPPER_KEYS: [&str; 4] = ["g_ema", "params_ema", "params", "state_dict"];

/// Why a checkpoint could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: cannot open the checkpoint: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a checkpoint this reader understands: {reason}")]
    UnknownFormat { path: PathBuf, reason: String },
    #[error("{path}: the checkpoint is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Structure { path: PathBuf, reason: String },
    /// Reading it could run code or exhaust memory (a forbidden pickle global, an absurd size).
    #[error("{path}: refused: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("{path}: libtorch failed to build tensor `{name}`: {source}")]
    Torch { path: PathBuf, name: String, source: tch::TchError },
}

/// The named tensors of a checkpoint, in file order.
#[derive(Debug)]
pub struct StateDict {
    pub path: PathBuf,
    tensors: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl StateDict {
    pub fn new(path: PathBuf, tensors: Vec<(String, Tensor)>) -> Self {
        let index = tensors.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        StateDict { path, tensors, index }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i].1)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Reads a checkpoint. `key` selects a wrapped state dict (`g_ema`, …); with `None`, a top-level
/// dict holding tensors is taken as is, and otherwise the first of [`WRAPPER_KEYS`] present.
pub fn load(path: &Path, key: Option<&str>) -> Result<StateDict, CheckpointError> {
    let data = read_sized(path)?;
    load_bytes(path, &data, key)
}

/// Largest checkpoint file read: several times the largest known one (GPEN-BFR-2048, 285 MB of
/// fp32 tensors), room for a training checkpoint's extra copies.
pub const MAX_CHECKPOINT_BYTES: u64 = 2 << 30;

/// The bytes of a checkpoint file, refused before reading when it is not a regular file (a
/// device such as /dev/zero, a pipe, a folder) or larger than [`MAX_CHECKPOINT_BYTES`]; the
/// error names the file and its size.
pub fn read_sized(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    use std::io::Read;
    let io = |source| CheckpointError::Io { path: path.into(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let refused = |reason: String| CheckpointError::Refused { path: path.into(), reason };
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a folder" } else { "a device, pipe or socket" };
        return Err(refused(format!("{kind}, not a regular file: give a .pth or .safetensors checkpoint file")));
    }
    if meta.len() > MAX_CHECKPOINT_BYTES {
        return Err(refused(format!(
            "{} bytes, more than any checkpoint (at most {MAX_CHECKPOINT_BYTES} bytes are read): not a model file",
            meta.len()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never more than the limit.
    file.take(MAX_CHECKPOINT_BYTES + 1).read_to_end(&mut data).map_err(io)?;
    if data.len() as u64 > MAX_CHECKPOINT_BYTES {
        return Err(refused(format!("grew past {MAX_CHECKPOINT_BYTES} bytes while being read: not a model file")));
    }
    Ok(data)
}

/// As [`load`], on bytes already read; `path` is only used in messages.
pub fn load_bytes(path: &Path, data: &[u8], key: Option<&str>) -> Result<StateDict, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(|e| corrupt(format!("zip archive: {e}")))?;
        let (object, root) = read_zip_pickle(path, &mut zip, data.len())?;
        let selected = select_state_dict(path, object, key)?;
        let mut storages = ZipStorages { zip: &mut zip, root, file_len: data.len() };
        materialise(path, selected, &mut storages)
    } else if data.starts_with(b"\x80\x02\x8a\x0a") {
        let (object, storages) = read_legacy(path, data)?;
        let selected = select_state_dict(path, object, key)?;
        let mut storages = storages;
        materialise(path, selected, &mut storages)
    } else if looks_like_safetensors(data) {
        read_safetensors(path, data, key)
    } else {
        Err(CheckpointError::UnknownFormat {
            path: path.into(),
            reason: "neither a zip `.pth` (torch >= 1.6), a legacy `.pth` pickle nor `.safetensors`; \
                     re-save it with torch.save(state_dict, path) or safetensors"
                .into(),
        })
    }
}

/// A tensor name that the safetensors header lists twice (its top-level keys).
fn duplicate_json_key(data: &[u8]) -> Option<String> {
    struct Keys(Option<String>);
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(k.clone()) {
                    return Ok(Some(k));
                }
            }
            Ok(self.0)
        }
    }
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header = data.get(8..8usize.checked_add(n)?)?;
    let mut de = serde_json::Deserializer::from_slice(header);
    serde::Deserializer::deserialize_map(&mut de, Keys(None)).ok().flatten()
}

/// Names of floating-point tensors holding NaN or infinity (a diverged or damaged training
/// run): such weights turn every output into NaN.
pub fn non_finite(sd: &StateDict) -> Vec<String> {
    sd.iter()
        .filter(|(_, t)| t.is_floating_point())
        .filter(|(_, t)| t.f_isfinite().and_then(|f| f.f_all()).and_then(|a| a.f_int64_value(&[])).map(|v| v == 0).unwrap_or(true))
        .map(|(n, _)| n.to_owned())
        .collect()
}

/// Checks a safetensors header field by field: every tensor's `dtype`, `shape` and
/// `data_offsets`, which must agree with one another and tile the data after the header without
/// gaps or overlaps. The error names the tensor and the field, and says what was expected.
fn check_safetensors_header(data: &[u8]) -> Result<(), String> {
    use serde_json::Value as J;
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, J> = match serde_json::from_slice(&data[8..8 + n]) {
        Ok(J::Object(m)) => m,
        Ok(_) => return Err("not a JSON object of tensors".into()),
        Err(e) => return Err(format!("not valid JSON ({e})")),
    };
    let data_len = (data.len() - 8 - n) as u64;
    let mut spans = Vec::new();
    for (name, entry) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let field =
            |f: &str| entry.get(f).ok_or_else(|| format!("tensor `{name}`: no `{f}` field (expected `dtype`, `shape` and `data_offsets`)"));
        let ints = |f: &str, v: &J| -> Result<Vec<u64>, String> {
            v.as_array()
                .and_then(|a| a.iter().map(J::as_u64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| format!("tensor `{name}`: `{f}` is {v}, expected a list of non-negative integers"))
        };
        let dtype_field = field("dtype")?;
        let dtype = dtype_field.as_str().unwrap_or_default();
        let size = match dtype_field.as_str() {
            Some("F64" | "I64" | "U64") => 8,
            Some("F32" | "I32" | "U32") => 4,
            Some("F16" | "BF16" | "I16" | "U16") => 2,
            Some("I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2") => 1,
            _ => {
                return Err(format!(
                    "tensor `{name}`: `dtype` is {dtype_field}, expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL"
                ))
            }
        };
        let shape = ints("shape", field("shape")?)?;
        let offsets = ints("data_offsets", field("data_offsets")?)?;
        let &[begin, end] = &offsets[..] else {
            return Err(format!("tensor `{name}`: `data_offsets` is {offsets:?}, expected [begin, end]"));
        };
        if begin > end || end > data_len {
            return Err(format!(
                "tensor `{name}`: `data_offsets` is [{begin}, {end}], expected begin <= end <= {data_len} (the bytes after the header)"
            ));
        }
        let need = shape.iter().try_fold(size, |acc: u64, &d| acc.checked_mul(d));
        match need {
            None => return Err(format!("tensor `{name}`: `shape` {shape:?} overflows")),
            Some(need) if need != end - begin => {
                return Err(format!(
                    "tensor `{name}`: `data_offsets` [{begin}, {end}] span {} bytes, but `shape` {shape:?} of {dtype} needs {need}",
                    end - begin
                ))
            }
            Some(_) => spans.push((begin, end, name)),
        }
    }
    spans.sort();
    let mut at = 0;
    for (begin, end, name) in spans {
        if begin != at {
            return Err(format!(
                "tensor `{name}`: `data_offsets` begin at {begin}, expected {at} (tensors follow one another without gaps or overlaps)"
            ));
        }
        at = end;
    }
    if at != data_len {
        return Err(format!("the tensors end at byte {at} of the data, which has {data_len} (expected no bytes left over)"));
    }
    Ok(())
}

fn looks_like_safetensors(data: &[u8]) -> bool {
    data.len() >= 10 && {
        let n = u64::from_le_bytes(data[..8].try_into().unwrap());
        n > 1 && n <= (data.len() - 8) as u64 && data[8] == b'{'
    }
}

fn read_zip_pickle(
    path: &Path,
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    file_len: usize,
) -> Result<(Value, String), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    let Some(pkl) = zip.file_names().find(|n| *n == "data.pkl" || n.ends_with("/data.pkl")).map(str::to_owned) else {
        return Err(CheckpointError::UnknownFormat {
            path: path.into(),
            reason: "a zip archive without `data.pkl` (not a torch.save file)".into(),
        });
    };
    let root = pkl.trim_end_matches("data.pkl").to_owned();
    if let Ok(mut f) = zip.by_name(&format!("{root}byteorder")) {
        let mut order = String::new();
        f.read_to_string(&mut order).map_err(|e| corrupt(format!("{root}byteorder: {e}")))?;
        if order.trim() != "little" {
            return Err(corrupt(format!("byte order `{}` is not supported (only little-endian)", order.trim())));
        }
    }
    let bytes = read_entry(path, zip, &pkl, (256 << 20).min(inflation_limit(file_len)))?;
    let (object, _) = pickle::unpickle(&bytes, PersistentIds::Zip).map_err(|e| unreadable(path, format!("{pkl}: {e}"), e.refused))?;
    Ok((object, root))
}

/// A pickle that could not be read: refused as unsafe, or corrupt.
fn unreadable(path: &Path, reason: String, refused: bool) -> CheckpointError {
    if refused {
        CheckpointError::Refused { path: path.into(), reason }
    } else {
        CheckpointError::Corrupt { path: path.into(), reason }
    }
}

/// How many times its own size a zip checkpoint may inflate to. torch.save stores entries
/// uncompressed; a compressed entry claiming far more (a zip bomb) is refused before reading.
const MAX_INFLATION: u64 = 16;

fn inflation_limit(file_len: usize) -> u64 {
    (file_len as u64).saturating_mul(MAX_INFLATION)
}

/// Reads a zip entry, refusing to allocate more than `limit` bytes or more than the entry claims.
fn read_entry(path: &Path, zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str, limit: u64) -> Result<Vec<u8>, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    let f = zip.by_name(name).map_err(|e| corrupt(format!("entry `{name}`: {e}")))?;
    let size = f.size();
    if size > limit {
        return Err(CheckpointError::Refused {
            path: path.into(),
            reason: format!("entry `{name}` claims {size} bytes, more than expected ({limit}): a zip bomb?"),
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(size).read_to_end(&mut buf).map_err(|e| corrupt(format!("entry `{name}`: {e}")))?;
    if buf.len() as u64 != size {
        return Err(corrupt(format!("entry `{name}` holds {} of its {size} bytes", buf.len())));
    }
    Ok(buf)
}

/// Picks the state dict out of the unpickled object: its tensors, by name.
fn select_state_dict(path: &Path, object: Value, key: Option<&str>) -> Result<Vec<(String, TensorRef)>, CheckpointError> {
    let structure = |reason: String| CheckpointError::Structure { path: path.into(), reason };
    let Value::Dict(top) = object else {
        return Err(structure(format!(
            "the checkpoint holds a {:?}-like object, not a dict of tensors (a state_dict)",
            std::mem::discriminant(&object)
        )));
    };
    let has_tensors = |d: &[(Value, Value)]| d.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    let top_keys = || top.iter().filter_map(|(k, _)| k.as_str()).take(12).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    let chosen = match key {
        Some(k) => match top.iter().find(|(n, _)| n.as_str() == Some(k)) {
            Some((_, Value::Dict(d))) => d.clone(),
            Some(_) => return Err(structure(format!("key `{k}` does not hold a dict of tensors"))),
            None => return Err(structure(format!("no key `{k}` in the checkpoint (it has {})", top_keys()))),
        },
        None if has_tensors(&top) => top.clone(),
        None => {
            let found = WRAPPER_KEYS.iter().find_map(|w| match top.iter().find(|(n, _)| n.as_str() == Some(w)) {
                Some((_, Value::Dict(d))) => Some(d.clone()),
                _ => None,
            });
            match found {
                Some(d) => d,
                None => {
                    return Err(structure(format!(
                        "no tensors at the top level and none of the keys {} (it has {}); name the key \
                         that holds the state dict",
                        WRAPPER_KEYS.join(", "),
                        top_keys()
                    )))
                }
            }
        }
    };
    let mut out = Vec::with_capacity(chosen.len());
    let mut seen = std::collections::HashSet::new();
    for (k, v) in chosen {
        // Non-tensor values (step counters, strings) sit beside the tensors in training files.
        if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
            // torch.save never writes a key twice; a file that does is ambiguous.
            if !seen.insert(name.clone()) {
                return Err(structure(format!("tensor `{name}` appears twice in the state dict")));
            }
            out.push((name, t));
        }
    }
    if out.is_empty() {
        return Err(structure("the state dict holds no tensors".into()));
    }
    Ok(out)
}

/// Where storage bytes come from.
trait Storages {
    /// The raw bytes of storage `key`, which must hold exactly `numel` elements of `dtype`.
    fn bytes(&mut self, path: &Path, storage: &StorageRef) -> Result<Vec<u8>, CheckpointError>;
}

struct ZipStorages<'a, 'b> {
    zip: &'a mut zip::ZipArchive<std::io::Cursor<&'b [u8]>>,
    root: String,
    file_len: usize,
}

impl Storages for ZipStorages<'_, '_> {
    fn bytes(&mut self, path: &Path, s: &StorageRef) -> Result<Vec<u8>, CheckpointError> {
        let want = storage_bytes(path, s)?;
        let name = format!("{}data/{}", self.root, s.key);
        let got = self
            .zip
            .by_name(&name)
            .map(|f| f.size())
            .map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: format!("storage `{}`: entry `{name}`: {e}", s.key) })?;
        if got != want {
            return Err(CheckpointError::Corrupt {
                path: path.into(),
                reason: format!("storage `{}` claims {} elements ({want} bytes) but holds {got} bytes", s.key, s.numel),
            });
        }
        let limit = inflation_limit(self.file_len);
        if want > limit {
            return Err(CheckpointError::Refused {
                path: path.into(),
                reason: format!("storage `{}` inflates to {want} bytes, more than {MAX_INFLATION} times the file", s.key),
            });
        }
        read_entry(path, self.zip, &name, want)
    }
}

fn storage_bytes(path: &Path, s: &StorageRef) -> Result<u64, CheckpointError> {
    s.numel.checked_mul(s.dtype.size_in_bytes() as u64).ok_or_else(|| CheckpointError::Corrupt {
        path: path.into(),
        reason: format!("storage `{}` claims an impossible element count {}", s.key, s.numel),
    })
}

/// The storages of a legacy file: byte ranges of the file, by key.
struct LegacyStorages<'a> {
    data: &'a [u8],
    ranges: HashMap<String, (usize, usize)>,
}

impl Storages for LegacyStorages<'_> {
    fn bytes(&mut self, path: &Path, s: &StorageRef) -> Result<Vec<u8>, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
        let Some(&(start, len)) = self.ranges.get(&s.key) else {
            return Err(corrupt(format!("storage `{}` is referenced but not in the file", s.key)));
        };
        let esize = s.dtype.size_in_bytes();
        match &s.view {
            None => {
                if storage_bytes(path, s)? != len as u64 {
                    return Err(corrupt(format!("storage `{}` claims {} elements, the file holds {len} bytes", s.key, s.numel)));
                }
                Ok(self.data[start..start + len].to_vec())
            }
            Some((view_key, offset, size)) => {
                let (Some(b), Some(e)) = (offset.checked_mul(esize as u64), offset.checked_add(*size)) else {
                    return Err(corrupt(format!("view `{view_key}` overflows")));
                };
                let end = e.checked_mul(esize as u64).filter(|&e| e <= len as u64);
                let Some(end) = end else {
                    return Err(corrupt(format!("view `{view_key}` lies outside storage `{}`", s.key)));
                };
                Ok(self.data[start + b as usize..start + end as usize].to_vec())
            }
        }
    }
}

/// Legacy (pre-1.6) layout: magic, protocol, system info, object, storage keys, then the data.
fn read_legacy<'a>(path: &Path, data: &'a [u8]) -> Result<(Value, LegacyStorages<'a>), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    let mut pos = 0;
    let next = |what: &str, pos: &mut usize| -> Result<Value, CheckpointError> {
        let (v, n) = pickle::unpickle(&data[*pos..], PersistentIds::Legacy)
            .map_err(|e| unreadable(path, format!("{what} (at byte {}): {e}", *pos), e.refused))?;
        *pos += n;
        Ok(v)
    };
    let magic = next("magic number", &mut pos)?;
    if magic != Value::Int(0x1950a86a20f9469cfc6c) {
        return Err(corrupt("bad magic number".into()));
    }
    if next("protocol version", &mut pos)? != Value::Int(1001) {
        return Err(corrupt("unsupported legacy protocol version (expected 1001)".into()));
    }
    let info = next("system info", &mut pos)?;
    if info.get("little_endian") != Some(&Value::Bool(true)) {
        return Err(corrupt("saved on a big-endian machine, which is not supported".into()));
    }
    let object = next("object", &mut pos)?;
    let Value::List(keys) = next("storage keys", &mut pos)? else {
        return Err(corrupt("the storage key list is not a list".into()));
    };
    // Element sizes come from the storages the object names.
    let mut esize: HashMap<String, usize> = HashMap::new();
    collect_storages(&object, &mut |s| {
        esize.insert(s.key.clone(), s.dtype.size_in_bytes());
    });
    let mut ranges = HashMap::new();
    for k in keys {
        let Some(k) = k.as_str().map(str::to_owned) else {
            return Err(corrupt("a storage key is not a string".into()));
        };
        let header = data.get(pos..pos + 8).ok_or_else(|| corrupt(format!("storage `{k}`: truncated before its size")))?;
        let count = u64::from_le_bytes(header.try_into().unwrap());
        pos += 8;
        let Some(&es) = esize.get(&k) else {
            return Err(corrupt(format!("storage `{k}` holds data but no tensor uses it")));
        };
        let len = count
            .checked_mul(es as u64)
            .filter(|&l| l <= (data.len() - pos) as u64)
            .ok_or_else(|| corrupt(format!("storage `{k}` claims {count} elements, more than the {} bytes left", data.len() - pos)))?
            as usize;
        ranges.insert(k, (pos, len));
        pos += len;
    }
    if pos != data.len() {
        return Err(corrupt(format!("{} unexpected bytes after the last storage", data.len() - pos)));
    }
    Ok((object, LegacyStorages { data, ranges }))
}

fn collect_storages(v: &Value, f: &mut impl FnMut(&StorageRef)) {
    match v {
        Value::Tensor(t) => f(&t.storage),
        Value::Storage(s) => f(s),
        Value::Tuple(x) | Value::List(x) => x.iter().for_each(|v| collect_storages(v, f)),
        Value::Dict(x) => x.iter().for_each(|(_, v)| collect_storages(v, f)),
        _ => {}
    }
}

/// Checks that a strided view lies inside its storage.
fn check_extent(t: &TensorRef) -> Result<(), String> {
    let mut numel: u64 = 1;
    let mut last: u64 = t.offset as u64;
    for (&n, &s) in t.size.iter().zip(&t.stride) {
        numel = numel.checked_mul(n as u64).ok_or("shape overflows")?;
        if n > 0 {
            let span = ((n - 1) as u64).checked_mul(s as u64).ok_or("stride overflows")?;
            last = last.checked_add(span).ok_or("stride overflows")?;
        }
    }
    if numel > 0 && last >= t.storage.numel {
        return Err(format!(
            "shape {:?} with strides {:?} at offset {} reaches element {last} of a storage of {}",
            t.size, t.stride, t.offset, t.storage.numel
        ));
    }
    Ok(())
}

fn materialise(path: &Path, refs: Vec<(String, TensorRef)>, storages: &mut dyn Storages) -> Result<StateDict, CheckpointError> {
    // Validate every tensor before reading any storage.
    for (name, t) in &refs {
        check_extent(t).map_err(|reason| CheckpointError::Corrupt { path: path.into(), reason: format!("tensor `{name}`: {reason}") })?;
    }
    let mut loaded: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let torch = |source| CheckpointError::Torch { path: path.into(), name: name.clone(), source };
        let id = t.storage.view.as_ref().map(|v| v.0.clone()).unwrap_or_else(|| t.storage.key.clone());
        if !loaded.contains_key(&id) {
            let bytes = storages.bytes(path, &t.storage)?;
            let n = (bytes.len() / t.storage.dtype.size_in_bytes()) as i64;
            let flat = Tensor::f_from_data_size(&bytes, &[n], t.storage.dtype.kind()).map_err(torch)?;
            loaded.insert(id.clone(), flat);
        }
        let flat = &loaded[&id];
        let tensor = flat.f_as_strided(&t.size, &t.stride, Some(t.offset)).and_then(|v| v.f_contiguous()).map_err(torch)?;
        out.push((name, tensor));
    }
    Ok(StateDict::new(path.into(), out))
}

fn read_safetensors(path: &Path, data: &[u8], key: Option<&str>) -> Result<StateDict, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    // The header is checked here first, so that a problem names its tensor and field; the crate
    // then checks it again, with every byte range against shape and dtype, and the file size.
    check_safetensors_header(data).map_err(|e| corrupt(format!("safetensors header: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(data).map_err(|e| corrupt(format!("safetensors: {e}")))?;
    let mut views = st.tensors();
    // File order, which the header's map does not keep.
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let prefix = key.map(|k| format!("{k}."));
    let mut out = Vec::with_capacity(views.len());
    // Safetensors headers are JSON maps: a repeated name would silently hide a tensor.
    if let Some(name) = duplicate_json_key(data) {
        return Err(CheckpointError::Structure { path: path.into(), reason: format!("tensor `{name}` appears twice in the header") });
    }
    for (name, view) in views {
        let short = match &prefix {
            Some(p) => match name.strip_prefix(p.as_str()) {
                Some(s) => s.to_owned(),
                None => continue,
            },
            None => name.clone(),
        };
        let dtype = Dtype::from_safetensors(view.dtype())
            .ok_or_else(|| corrupt(format!("tensor `{name}`: dtype {:?} is not supported", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, dtype.kind()).map_err(|source| CheckpointError::Torch {
            path: path.into(),
            name: name.clone(),
            source,
        })?;
        out.push((short, t));
    }
    if out.is_empty() {
        return Err(CheckpointError::Structure {
            path: path.into(),
            reason: match key {
                Some(k) => format!("no tensors under `{k}.`"),
                None => "the file holds no tensors".into(),
            },
        });
    }
    Ok(StateDict::new(path.into(), out))
}
