//! Crafted checkpoints: each is refused with a named error, never a panic, an abort or an
//! allocation far beyond the file's size; nothing in a pickle is imported or called.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use gstgpen::checkpoint::{self, CheckpointError};
use tch::{Device, Kind, Tensor};

/// A tensor entry of a crafted pickle.
struct Entry<'a> {
    name: &'a str,
    /// Storage class in module `torch`, e.g. `FloatStorage`.
    class: &'a str,
    key: &'a str,
    numel: u64,
    size: &'a [u64],
    stride: &'a [u64],
    /// `(module, name)` of the function the tensor is rebuilt with.
    rebuild: (&'a str, &'a str),
}

impl Default for Entry<'_> {
    fn default() -> Self {
        Entry {
            name: "w",
            class: "FloatStorage",
            key: "0",
            numel: 4,
            size: &[2, 2],
            stride: &[2, 1],
            rebuild: ("torch._utils", "_rebuild_tensor_v2"),
        }
    }
}

fn unicode(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
}

fn long(out: &mut Vec<u8>, v: u64) {
    // LONG1 with 8 bytes: any u64 below 2^63.
    out.extend_from_slice(&[0x8a, 8]);
    out.extend_from_slice(&v.to_le_bytes());
}

fn ints(out: &mut Vec<u8>, v: &[u64]) {
    out.push(b'(');
    v.iter().for_each(|&x| long(out, x));
    out.push(b't');
}

/// The `data.pkl` of `torch.save({name: tensor, ...})` (protocol 2).
fn state_dict_pickle(entries: &[Entry]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for e in entries {
        unicode(&mut p, e.name);
        global(&mut p, e.rebuild.0, e.rebuild.1);
        p.push(b'(');
        // Persistent id ('storage', torch.<class>, key, 'cpu', numel).
        p.push(b'(');
        unicode(&mut p, "storage");
        global(&mut p, "torch", e.class);
        unicode(&mut p, e.key);
        unicode(&mut p, "cpu");
        long(&mut p, e.numel);
        p.extend_from_slice(b"tQ");
        long(&mut p, 0);
        ints(&mut p, e.size);
        ints(&mut p, e.stride);
        p.push(0x89);
        global(&mut p, "collections", "OrderedDict");
        p.extend_from_slice(b")R");
        p.extend_from_slice(b"tR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// A zip `.pth` with `data.pkl` and the given storages (`deflate` compresses them).
fn zip_pth(pickle: &[u8], storages: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let data = if deflate { stored.compression_method(zip::CompressionMethod::Deflated) } else { stored };
    w.start_file("archive/data.pkl", stored).unwrap();
    w.write_all(pickle).unwrap();
    for (key, bytes) in storages {
        w.start_file(format!("archive/data/{key}"), data).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Peak resident size (KiB) since the last reset, and the reset.
fn peak_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Loads `bytes` as `name`, expects a refusal whose message names the file and contains every
/// one of `words`, and checks that reading it did not grow the process by more than 16 times
/// the file (plus 64 MiB of slack for libtorch's own first allocations).
fn refused(name: &str, bytes: &[u8], words: &[&str]) -> CheckpointError {
    reset_peak();
    let before = peak_kib();
    let result = checkpoint::load_bytes(Path::new(name), bytes, None);
    let grown = peak_kib().saturating_sub(before) * 1024;
    let e = match result {
        Ok(sd) => panic!("{name}: accepted with {} tensors", sd.len()),
        Err(e) => e,
    };
    let msg = e.to_string();
    println!("{name}: {msg} (grew {} KiB)", grown / 1024);
    assert!(msg.starts_with(name), "{msg}");
    for w in words {
        assert!(msg.contains(w), "`{w}` not in: {msg}");
    }
    assert!(grown <= 16 * bytes.len() as u64 + (64 << 20), "{name}: reading grew the process by {grown} bytes");
    e
}

#[test]
fn a_crafted_checkpoint_that_is_well_formed_loads() {
    // The builder itself is right: the same shape with honest numbers is accepted.
    let bytes = zip_pth(&state_dict_pickle(&[Entry::default()]), &[("0", vec![0u8; 16])], false);
    let sd = checkpoint::load_bytes(Path::new("honest.pth"), &bytes, None).unwrap();
    assert_eq!(sd.get("w").unwrap().size(), [2, 2]);
}

#[test]
fn globals_outside_the_tensor_set_are_refused_not_called() {
    for (module, name) in [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load")] {
        let bytes = zip_pth(&state_dict_pickle(&[Entry { rebuild: (module, name), ..Default::default() }]), &[("0", vec![0u8; 16])], false);
        let e = refused("evil.pth", &bytes, &["refused global", &format!("{module}.{name}")]);
        assert!(matches!(e, CheckpointError::Refused { .. }), "a forbidden global is a refusal, not corruption: {e:?}");
        assert!(!e.to_string().contains("corrupt"), "{e}");
    }
    // Opcodes outside the subset torch.save writes (INST, OBJ, EXT1) are refused too.
    for op in [b'i', b'o', 0x82] {
        let mut p = state_dict_pickle(&[Entry::default()]);
        p.insert(2, op);
        let bytes = zip_pth(&p, &[("0", vec![0u8; 16])], false);
        let e = checkpoint::load_bytes(Path::new("opcode.pth"), &bytes, None).unwrap_err().to_string();
        assert!(e.starts_with("opcode.pth"), "{e}");
    }
}

#[test]
fn duplicate_names_are_refused() {
    let two = [Entry::default(), Entry { key: "1", ..Default::default() }];
    let bytes = zip_pth(&state_dict_pickle(&two), &[("0", vec![0u8; 16]), ("1", vec![0u8; 16])], false);
    refused("twice.pth", &bytes, &["`w` appears twice"]);
    // Safetensors: the header is a JSON map, a repeated key would hide a tensor.
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0u8; 4]);
    refused("twice.safetensors", &st, &["appears twice"]);
}

/// A safetensors file whose header is impossible: the message names the tensor and the field,
/// and says what was expected.
#[test]
fn impossible_safetensors_headers_name_the_field() {
    let file = |header: &[u8], data: usize| {
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header);
        st.extend_from_slice(&vec![0u8; data]);
        st
    };
    let cases: [(&[u8], usize, &[&str]); 5] = [
        // The byte range does not fit the shape and dtype (the crate's `TensorInvalidInfo`).
        (
            br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            4,
            &["tensor `w`", "[0, 4] span 4 bytes", "`shape` [2] of F32 needs 8"],
        ),
        (br#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}"#, 4, &["tensor `w`", "`dtype` is \"Q4\"", "expected one of"]),
        (br#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4, &["tensor `w`", "`shape` is [-1]", "non-negative integers"]),
        (br#"{"w":{"dtype":"F32","shape":[1]}}"#, 4, &["tensor `w`", "no `data_offsets` field"]),
        (
            br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            12,
            &["tensor `b`", "begin at 8, expected 4"],
        ),
    ];
    for (header, data, words) in cases {
        let e = refused("impossible.safetensors", &file(header, data), words);
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e:?}");
    }
}

#[test]
fn absurd_sizes_are_refused_before_any_allocation() {
    // A storage claiming a trillion floats, holding 16 bytes.
    let huge = Entry { numel: 1 << 40, size: &[1 << 20, 1 << 20], stride: &[1 << 20, 1], ..Default::default() };
    let bytes = zip_pth(&state_dict_pickle(&[huge]), &[("0", vec![0u8; 16])], false);
    refused("claims.pth", &bytes, &["claims"]);
    // A view far outside an honest storage, and shapes whose product overflows.
    let outside = Entry { size: &[1 << 30, 1 << 30], stride: &[1 << 30, 1], ..Default::default() };
    let bytes = zip_pth(&state_dict_pickle(&[outside]), &[("0", vec![0u8; 16])], false);
    refused("outside.pth", &bytes, &["tensor `w`", "reaches element"]);
    let overflow = Entry { size: &[1 << 62, 1 << 62], stride: &[0, 0], ..Default::default() };
    let bytes = zip_pth(&state_dict_pickle(&[overflow]), &[("0", vec![0u8; 16])], false);
    refused("overflow.pth", &bytes, &["tensor `w`", "overflows"]);
    // A zip bomb: 256 MiB of zeros deflated into a few hundred KiB, honestly described.
    let n: u64 = 64 << 20;
    let bomb = Entry { numel: n, size: &[n], stride: &[1], ..Default::default() };
    let bytes = zip_pth(&state_dict_pickle(&[bomb]), &[("0", vec![0u8; (n * 4) as usize])], true);
    assert!(bytes.len() < 2 << 20, "the bomb is small: {} bytes", bytes.len());
    let e = refused("bomb.pth", &bytes, &["inflates to", "times the file"]);
    assert!(matches!(e, CheckpointError::Refused { .. }), "a zip bomb is a refusal: {e:?}");
    // Safetensors claiming more data than the file holds.
    let header = br#"{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0u8; 16]);
    refused("claims.safetensors", &st, &["safetensors header", "tensor `w`", "`data_offsets` is [0, 4398046511104]", "<= 16"]);
}

fn fixture_with(name: &str, change: impl Fn(&str, &Tensor) -> Option<Tensor>) -> PathBuf {
    let sd = checkpoint::load(&common::gpen_fixture("gpen-256-tiny.pth"), None).unwrap();
    let tensors: Vec<(String, Tensor)> =
        sd.iter().map(|(n, t)| (n.to_owned(), change(n, t).unwrap_or_else(|| t.shallow_clone()))).collect();
    let path = common::scratch("hostile").join(name);
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

const VICTIM: &str = "generator.to_rgb1.conv.weight";

#[test]
fn integer_and_non_finite_weights_are_reported_by_name() {
    let load = |p: &Path| gstgpen::gpen::FullGenerator::load(p, None, Device::Cpu, Kind::Float).map(|_| ()).unwrap_err().to_string();
    let ints = fixture_with("int.safetensors", |n, t| (n == VICTIM).then(|| t.to_kind(Kind::Int64)));
    let msg = load(&ints);
    assert!(msg.contains("not floating point") && msg.contains(VICTIM), "{msg}");
    let nan = fixture_with("nan.safetensors", |n, t| (n == VICTIM).then(|| t.copy().fill_(f64::NAN)));
    let msg = load(&nan);
    assert!(msg.contains("NaN or infinite") && msg.contains(VICTIM), "{msg}");
    let inf = fixture_with("inf.safetensors", |n, t| {
        (n == "generator.input.input").then(|| {
            let t = t.copy();
            let _ = t.flatten(0, -1).get(0).fill_(f64::INFINITY);
            t
        })
    });
    let msg = load(&inf);
    assert!(msg.contains("NaN or infinite") && msg.contains("generator.input.input"), "{msg}");
    println!("{msg}");
    // The detector's loader checks the same.
    let det = checkpoint::load(&common::shared().join("weights/retinaface-mnet025-fd1mb.pth"), None).unwrap();
    let tensors: Vec<(String, Tensor)> = det
        .iter()
        .map(|(n, t)| {
            (
                n.to_owned(),
                if n.ends_with("conv.0.weight") || n == det.names().next().unwrap() { t.copy().fill_(f64::NAN) } else { t.shallow_clone() },
            )
        })
        .collect();
    let path = common::scratch("hostile").join("det-nan.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let msg = gstgpen::detect::RetinaFace::load(&path, Some(gstgpen::detect::DetectorVariant::Fd1mb), Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("NaN or infinite"), "{msg}");
}

#[test]
fn files_that_are_no_checkpoint_are_refused_before_reading() {
    // /dev/zero would be read forever: not a regular file.
    match checkpoint::load(Path::new("/dev/zero"), None) {
        Err(e @ CheckpointError::Refused { .. }) => {
            let m = e.to_string();
            assert!(m.contains("/dev/zero") && m.contains("not a regular file"), "{m}");
        }
        other => panic!("/dev/zero: {other:?}"),
    }
    let dir = common::scratch("huge-checkpoint");
    match checkpoint::load(&dir, None) {
        Err(e @ CheckpointError::Refused { .. }) => assert!(e.to_string().contains("a folder"), "{e}"),
        other => panic!("a folder: {other:?}"),
    }
    // A sparse file larger than any checkpoint: refused by its size, naming it, without reading
    // (or allocating) its 3 GiB.
    let huge = dir.join("GPEN-BFR-512.pth");
    std::fs::File::create(&huge).unwrap().set_len(3 << 30).unwrap();
    let t = std::time::Instant::now();
    match checkpoint::load(&huge, None) {
        Err(e @ CheckpointError::Refused { .. }) => {
            let m = e.to_string();
            assert!(m.contains(huge.to_str().unwrap()) && m.contains("3221225472 bytes"), "{m}");
        }
        other => panic!("{}: {other:?}", huge.display()),
    }
    assert!(t.elapsed().as_secs() < 2, "refused before reading");
    std::fs::remove_dir_all(dir).ok();
}
