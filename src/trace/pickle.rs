//! A small pickle reader for memory snapshots (protocols 2–5, plain data only).
//!
//! Snapshots with stack frames share each frame list among many entries through pickle's
//! memo; a reader that copies memoized values on every reference (as general-purpose
//! crates do) turns that into quadratic work. Here memoized values are reference-counted,
//! so a reference costs O(1) whatever it points at. Only the data types PyTorch's snapshots
//! use are accepted (dict, list, tuple, str, bytes, int, float, bool, None); anything else —
//! notably `GLOBAL`/`REDUCE`, which would construct arbitrary objects — is an error.
//!
//! The input is untrusted. The reader must not panic, allocate more than a small multiple of
//! the input's size, or recurse on the input's nesting (dropping a value is iterative, see
//! [`PVal`]'s `Drop`); it refuses what CPython's unpickler refuses among the opcodes it reads
//! (the mark fence, odd dict items, unhashable keys, frames past the end, lines without
//! their newline, out-of-range floats), so a file it accepts is one `pickle.load` accepts.

use std::cell::RefCell;
use std::rc::Rc;

use rustc_hash::FxHashMap;

/// A decoded Python value.
#[derive(Debug, Clone)]
pub enum PVal {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(Rc<str>),
    /// Bytes.
    Bytes(Rc<[u8]>),
    /// A list (shared: memo references point at the same list).
    List(Rc<RefCell<Vec<PVal>>>),
    /// A tuple.
    Tuple(Rc<Vec<PVal>>),
    /// A dict, as its items in insertion order.
    Dict(Rc<RefCell<Vec<(PVal, PVal)>>>),
}

impl PVal {
    /// Look up a string key in a dict.
    pub fn get(&self, key: &str) -> Option<PVal> {
        match self {
            // The last of duplicate keys wins, as in the dict Python builds.
            PVal::Dict(d) => d
                .borrow()
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, PVal::Str(s) if &**s == key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// The integer value (bools count as 0/1).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            PVal::Int(i) => Some(*i),
            PVal::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The float value (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PVal::Float(f) => Some(*f),
            PVal::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The string value.
    pub fn as_str(&self) -> Option<Rc<str>> {
        match self {
            PVal::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// The elements of a list or tuple.
    pub fn items(&self) -> Option<Vec<PVal>> {
        match self {
            PVal::List(l) => Some(l.borrow().clone()),
            PVal::Tuple(t) => Some((**t).clone()),
            _ => None,
        }
    }

    /// The key/value pairs of a dict.
    pub fn pairs(&self) -> Option<Vec<(PVal, PVal)>> {
        match self {
            PVal::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }
}

impl Drop for PVal {
    /// Iterative: a list nested a million deep (two bytes a level in a pickle) must not
    /// overflow the stack when it is dropped. Children of containers this value solely owns
    /// are moved to a work list, so each drop below is shallow.
    fn drop(&mut self) {
        let mut pending = Vec::new();
        take_children(self, &mut pending);
        while let Some(mut v) = pending.pop() {
            take_children(&mut v, &mut pending);
        }
    }
}

fn take_children(v: &mut PVal, out: &mut Vec<PVal>) {
    match v {
        PVal::List(l) if Rc::strong_count(l) == 1 => out.append(&mut l.borrow_mut()),
        PVal::Dict(d) if Rc::strong_count(d) == 1 => {
            for (k, x) in d.borrow_mut().drain(..) {
                out.push(k);
                out.push(x);
            }
        }
        PVal::Tuple(t) => {
            if let Some(items) = Rc::get_mut(t) {
                out.append(items);
            }
        }
        _ => {}
    }
}

/// Largest memo index accepted (CPython sizes its memo to the index, so far larger ones fail
/// there too); the memo itself is a map, so a large index costs nothing.
const MAX_MEMO_ID: u64 = 1 << 31;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = self.data.len() - self.pos;
        if n > left as u64 {
            return Err(format!(
                "truncated at byte {} ({n} bytes announced, {left} left)",
                self.pos
            ));
        }
        let n = n as usize;
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.arr::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.arr().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.arr().map(u64::from_le_bytes)
    }
    /// A text argument: up to its newline, which must be there (as CPython requires).
    fn line(&mut self) -> Result<&'a str, String> {
        let start = self.pos;
        let Some(n) = self.data[start..].iter().position(|&b| b == b'\n') else {
            return Err(format!(
                "truncated at byte {start} (a text argument without its newline)"
            ));
        };
        self.pos = start + n + 1;
        std::str::from_utf8(&self.data[start..start + n])
            .map_err(|_| format!("bad text at byte {start}"))
    }
}

fn utf8(b: &[u8], at: usize) -> Result<PVal, String> {
    std::str::from_utf8(b)
        .map(|s| PVal::Str(Rc::from(s)))
        .map_err(|_| format!("invalid UTF-8 string at byte {at}"))
}

fn long_le(b: &[u8], at: usize) -> Result<PVal, String> {
    let Some(&last) = b.last() else {
        return Ok(PVal::Int(0));
    };
    let neg = last & 0x80 != 0;
    let fill = if neg { 0xff } else { 0 };
    if b.len() > 8 {
        // Wider than 64 bits: accept only sign extension of a value that fits.
        let (low, high) = b.split_at(8);
        if high.iter().any(|&x| x != fill) || (low[7] & 0x80 != 0) != neg {
            return Err(format!("integer wider than 64 bits at byte {at}"));
        }
        return long_le(low, at);
    }
    let mut a = [fill; 8];
    a[..b.len()].copy_from_slice(b);
    Ok(PVal::Int(i64::from_le_bytes(a)))
}

fn float_text(l: &str, at: usize) -> Result<PVal, String> {
    let f: f64 = l.parse().map_err(|_| format!("bad FLOAT at byte {at}"))?;
    // Rust reads 1e400 as infinity; Python raises OverflowError.
    if f.is_infinite() && !l.to_ascii_lowercase().contains("inf") {
        return Err(format!("FLOAT out of range at byte {at}"));
    }
    Ok(PVal::Float(f))
}

/// Whether Python could hash `v` (a dict key): no list or dict, also inside tuples.
/// Iterative, so a deeply nested tuple key cannot overflow the stack.
fn hashable(v: &PVal) -> bool {
    let mut todo = vec![v.clone()];
    while let Some(x) = todo.pop() {
        match &x {
            PVal::List(_) | PVal::Dict(_) => return false,
            PVal::Tuple(t) => todo.extend(t.iter().cloned()),
            _ => {}
        }
    }
    true
}

/// The unpickler's state: the stack with its marks. As in CPython, the latest mark is a
/// fence: no opcode may pop or use an item below it except those that consume the mark.
struct Machine {
    stack: Vec<PVal>,
    marks: Vec<usize>,
}

impl Machine {
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }
    fn pop(&mut self, at: usize) -> Result<PVal, String> {
        if self.stack.len() <= self.fence() {
            return Err(format!("stack underflow at byte {at}"));
        }
        self.stack
            .pop()
            .ok_or(format!("stack underflow at byte {at}"))
    }
    fn top(&self, at: usize) -> Result<&PVal, String> {
        if self.stack.len() <= self.fence() {
            return Err(format!("stack underflow at byte {at}"));
        }
        self.stack
            .last()
            .ok_or(format!("stack underflow at byte {at}"))
    }
    /// Pop the latest mark and the items above it; the item below (the target of
    /// APPENDS/SETITEMS) must be above the previous mark.
    fn pop_mark(&mut self, at: usize) -> Result<Vec<PVal>, String> {
        let m = self.marks.pop().ok_or(format!(
            "an opcode that needs a MARK, without one, at byte {at}"
        ))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }
    fn target_ok(&self) -> bool {
        self.stack.len() > self.fence()
    }
}

fn pairs(items: Vec<PVal>, at: usize, what: &str) -> Result<Vec<(PVal, PVal)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("odd number of items for {what} at byte {at}"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if !hashable(&k) {
            return Err(format!("unhashable dict key in {what} at byte {at}"));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Decode a pickle.
///
/// # Errors
/// A description with the byte offset: truncated or malformed data, an unsupported opcode.
pub fn load(data: &[u8]) -> Result<PVal, String> {
    let mut r = Reader { data, pos: 0 };
    let mut m = Machine {
        stack: Vec::new(),
        marks: Vec::new(),
    };
    let mut memo: FxHashMap<u64, PVal> = FxHashMap::default();
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                let v = r.u8()?;
                if v > 5 {
                    return Err(format!("unsupported pickle protocol {v} at byte {at}"));
                }
            }
            0x95 => {
                // FRAME: the frame must lie within the data, as CPython checks.
                let n = r.u64()?;
                if n > (data.len() - r.pos) as u64 {
                    return Err(format!("truncated at byte {at} (frame of {n} bytes)"));
                }
            }
            b'.' => return m.pop(at),
            b'(' => m.marks.push(m.stack.len()),
            b'}' => m.stack.push(PVal::Dict(Rc::new(RefCell::new(Vec::new())))),
            b']' => m.stack.push(PVal::List(Rc::new(RefCell::new(Vec::new())))),
            b')' => m.stack.push(PVal::Tuple(Rc::new(Vec::new()))),
            b'N' => m.stack.push(PVal::None),
            0x88 => m.stack.push(PVal::Bool(true)),
            0x89 => m.stack.push(PVal::Bool(false)),
            b'J' => m.stack.push(PVal::Int(i64::from(r.u32()? as i32))),
            b'K' => m.stack.push(PVal::Int(i64::from(r.u8()?))),
            b'M' => m
                .stack
                .push(PVal::Int(i64::from(u16::from_le_bytes(r.arr()?)))),
            0x8a => {
                let n = r.u8()?;
                let b = r.take(u64::from(n))?;
                m.stack.push(long_le(b, at)?);
            }
            0x8b => {
                let n = r.u32()? as i32;
                if n < 0 {
                    return Err(format!("LONG4 with a negative byte count at byte {at}"));
                }
                let b = r.take(n as u64)?;
                m.stack.push(long_le(b, at)?);
            }
            b'I' => {
                let l = r.line()?;
                m.stack.push(match l {
                    "01" => PVal::Bool(true),
                    "00" => PVal::Bool(false),
                    _ => PVal::Int(l.parse().map_err(|_| format!("bad INT at byte {at}"))?),
                });
            }
            b'L' => {
                let l = r.line()?;
                let l = l.strip_suffix('L').unwrap_or(l);
                m.stack.push(PVal::Int(
                    l.parse().map_err(|_| format!("bad LONG at byte {at}"))?,
                ));
            }
            b'G' => m.stack.push(PVal::Float(f64::from_be_bytes(r.arr()?))),
            b'F' => {
                let l = r.line()?;
                m.stack.push(float_text(l, at)?);
            }
            0x8c => {
                let n = r.u8()?;
                m.stack.push(utf8(r.take(u64::from(n))?, at)?);
            }
            b'X' => {
                let n = r.u32()?;
                m.stack.push(utf8(r.take(u64::from(n))?, at)?);
            }
            0x8d => {
                let n = r.u64()?;
                m.stack.push(utf8(r.take(n)?, at)?);
            }
            b'C' => {
                let n = r.u8()?;
                m.stack.push(PVal::Bytes(Rc::from(r.take(u64::from(n))?)));
            }
            b'B' => {
                let n = r.u32()? as i32;
                if n < 0 {
                    return Err(format!("BINBYTES with a negative length at byte {at}"));
                }
                m.stack.push(PVal::Bytes(Rc::from(r.take(n as u64)?)));
            }
            0x8e => {
                let n = r.u64()?;
                m.stack.push(PVal::Bytes(Rc::from(r.take(n)?)));
            }
            0x94 => {
                let top = m.top(at)?.clone();
                memo.insert(memo.len() as u64, top);
            }
            b'q' | b'r' | b'p' => {
                let id = match op {
                    b'q' => u64::from(r.u8()?),
                    b'r' => u64::from(r.u32()?),
                    _ => r
                        .line()?
                        .parse()
                        .map_err(|_| format!("bad PUT at byte {at}"))?,
                };
                if id > MAX_MEMO_ID {
                    return Err(format!("memo index {id} too large at byte {at}"));
                }
                let top = m.top(at)?.clone();
                memo.insert(id, top);
            }
            b'h' | b'j' | b'g' => {
                let id: u64 = match op {
                    b'h' => u64::from(r.u8()?),
                    b'j' => u64::from(r.u32()?),
                    _ => r
                        .line()?
                        .parse()
                        .map_err(|_| format!("bad GET at byte {at}"))?,
                };
                let v = memo
                    .get(&id)
                    .cloned()
                    .ok_or(format!("missing memo {id} at byte {at}"))?;
                m.stack.push(v);
            }
            b'a' => {
                let v = m.pop(at)?;
                match m.top(at)? {
                    PVal::List(l) => l.borrow_mut().push(v),
                    _ => return Err(format!("APPEND to a non-list at byte {at}")),
                }
            }
            b'e' => {
                let items = m.pop_mark(at)?;
                if !m.target_ok() {
                    return Err(format!("APPENDS without a list at byte {at}"));
                }
                match m.stack.last() {
                    Some(PVal::List(l)) => l.borrow_mut().extend(items),
                    _ => return Err(format!("APPENDS to a non-list at byte {at}")),
                }
            }
            b's' => {
                let v = m.pop(at)?;
                let k = m.pop(at)?;
                if !hashable(&k) {
                    return Err(format!("unhashable dict key at byte {at}"));
                }
                match m.top(at)? {
                    PVal::Dict(d) => d.borrow_mut().push((k, v)),
                    _ => return Err(format!("SETITEM on a non-dict at byte {at}")),
                }
            }
            b'u' => {
                let items = m.pop_mark(at)?;
                let items = pairs(items, at, "SETITEMS")?;
                if !m.target_ok() {
                    return Err(format!("SETITEMS without a dict at byte {at}"));
                }
                match m.stack.last() {
                    Some(PVal::Dict(d)) => d.borrow_mut().extend(items),
                    _ => return Err(format!("SETITEMS on a non-dict at byte {at}")),
                }
            }
            b'd' => {
                let items = m.pop_mark(at)?;
                let d = pairs(items, at, "DICT")?;
                m.stack.push(PVal::Dict(Rc::new(RefCell::new(d))));
            }
            b'l' => {
                let items = m.pop_mark(at)?;
                m.stack.push(PVal::List(Rc::new(RefCell::new(items))));
            }
            b't' => {
                let items = m.pop_mark(at)?;
                m.stack.push(PVal::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if m.stack.len() < m.fence() + n {
                    return Err(format!("stack underflow at byte {at}"));
                }
                let items = m.stack.split_off(m.stack.len() - n);
                m.stack.push(PVal::Tuple(Rc::new(items)));
            }
            b'0' => {
                // As CPython: POP with nothing above the mark pops the mark.
                if m.stack.len() > m.fence() {
                    m.stack.pop();
                } else if m.marks.pop().is_none() {
                    return Err(format!("stack underflow at byte {at}"));
                }
            }
            b'2' => {
                let top = m.top(at)?.clone();
                m.stack.push(top);
            }
            b'1' => {
                m.pop_mark(at)?;
            }
            b'c' | 0x93 | b'R' | 0x81 | 0x92 | b'b' | b'i' | b'o' => {
                return Err(format!(
                    "the pickle constructs Python objects (opcode {op:#04x} at byte {at}); \
                     a memory snapshot holds plain data only"
                ));
            }
            _ => return Err(format!("unsupported pickle opcode {op:#04x} at byte {at}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_python_protocol_4_with_memo_sharing() {
        // pickle.dumps({'a': [1, -2, 2**40, 'x', None, True, 1.5], 'b': <same list>}, 4)
        let data: &[u8] = b"\x80\x04\x951\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8c\x01x\x94N\x88G?\xf8\x00\x00\x00\x00\x00\x00e\x8c\x01b\x94h\x02u.";
        let v = load(data).unwrap();
        let a = v.get("a").unwrap().items().unwrap();
        assert_eq!(a.len(), 7);
        assert_eq!(a[0].as_i64(), Some(1));
        assert_eq!(a[1].as_i64(), Some(-2));
        assert_eq!(a[2].as_i64(), Some(1 << 40));
        assert_eq!(a[3].as_str().as_deref(), Some("x"));
        assert!(matches!(a[4], PVal::None));
        assert!(matches!(a[5], PVal::Bool(true)));
        assert_eq!(a[6].as_f64(), Some(1.5));
        // 'b' is the same list object, not a copy.
        match (v.get("a").unwrap(), v.get("b").unwrap()) {
            (PVal::List(ref x), PVal::List(ref y)) => assert!(Rc::ptr_eq(x, y)),
            _ => panic!("lists expected"),
        }
    }

    #[test]
    fn refuses_objects_and_reports_truncation() {
        let e = load(b"\x80\x04c__builtin__\neval\n.").unwrap_err();
        assert!(e.contains("constructs Python objects"), "{e}");
        let e = load(b"\x80\x04\x8c\x05ab").unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = load(b"\x80\x04\xff").unwrap_err();
        assert!(
            e.contains("unsupported pickle opcode 0xff at byte 2"),
            "{e}"
        );
        assert!(load(b"hello").is_err());
    }

    #[test]
    fn refuses_what_cpython_refuses() {
        let cases: [(&[u8], &str); 10] = [
            (b"\x80\x02I1", "truncated at byte 3"),
            (b"\x80\x02F1e400\n.", "FLOAT out of range"),
            (b"\x80\x02]p18446744073709551615\n.", "memo index"),
            // The mark is a fence: APPEND cannot reach the list below it.
            (b"\x80\x02](Na.", "stack underflow at byte 5"),
            (b"\x80\x02N(.", "stack underflow at byte 4"),
            (b"\x80\x02(K\x01d.", "odd number of items for DICT"),
            (b"\x80\x02}]K\x01s.", "unhashable dict key"),
            (b"\x80\x02(]K\x01d.", "unhashable dict key"),
            (
                b"\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00N.",
                "frame of 255 bytes",
            ),
            (b"\x80\x02\x8b\xff\xff\xff\xff.", "negative byte count"),
        ];
        for (data, want) in cases {
            let e = load(data).unwrap_err();
            assert!(e.contains(want), "{data:?}: {e}");
        }
        // What CPython accepts: the last duplicate key wins; POP at the fence pops the mark.
        let v = load(b"\x80\x02}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00aK\x02u.").unwrap();
        assert_eq!(v.get("a").and_then(|x| x.as_i64()), Some(2));
        assert!(matches!(load(b"\x80\x02N(0.").unwrap(), PVal::None));
    }

    #[test]
    fn a_million_nested_lists_drop_without_recursion() {
        let n = 1_000_000;
        let mut data = b"\x80\x02".to_vec();
        data.extend(std::iter::repeat_n(b']', n));
        data.extend(std::iter::repeat_n(b'a', n - 1));
        data.push(b'.');
        // Dropped in a thread with a small stack: a recursive drop would overflow it.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || drop(load(&data).unwrap()))
            .unwrap()
            .join()
            .unwrap();
    }
}
