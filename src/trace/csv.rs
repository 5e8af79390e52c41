//! The CSV-like traces: the project's CSV (`action,ptr,size,stream`) and RMM's
//! `logging_resource_adaptor` logs, read as a stream.
//!
//! The input is untrusted: the file is never read whole (a line longer than [`MAX_LINE`] is
//! an error, so a NUL-filled or quote-unbalanced file costs memory for its events only), a
//! field is never echoed whole into an error, and every value is checked (integers, in
//! range, frees matching live allocations). It must not build events the replay cannot
//! trust.

use std::collections::HashMap;
use std::io::{self, Read};

use super::{DeviceTrace, Event, EventKind, MAX_BYTES, Trace, TraceError, TraceFormat, err, short};

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// A reader that fails once a line grows past [`MAX_LINE`] bytes (the CSV parser would
/// otherwise buffer a whole newline-free file as one record).
pub(crate) struct LineCap<R> {
    inner: R,
    since_newline: usize,
    line: u64,
}

impl<R: Read> LineCap<R> {
    pub(crate) fn new(inner: R) -> Self {
        LineCap {
            inner,
            since_newline: 0,
            line: 1,
        }
    }
}

impl<R: Read> Read for LineCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.since_newline = 0;
                self.line += 1;
            } else {
                self.since_newline += 1;
                if self.since_newline > MAX_LINE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("line {} is longer than {MAX_LINE} bytes", self.line),
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// The column names and action words of a CSV-like trace format.
struct CsvDialect {
    format: TraceFormat,
    action: &'static str,
    ptr: &'static str,
    size: &'static str,
    stream: &'static str,
    /// Action word → Some(true) alloc, Some(false) free; None: skip the row.
    classify: fn(&str) -> Result<Option<bool>, String>,
    /// Whether a free may leave its size empty.
    free_size_optional: bool,
}

const PROJECT_CSV: CsvDialect = CsvDialect {
    format: TraceFormat::Csv,
    action: "action",
    ptr: "ptr",
    size: "size",
    stream: "stream",
    classify: |a| match a {
        "alloc" => Ok(Some(true)),
        "free" => Ok(Some(false)),
        _ => Err(format!("unknown action {} (alloc or free)", short(a))),
    },
    free_size_optional: true,
};

const RMM_LOG: CsvDialect = CsvDialect {
    format: TraceFormat::RmmLog,
    action: "action",
    ptr: "pointer",
    size: "size",
    stream: "stream",
    classify: |a| match a {
        "allocate" => Ok(Some(true)),
        "free" => Ok(Some(false)),
        // A failed allocation changed nothing.
        "allocate failure" => Ok(None),
        _ => Err(format!(
            "unknown action {} (allocate, free, allocate failure)",
            short(a)
        )),
    },
    free_size_optional: false,
};

fn parse_int(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// A CSV error as one short line: the parser's own message, never the record's content.
fn csv_error(name: &str, e: &csv::Error, not_text: bool) -> TraceError {
    let at = e
        .position()
        .map(|p| format!("line {}", p.line()))
        .or_else(|| Some("line 1".into()));
    let message = match e.kind() {
        csv::ErrorKind::Io(io) => return err(name, None, short_msg(&io.to_string())),
        csv::ErrorKind::Utf8 { .. } if not_text => {
            "neither a pickle snapshot nor a text (CSV) trace".to_string()
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
        _ => short_msg(&e.to_string()),
    };
    err(name, at, message)
}

fn short_msg(s: &str) -> String {
    let s: String = s.chars().take(200).collect();
    s.replace(['\n', '\r'], " ")
}

/// Read a CSV-like trace from `input`, telling the dialect from its header.
///
/// # Errors
/// A [`TraceError`] naming the file and the line.
pub(crate) fn parse_csv(name: &str, input: impl Read) -> Result<Trace, TraceError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(LineCap::new(input));
    let headers = rdr
        .headers()
        .map_err(|e| csv_error(name, &e, true))?
        .clone();
    let has = |n: &str| headers.iter().any(|h| h.eq_ignore_ascii_case(n));
    let dialect = if has("thread") && has("action") && has("pointer") {
        &RMM_LOG
    } else if has("action") && has("ptr") {
        &PROJECT_CSV
    } else {
        return Err(err(
            name,
            Some("line 1".into()),
            "not a trace: expected a pickle snapshot, a CSV with columns action,ptr,size,stream, \
             or an RMM log (Thread,Time,Action,Pointer,Size,Stream)",
        ));
    };
    let col = |n: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(n));
    let (Some(ca), Some(cp), Some(cs)) = (col(dialect.action), col(dialect.ptr), col(dialect.size))
    else {
        return Err(err(
            name,
            Some("line 1".into()),
            format!(
                "missing column {}, {} or {}",
                dialect.action, dialect.ptr, dialect.size
            ),
        ));
    };
    let cst = col(dialect.stream);
    let mut live: HashMap<u64, u64> = HashMap::new();
    let mut events = Vec::new();
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(name, &e, false)),
        }
        let line = rec.position().map_or(0, |p| p.line());
        let at = || Some(format!("line {line}"));
        if rec.as_slice().contains(['\n', '\r']) {
            // A quoted field across lines: an unbalanced quote took the rest of the file.
            return Err(err(
                name,
                at(),
                "a quoted field runs across lines (an unbalanced '\"')",
            ));
        }
        if rec.len() <= ca.max(cp).max(cs) {
            // A row cut short (a truncated file) is not a free with its size left empty.
            return Err(err(
                name,
                at(),
                format!(
                    "only {} fields: the row stops before its {} column",
                    rec.len(),
                    [(ca, dialect.action), (cp, dialect.ptr), (cs, dialect.size)]
                        .iter()
                        .filter(|(c, _)| *c >= rec.len())
                        .min()
                        .map_or("", |x| x.1)
                ),
            ));
        }
        let field = |c: usize| rec.get(c).unwrap_or("");
        let Some(alloc) =
            (dialect.classify)(&field(ca).to_ascii_lowercase()).map_err(|m| err(name, at(), m))?
        else {
            continue;
        };
        let addr = parse_int(field(cp)).ok_or_else(|| {
            err(
                name,
                at(),
                format!("bad {} {}", dialect.ptr, short(field(cp))),
            )
        })?;
        let size = if field(cs).is_empty() && !alloc && dialect.free_size_optional {
            0
        } else {
            parse_int(field(cs)).ok_or_else(|| {
                err(
                    name,
                    at(),
                    format!("bad {} {}", dialect.size, short(field(cs))),
                )
            })?
        };
        if size > MAX_BYTES {
            return Err(err(
                name,
                at(),
                format!(
                    "{} {size} is out of range (at most {MAX_BYTES})",
                    dialect.size
                ),
            ));
        }
        let stream = match cst.map(field) {
            None | Some("") => 0,
            Some(s) => parse_int(s)
                .ok_or_else(|| err(name, at(), format!("bad {} {}", dialect.stream, short(s))))?,
        };
        if alloc {
            if size == 0 {
                continue; // zero-byte tensors hold no memory
            }
            if live.insert(addr, size).is_some() {
                return Err(err(
                    name,
                    at(),
                    format!("{addr:#x} allocated while still live"),
                ));
            }
            events.push(Event {
                kind: EventKind::Alloc,
                addr,
                size,
                stream,
            });
        } else {
            let Some(s) = live.remove(&addr) else {
                if size == 0 {
                    continue;
                }
                return Err(err(
                    name,
                    at(),
                    format!("free of {addr:#x}, which was never allocated"),
                ));
            };
            events.push(Event {
                kind: EventKind::Free,
                addr,
                size: s,
                stream,
            });
        }
    }
    let dev = DeviceTrace {
        device: 0,
        events,
        ..DeviceTrace::default()
    };
    Ok(Trace {
        path: name.to_string(),
        format: dialect.format,
        devices: vec![dev],
    })
}
