//! A restricted unpickler for PyTorch checkpoints.
//!
//! It understands the opcodes `torch.save` emits (protocols 2 to 4) and builds plain values.
//! Globals are never imported or called: only the tensor-rebuilding functions, `OrderedDict` and
//! the storage classes are recognised, by name, and anything else is refused.

use super::dtype::Dtype;

/// A storage as named by a persistent id: `('storage', torch.FloatStorage, key, location, numel
/// [, view_metadata])`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub dtype: Dtype,
    pub key: String,
    pub numel: u64,
    /// Legacy format only: this storage is a view `(view_key, offset, size)` of `key`.
    pub view: Option<(String, u64, u64)>,
}

/// A tensor as rebuilt by `torch._utils._rebuild_tensor_v2`, not yet materialised.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// The callables and classes a checkpoint may name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    StorageClass(Dtype),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i128),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Looks a string key up in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Why a pickle could not be read; `offset` is the byte position of the opcode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("pickle byte {offset}: {reason}")]
pub struct PickleError {
    pub offset: usize,
    /// Refused as unsafe (a global outside the allowed set, a pickle building without bound),
    /// rather than malformed.
    pub refused: bool,
    pub reason: String,
}

/// Upper bound on values the machine may hold at once, so that a crafted pickle cannot make us
/// allocate without bound through memo copies.
const MAX_VALUES: usize = 50_000_000;

enum Item {
    Mark,
    Value(Value),
}

/// How persistent ids are laid out: the zip format has 5 fields, the legacy format 6.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PersistentIds {
    Zip,
    Legacy,
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Item>,
    memo: std::collections::HashMap<u32, Value>,
    values: usize,
    pids: PersistentIds,
}

/// Unpickles one object starting at `data[0]`; returns it and the number of bytes consumed
/// (up to and including STOP), so consecutive pickles can be read.
pub fn unpickle(data: &[u8], pids: PersistentIds) -> Result<(Value, usize), PickleError> {
    let mut m = Machine { data, pos: 0, op_pos: 0, stack: Vec::new(), memo: Default::default(), values: 0, pids };
    let v = m.run()?;
    Ok((v, m.pos))
}

fn count_values(v: &Value) -> usize {
    match v {
        Value::Tuple(x) | Value::List(x) => 1 + x.iter().map(count_values).sum::<usize>(),
        Value::Dict(x) => 1 + x.iter().map(|(k, v)| count_values(k) + count_values(v)).sum::<usize>(),
        _ => 1,
    }
}

impl<'a> Machine<'a> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError { offset: self.op_pos, reason: reason.into(), refused: false })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => self.err(format!("truncated: needs {n} more bytes, {} left", self.data.len() - self.pos)),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("truncated: unterminated line");
        };
        let s = std::str::from_utf8(&rest[..n]).or_else(|_| self.err("line is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        self.values += count_values(&v);
        if self.values > MAX_VALUES {
            return self.refusal(format!("more than {MAX_VALUES} values: refusing to build them"));
        }
        self.stack.push(Item::Value(v));
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => self.err("unexpected MARK on the stack"),
            None => self.err("stack underflow"),
        }
    }

    fn top_mut(&mut self) -> Result<&mut Value, PickleError> {
        match self.stack.last_mut() {
            Some(Item::Value(v)) => Ok(v),
            _ => Err(PickleError { offset: self.op_pos, reason: "stack underflow".into(), refused: false }),
        }
    }

    /// Pops everything down to the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(i) = self.stack.iter().rposition(|x| matches!(x, Item::Mark)) else {
            return self.err("no MARK on the stack");
        };
        let items = self.stack.split_off(i + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|x| match x {
                Item::Value(v) => v,
                Item::Mark => unreachable!("rposition found the last mark"),
            })
            .collect())
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), PickleError> {
        let v = match self.stack.last() {
            Some(Item::Value(v)) => v.clone(),
            _ => return self.err("nothing to memoize"),
        };
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<(), PickleError> {
        match self.memo.get(&idx) {
            Some(v) => {
                let v = v.clone();
                self.push(v)
            }
            None => self.err(format!("memo entry {idx} is not defined")),
        }
    }

    fn global(&self, module: &str, name: &str) -> Result<Global, PickleError> {
        let g = match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch", class) => match Dtype::from_storage_class(class) {
                Some(d) => Global::StorageClass(d),
                None => return self.refuse(module, name),
            },
            _ => return self.refuse(module, name),
        };
        Ok(g)
    }

    fn refusal<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError { offset: self.op_pos, reason: reason.into(), refused: true })
    }

    fn refuse<T>(&self, module: &str, name: &str) -> Result<T, PickleError> {
        self.refusal(format!(
            "refused global `{module}.{name}`: a checkpoint may only name tensor-rebuilding functions, \
             OrderedDict and storage classes (nothing is imported or called)"
        ))
    }

    fn persistent_load(&self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(f) = pid else {
            return self.err(format!("persistent id is a {}, expected a tuple", pid.type_name()));
        };
        let want = match self.pids {
            PersistentIds::Zip => 5,
            PersistentIds::Legacy => 6,
        };
        if f.len() != want || f[0].as_str() != Some("storage") {
            return self.err(format!("persistent id is not a ('storage', …) tuple of {want} fields"));
        }
        let Value::Global(Global::StorageClass(dtype)) = f[1] else {
            return self.err("persistent id does not name a storage class");
        };
        let Some(key) = f[2].as_str().map(str::to_owned) else {
            return self.err("storage key is not a string");
        };
        let numel = match f[4].as_int() {
            Some(n) if (0..=u64::MAX as i128).contains(&n) => n as u64,
            _ => return self.err(format!("storage {key}: element count is not a non-negative int")),
        };
        let view = match f.get(5) {
            None | Some(Value::None) => None,
            Some(Value::Tuple(v)) if v.len() == 3 => {
                let (Some(vk), Some(off), Some(sz)) = (v[0].as_str(), v[1].as_int(), v[2].as_int()) else {
                    return self.err(format!("storage {key}: malformed view metadata"));
                };
                if off < 0 || sz < 0 {
                    return self.err(format!("storage {key}: negative view offset or size"));
                }
                Some((vk.to_owned(), off as u64, sz as u64))
            }
            Some(_) => return self.err(format!("storage {key}: malformed view metadata")),
        };
        Ok(Value::Storage(StorageRef { dtype, key, numel, view }))
    }

    fn int_list(&self, v: &Value, what: &str) -> Result<Vec<i64>, PickleError> {
        let Value::Tuple(items) = v else {
            return self.err(format!("tensor {what} is a {}, expected a tuple", v.type_name()));
        };
        items
            .iter()
            .map(|x| match x.as_int() {
                Some(i) if (0..=i64::MAX as i128).contains(&i) => Ok(i as i64),
                _ => self.err(format!("tensor {what} holds a value that is not a non-negative int")),
            })
            .collect()
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(g) = callable else {
            return self.err(format!("REDUCE on a {}, expected an allowed global", callable.type_name()));
        };
        let Value::Tuple(mut args) = args else {
            return self.err("REDUCE arguments are not a tuple");
        };
        match g {
            Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Global::RebuildTensorV2 if (6..=7).contains(&args.len()) => {
                let Value::Storage(storage) = args[0].clone() else {
                    return self.err("_rebuild_tensor_v2: first argument is not a storage");
                };
                let Some(offset) = args[1].as_int().filter(|o| (0..=i64::MAX as i128).contains(o)) else {
                    return self.err("_rebuild_tensor_v2: storage offset is not a non-negative int");
                };
                let size = self.int_list(&args[2], "size")?;
                let stride = self.int_list(&args[3], "stride")?;
                if size.len() != stride.len() {
                    return self.err("_rebuild_tensor_v2: size and stride differ in length");
                }
                Ok(Value::Tensor(TensorRef { storage, offset: offset as i64, size, stride }))
            }
            Global::RebuildParameter if (2..=3).contains(&args.len()) => Ok(args.swap_remove(0)),
            g => self.err(format!("cannot call {g:?} with {} arguments", args.len())),
        }
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Item::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = match self.stack.last() {
                        Some(Item::Value(v)) => v.clone(),
                        _ => return self.err("DUP on an empty stack"),
                    };
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(Value::Int(v as i128))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i128))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i128))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    if n > 16 {
                        return self.err(format!("integer of {n} bytes is too large"));
                    }
                    let bytes = self.take(n)?;
                    let mut v: i128 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        v |= (*b as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n); // two's complement sign
                    }
                    self.push(Value::Int(v))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v))?
                }
                b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                    let n = match op {
                        0x8c | b'U' => self.u8()? as u64,
                        0x8d => self.u64()?,
                        _ => self.u32()? as u64,
                    };
                    let n = usize::try_from(n).or_else(|_| self.err("string length overflows"))?;
                    let raw = self.take(n)?;
                    let s = match std::str::from_utf8(raw) {
                        Ok(s) => s.to_owned(),
                        // Python 2 strings (T, U) are bytes; keep them readable.
                        Err(_) if matches!(op, b'T' | b'U') => raw.iter().map(|&b| b as char).collect(),
                        Err(_) => return self.err("string is not UTF-8"),
                    };
                    self.push(Value::Str(s))?
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'C' => self.u8()? as u64,
                        0x8e => self.u64()?,
                        _ => self.u32()? as u64,
                    };
                    let n = usize::try_from(n).or_else(|_| self.err("bytes length overflows"))?;
                    let raw = self.take(n)?.to_vec();
                    self.push(Value::Bytes(raw))?
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))?
                }
                b']' => self.push(Value::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                    match self.top_mut()? {
                        Value::List(l) => l.extend(items),
                        other => {
                            let t = other.type_name();
                            return self.err(format!("APPEND to a {t}"));
                        }
                    }
                }
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b'd' | b's' | b'u' => {
                    let items = match op {
                        b's' => {
                            let v = self.pop()?;
                            let k = self.pop()?;
                            vec![k, v]
                        }
                        _ => self.pop_mark()?,
                    };
                    if items.len() % 2 != 0 {
                        return self.err("odd number of items for a dict");
                    }
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    if op == b'd' {
                        self.push(Value::Dict(pairs))?;
                    } else {
                        match self.top_mut()? {
                            Value::Dict(d) => {
                                for (k, v) in pairs {
                                    // Python would keep the last value; torch.save never
                                    // writes a key twice, so a file that does is refused.
                                    if d.iter().any(|(dk, _)| *dk == k) {
                                        let name = k.as_str().map(|s| format!("`{s}`")).unwrap_or_else(|| format!("{k:?}"));
                                        return self.err(format!("dict key {name} appears twice"));
                                    }
                                    d.push((k, v));
                                }
                            }
                            other => {
                                let t = other.type_name();
                                return self.err(format!("SETITEM on a {t}"));
                            }
                        }
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(Value::Global(g))?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (module.as_str(), name.as_str()) else {
                        return self.err("STACK_GLOBAL on values that are not strings");
                    };
                    let g = self.global(m, n)?;
                    self.push(Value::Global(g))?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: state for OrderedDict (`_metadata`) or a parameter; not needed.
                    self.pop()?;
                    if !matches!(self.top_mut()?, Value::Dict(_) | Value::Tensor(_)) {
                        return self.err("BUILD on an object that is neither a dict nor a tensor");
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                other => return self.err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, PickleError> {
        unpickle(bytes, PersistentIds::Zip).map(|(v, _)| v)
    }

    #[test]
    fn reads_small_dict_of_ints_and_strings() {
        // pickle.dumps({'a': 1, 'b': 'x'}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02X\x01\x00\x00\x00xq\x03u.";
        let v = run(p).unwrap();
        assert_eq!(v.get("a"), Some(&Value::Int(1)));
        assert_eq!(v.get("b"), Some(&Value::Str("x".into())));
    }

    #[test]
    fn legacy_magic_number_is_a_long() {
        // pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)
        let p = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        assert_eq!(run(p).unwrap(), Value::Int(0x1950a86a20f9469cfc6c));
        // and a negative one: pickle.dumps(-2, protocol=2) uses BININT
        assert_eq!(run(b"\x80\x02J\xfe\xff\xff\xff.").unwrap(), Value::Int(-2));
        assert_eq!(run(b"\x80\x02\x8a\x01\xfe.").unwrap(), Value::Int(-2));
    }

    #[test]
    fn refuses_foreign_globals_by_name() {
        // the classic: cos\nsystem\n(S'echo'\ntR.
        let e = run(b"cos\nsystem\n(X\x04\x00\x00\x00echotR.").unwrap_err();
        assert!(e.reason.contains("os.system"), "{e}");
        let e = run(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err();
        assert!(e.reason.contains("builtins.eval"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02X\x01\x00\x00\x00xq\x03u.";
        for n in 0..p.len() {
            assert!(run(&p[..n]).is_err(), "prefix of {n} bytes was accepted");
        }
        assert!(run(b"\xff").unwrap_err().reason.contains("0xff"));
        assert!(run(b"h\x05.").unwrap_err().reason.contains("memo"));
        assert!(run(b"0.").unwrap_err().reason.contains("underflow"));
    }

    #[test]
    fn rebuilds_tensor_reference_from_persistent_id() {
        // ('storage', torch.FloatStorage, '0', 'cpu', 6) -> _rebuild_tensor_v2(s, 0, (2, 3), (3, 1), False, OrderedDict())
        let mut p = Vec::new();
        p.extend_from_slice(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend_from_slice(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)RtR.");
        let v = run(&p).unwrap();
        let Value::Tensor(t) = v else { panic!("not a tensor: {v:?}") };
        assert_eq!(t.size, vec![2, 3]);
        assert_eq!(t.stride, vec![3, 1]);
        assert_eq!(t.storage.key, "0");
        assert_eq!(t.storage.numel, 6);
        assert_eq!(t.storage.dtype, Dtype::F32);
        // A legacy-style id (6 fields) is refused where the zip layout is expected.
        let mut legacy = p.clone();
        let at = legacy.windows(4).position(|w| w == b"K\x06tQ").unwrap();
        legacy.splice(at..at + 4, b"K\x06NtQ".iter().copied());
        assert!(run(&legacy).is_err());
        assert!(unpickle(&legacy, PersistentIds::Legacy).is_ok());
    }

    #[test]
    fn repeated_keys_are_refused() {
        // {'a': 1} then SETITEMS 'a' 2: Python keeps the last, we refuse the ambiguity.
        let p = b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00aK\x02u.";
        let e = run(p).unwrap_err().to_string();
        assert!(e.contains("`a` appears twice"), "{e}");
        let once = b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02u.";
        assert!(run(once).is_ok());
    }
}
