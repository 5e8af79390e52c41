//! A small pickle reader for memory snapshots (protocols 2–5, plain data only).
//!
//! Snapshots with stack frames share each frame list among many entries through pickle's
//! memo; a reader that copies memoized values on every reference (as general-purpose
//! crates do) turns that into quadratic work. Here memoized values are reference-counted,
//! so a reference costs O(1) whatever it points at. Only the data types PyTorch's snapshots
//! use are accepted (dict, list, tuple, str, bytes, int, float, bool, None); anything else —
//! notably `GLOBAL`/`REDUCE`, which would construct arbitrary objects — is an error.

use std::cell::RefCell;
use std::rc::Rc;

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
            PVal::Dict(d) => d
                .borrow()
                .iter()
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

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.data.len() - self.pos < n {
            return Err(format!("truncated at byte {}", self.pos));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let start = self.pos;
        while self.pos < self.data.len() && self.data[self.pos] != b'\n' {
            self.pos += 1;
        }
        let s = std::str::from_utf8(&self.data[start..self.pos])
            .map_err(|_| format!("bad text at byte {start}"))?;
        self.pos += 1;
        Ok(s)
    }
}

fn utf8(b: &[u8], at: usize) -> Result<PVal, String> {
    std::str::from_utf8(b)
        .map(|s| PVal::Str(Rc::from(s)))
        .map_err(|_| format!("invalid UTF-8 string at byte {at}"))
}

fn long_le(b: &[u8], at: usize) -> Result<PVal, String> {
    if b.is_empty() {
        return Ok(PVal::Int(0));
    }
    if b.len() > 8 {
        // Wider than 64 bits: accept only sign extension of a value that fits.
        let (low, high) = b.split_at(8);
        let neg = b[b.len() - 1] & 0x80 != 0;
        let fill = if neg { 0xff } else { 0 };
        if high.iter().any(|&x| x != fill) {
            return Err(format!("integer wider than 64 bits at byte {at}"));
        }
        return long_le(low, at);
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let mut a = [if neg { 0xff } else { 0 }; 8];
    a[..b.len()].copy_from_slice(b);
    Ok(PVal::Int(i64::from_le_bytes(a)))
}

/// Decode a pickle.
///
/// # Errors
/// A description with the byte offset: truncated or malformed data, an unsupported opcode.
pub fn load(data: &[u8]) -> Result<PVal, String> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<PVal> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: Vec<Option<PVal>> = Vec::new();
    let pop = |stack: &mut Vec<PVal>, at: usize| {
        stack.pop().ok_or(format!("stack underflow at byte {at}"))
    };
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                let v = r.u8()?;
                if v > 5 {
                    return Err(format!("unsupported pickle protocol {v}"));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: length only
            }
            b'.' => return pop(&mut stack, at),
            b'(' => marks.push(stack.len()),
            b'}' => stack.push(PVal::Dict(Rc::new(RefCell::new(Vec::new())))),
            b']' => stack.push(PVal::List(Rc::new(RefCell::new(Vec::new())))),
            b')' => stack.push(PVal::Tuple(Rc::new(Vec::new()))),
            b'N' => stack.push(PVal::None),
            0x88 => stack.push(PVal::Bool(true)),
            0x89 => stack.push(PVal::Bool(false)),
            b'J' => {
                let v = r.u32()? as i32;
                stack.push(PVal::Int(i64::from(v)));
            }
            b'K' => {
                let v = r.u8()?;
                stack.push(PVal::Int(i64::from(v)));
            }
            b'M' => {
                let v = r.u16()?;
                stack.push(PVal::Int(i64::from(v)));
            }
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                stack.push(long_le(b, at)?);
            }
            0x8b => {
                let n = r.u32()? as usize;
                let b = r.take(n)?;
                stack.push(long_le(b, at)?);
            }
            b'I' => {
                let l = r.line()?;
                stack.push(match l {
                    "01" => PVal::Bool(true),
                    "00" => PVal::Bool(false),
                    _ => PVal::Int(l.parse().map_err(|_| format!("bad INT at byte {at}"))?),
                });
            }
            b'L' => {
                let l = r.line()?.trim_end_matches('L');
                stack.push(PVal::Int(
                    l.parse().map_err(|_| format!("bad LONG at byte {at}"))?,
                ));
            }
            b'G' => {
                let b = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(PVal::Float(f64::from_be_bytes(a)));
            }
            b'F' => {
                let l = r.line()?;
                stack.push(PVal::Float(
                    l.parse().map_err(|_| format!("bad FLOAT at byte {at}"))?,
                ));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(utf8(r.take(n)?, at)?);
            }
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(utf8(r.take(n)?, at)?);
            }
            0x8d => {
                let n = r.u64()? as usize;
                stack.push(utf8(r.take(n)?, at)?);
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(PVal::Bytes(Rc::from(r.take(n)?)));
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(PVal::Bytes(Rc::from(r.take(n)?)));
            }
            0x8e => {
                let n = r.u64()? as usize;
                stack.push(PVal::Bytes(Rc::from(r.take(n)?)));
            }
            0x94 => {
                let top = stack
                    .last()
                    .ok_or(format!("MEMOIZE on empty stack at byte {at}"))?;
                memo.push(Some(top.clone()));
            }
            b'q' | b'r' | b'p' => {
                let id = match op {
                    b'q' => r.u8()? as usize,
                    b'r' => r.u32()? as usize,
                    _ => r
                        .line()?
                        .parse()
                        .map_err(|_| format!("bad PUT at byte {at}"))?,
                };
                let top = stack
                    .last()
                    .ok_or(format!("PUT on empty stack at byte {at}"))?;
                if memo.len() <= id {
                    memo.resize(id + 1, None);
                }
                memo[id] = Some(top.clone());
            }
            b'h' | b'j' | b'g' => {
                let id = match op {
                    b'h' => r.u8()? as usize,
                    b'j' => r.u32()? as usize,
                    _ => r
                        .line()?
                        .parse()
                        .map_err(|_| format!("bad GET at byte {at}"))?,
                };
                let v = memo
                    .get(id)
                    .and_then(Clone::clone)
                    .ok_or(format!("missing memo {id} at byte {at}"))?;
                stack.push(v);
            }
            b'a' => {
                let v = pop(&mut stack, at)?;
                match stack.last() {
                    Some(PVal::List(l)) => l.borrow_mut().push(v),
                    _ => return Err(format!("APPEND to a non-list at byte {at}")),
                }
            }
            b'e' => {
                let m = marks
                    .pop()
                    .ok_or(format!("APPENDS without MARK at byte {at}"))?;
                let items = stack.split_off(m);
                match stack.last() {
                    Some(PVal::List(l)) => l.borrow_mut().extend(items),
                    _ => return Err(format!("APPENDS to a non-list at byte {at}")),
                }
            }
            b's' => {
                let v = pop(&mut stack, at)?;
                let k = pop(&mut stack, at)?;
                match stack.last() {
                    Some(PVal::Dict(d)) => d.borrow_mut().push((k, v)),
                    _ => return Err(format!("SETITEM on a non-dict at byte {at}")),
                }
            }
            b'u' => {
                let m = marks
                    .pop()
                    .ok_or(format!("SETITEMS without MARK at byte {at}"))?;
                let items = stack.split_off(m);
                if !items.len().is_multiple_of(2) {
                    return Err(format!("odd SETITEMS at byte {at}"));
                }
                match stack.last() {
                    Some(PVal::Dict(d)) => {
                        let mut d = d.borrow_mut();
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err(format!("SETITEMS on a non-dict at byte {at}")),
                }
            }
            b'd' => {
                let m = marks
                    .pop()
                    .ok_or(format!("DICT without MARK at byte {at}"))?;
                let items = stack.split_off(m);
                let mut d = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                stack.push(PVal::Dict(Rc::new(RefCell::new(d))));
            }
            b'l' => {
                let m = marks
                    .pop()
                    .ok_or(format!("LIST without MARK at byte {at}"))?;
                let items = stack.split_off(m);
                stack.push(PVal::List(Rc::new(RefCell::new(items))));
            }
            b't' => {
                let m = marks
                    .pop()
                    .ok_or(format!("TUPLE without MARK at byte {at}"))?;
                let items = stack.split_off(m);
                stack.push(PVal::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(format!("stack underflow at byte {at}"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(PVal::Tuple(Rc::new(items)));
            }
            b'0' => {
                pop(&mut stack, at)?;
            }
            b'2' => {
                let top = stack
                    .last()
                    .cloned()
                    .ok_or(format!("DUP on empty stack at byte {at}"))?;
                stack.push(top);
            }
            b'1' => {
                let m = marks
                    .pop()
                    .ok_or(format!("POP_MARK without MARK at byte {at}"))?;
                stack.truncate(m);
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
            (PVal::List(x), PVal::List(y)) => assert!(Rc::ptr_eq(&x, &y)),
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
}
