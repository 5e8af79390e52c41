//! Allocation traces: PyTorch memory snapshots, the project's CSV, and RMM's allocation logs,
//! read into one form that [`crate::replay`] runs through the allocator.
//!
//! A snapshot's `alloc` event becomes [`EventKind::Alloc`] and its `free_completed` (the
//! moment the block is reusable) [`EventKind::Free`]; `segment_alloc`/`segment_map` and
//! `segment_free`/`segment_unmap` are kept as PyTorch's own segment events, not replayed but
//! used to compute what PyTorch reserved. Blocks freed in the trace without having been
//! allocated in it, and blocks still allocated in the final `segments` that the trace never
//! allocated, were live before the trace began: they are [`DeviceTrace::initial_live`].
//!
//! Trace files are untrusted input. The readers must not panic, abort, recurse on the
//! input or take time or memory beyond a small multiple of the file's size; every malformed
//! file is one short [`TraceError`] naming the file and the byte, line or event, never
//! echoing the file; and a trace they return has figures a replay can add up without
//! overflow ([`MAX_BYTES`], checked in [`validate`]).

mod csv;
pub mod pickle;
mod settings;
mod snapshot;

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::config::Config;

pub use self::csv::MAX_LINE;

/// The largest size, and the largest total of live or reserved bytes, a trace may hold:
/// 256 TiB, far above any device, far below what would overflow a sum of them.
pub const MAX_BYTES: u64 = 1 << 48;

/// What kind of file a trace came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// `torch.cuda.memory._dump_snapshot` pickle.
    PytorchSnapshot,
    /// The project's CSV (`action,ptr,size,stream`).
    Csv,
    /// RMM's `logging_resource_adaptor` CSV.
    RmmLog,
}

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A block of `size` bytes was allocated at `addr`.
    Alloc,
    /// The block at `addr` became reusable.
    Free,
    /// PyTorch reserved a segment of `size` bytes (not replayed).
    SegmentAlloc,
    /// PyTorch released a segment of `size` bytes (not replayed).
    SegmentFree,
    /// PyTorch failed a request of `size` bytes for lack of memory, with `addr` bytes free on
    /// the device (a snapshot's `oom` event; not replayed, judged).
    Oom,
}

/// One event of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Address in the traced process.
    pub addr: u64,
    /// Bytes requested (blocks) or segment bytes.
    pub size: u64,
    /// Stream.
    pub stream: u64,
}

/// A block live before the trace's first event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Address in the traced process.
    pub addr: u64,
    /// Bytes requested.
    pub size: u64,
    /// Stream.
    pub stream: u64,
}

/// The events of one device.
#[derive(Debug, Clone, Default)]
pub struct DeviceTrace {
    /// Device index.
    pub device: usize,
    /// Events in order.
    pub events: Vec<Event>,
    /// Blocks live before the first event.
    pub initial_live: Vec<Block>,
    /// The allocator settings recorded with the trace, when it has any.
    pub settings: Option<Config>,
    /// Device capacity, when the trace knows it.
    pub device_total: Option<u64>,
    /// PyTorch's reserved bytes before the first event (snapshots only).
    pub pytorch_start_reserved: Option<u64>,
    /// The segments PyTorch held before the first event, as (address, size, stream)
    /// (snapshots of fixed segments only): the final segments with the trace's segment
    /// events undone.
    pub initial_segments: Vec<Block>,
    /// What the reader noticed and worked around (a gap in a snapshot's history), one line
    /// each, for the replay to print.
    pub notes: Vec<String>,
}

/// A trace file.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Where it was read from.
    pub path: String,
    /// Its format.
    pub format: TraceFormat,
    /// Devices with events (or live blocks).
    pub devices: Vec<DeviceTrace>,
}

/// Why a trace could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// The file.
    pub path: String,
    /// Line (CSV, 1-based) or event index (snapshot), when the problem has one.
    pub at: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{}: {at}: {}", self.path, one_line(&self.message)),
            None => write!(f, "{}: {}", self.path, one_line(&self.message)),
        }
    }
}

impl std::error::Error for TraceError {}

impl DeviceTrace {
    /// The lower bound on reserved memory: the largest total of live requested bytes at any
    /// point (blocks live at the start included).
    pub fn peak_live_bytes(&self) -> u64 {
        let mut live: u64 = self
            .initial_live
            .iter()
            .fold(0u64, |a, b| a.saturating_add(b.size));
        let mut sizes: HashMap<u64, u64> =
            self.initial_live.iter().map(|b| (b.addr, b.size)).collect();
        let mut peak = live;
        for e in &self.events {
            match e.kind {
                EventKind::Alloc => {
                    live = live.saturating_add(e.size);
                    sizes.insert(e.addr, e.size);
                    peak = peak.max(live);
                }
                EventKind::Free => {
                    if let Some(s) = sizes.remove(&e.addr) {
                        live = live.saturating_sub(s);
                    }
                }
                _ => {}
            }
        }
        peak
    }

    /// Whether the trace carries PyTorch's segment figures (snapshots).
    pub fn has_pytorch_figures(&self) -> bool {
        self.pytorch_start_reserved.is_some()
    }

    /// PyTorch's reserved bytes after each event (`None` without segment figures).
    pub fn pytorch_reserved_series(&self) -> Option<Vec<u64>> {
        let mut r = self.pytorch_start_reserved?;
        Some(
            self.events
                .iter()
                .map(|e| {
                    match e.kind {
                        EventKind::SegmentAlloc => r = r.saturating_add(e.size),
                        EventKind::SegmentFree => r = r.saturating_sub(e.size),
                        _ => {}
                    }
                    r
                })
                .collect(),
        )
    }

    /// PyTorch's peak reserved over the trace: the starting figure plus the running sum of
    /// its segment events.
    pub fn pytorch_peak_reserved(&self) -> Option<u64> {
        let start = self.pytorch_start_reserved?;
        Some(
            self.pytorch_reserved_series()?
                .into_iter()
                .fold(start, u64::max),
        )
    }

    /// PyTorch's segment allocations (`segment_alloc`/`segment_map` events).
    pub fn pytorch_segment_allocs(&self) -> Option<u64> {
        self.pytorch_start_reserved?;
        Some(
            self.events
                .iter()
                .filter(|e| e.kind == EventKind::SegmentAlloc)
                .count() as u64,
        )
    }

    /// Alloc and free events (what a replay runs).
    pub fn block_events(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Alloc | EventKind::Free))
            .count()
    }
}

fn err(path: &str, at: Option<String>, message: impl Into<String>) -> TraceError {
    TraceError {
        path: path.to_string(),
        at,
        message: message.into(),
    }
}

/// A field of the file as an error quotes it: at most 40 characters, escaped.
pub(crate) fn short(s: &str) -> String {
    let mut out: String = s.chars().take(40).flat_map(char::escape_debug).collect();
    if s.chars().nth(40).is_some() {
        out.push_str("...");
    }
    format!("'{out}'")
}

/// A message as one line of at most 300 characters (the guard behind [`short`]).
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(300).is_some() {
        out.push_str("...");
    }
    out
}

/// Check that a trace's figures add up within [`MAX_BYTES`]: the live bytes (blocks live
/// at the start included) and PyTorch's reserved bytes after every event, and that no
/// address is live twice at the start.
///
/// # Errors
/// A [`TraceError`] naming the device and event where a figure goes out of range.
pub fn validate(name: &str, dev: &DeviceTrace) -> Result<(), TraceError> {
    let d = dev.device;
    let mut live: u64 = 0;
    let mut sizes: HashMap<u64, u64> = HashMap::with_capacity(dev.initial_live.len());
    for b in &dev.initial_live {
        if sizes.insert(b.addr, b.size).is_some() {
            return Err(err(
                name,
                Some(format!("device {d}")),
                format!("{:#x} is live twice at the start", b.addr),
            ));
        }
        live = live
            .checked_add(b.size)
            .filter(|&l| l <= MAX_BYTES)
            .ok_or_else(|| {
                err(
                    name,
                    Some(format!("device {d}")),
                    format!("blocks live at the start hold more than {MAX_BYTES} bytes"),
                )
            })?;
    }
    let mut reserved = dev.pytorch_start_reserved.map(i128::from);
    for (i, e) in dev.events.iter().enumerate() {
        let at = || Some(format!("device {d} event {i}"));
        match e.kind {
            EventKind::Alloc => {
                if sizes.insert(e.addr, e.size).is_some() {
                    return Err(err(
                        name,
                        at(),
                        format!("{:#x} allocated while live", e.addr),
                    ));
                }
                live = live
                    .checked_add(e.size)
                    .filter(|&l| l <= MAX_BYTES)
                    .ok_or_else(|| err(name, at(), format!("live bytes exceed {MAX_BYTES}")))?;
            }
            EventKind::Free => {
                if let Some(s) = sizes.remove(&e.addr) {
                    live -= s; // s was added to live when inserted
                }
            }
            EventKind::SegmentAlloc => {
                if let Some(r) = reserved.as_mut() {
                    *r += i128::from(e.size);
                }
            }
            EventKind::SegmentFree => {
                if let Some(r) = reserved.as_mut() {
                    *r = (*r - i128::from(e.size)).max(0);
                }
            }
            EventKind::Oom => {}
        }
        if reserved.is_some_and(|r| r > i128::from(MAX_BYTES)) {
            return Err(err(
                name,
                at(),
                format!("PyTorch's reserved bytes exceed {MAX_BYTES}"),
            ));
        }
    }
    Ok(())
}

fn checked(name: &str, t: Trace) -> Result<Trace, TraceError> {
    for dev in &t.devices {
        validate(name, dev)?;
    }
    Ok(t)
}

/// Read a trace, detecting its format from its content; `device` keeps one device only.
/// A snapshot is read whole (a pickle has to be); a CSV is streamed.
///
/// # Errors
/// A [`TraceError`] naming the file and, where it applies, the byte, line or event index.
pub fn read_trace(path: &Path, device: Option<usize>) -> Result<Trace, TraceError> {
    let name = path.display().to_string();
    let cannot = |e: std::io::Error| err(&name, None, format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut input = BufReader::with_capacity(1 << 16, file);
    let first = input.fill_buf().map_err(cannot)?.first().copied();
    let mut t = if first == Some(0x80) {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut input, &mut data).map_err(cannot)?;
        snapshot::parse_snapshot(&name, &data)?
    } else {
        csv::parse_csv(&name, input)?
    };
    t = checked(&name, t)?;
    if let Some(d) = device {
        t.devices.retain(|x| x.device == d);
        if t.devices.is_empty() {
            return Err(err(&name, None, format!("no events for device {d}")));
        }
    }
    Ok(t)
}

/// Parse trace bytes (see [`read_trace`]); `name` is used in errors.
///
/// # Errors
/// A [`TraceError`].
pub fn parse_trace(name: &str, data: &[u8]) -> Result<Trace, TraceError> {
    let t = if data.first() == Some(&0x80) {
        snapshot::parse_snapshot(name, data)?
    } else {
        csv::parse_csv(name, data)?
    };
    checked(name, t)
}
