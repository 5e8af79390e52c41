//! Allocation traces: PyTorch memory snapshots, the project's CSV, and RMM's allocation logs,
//! read into one form that [`crate::replay`] runs through the allocator.
//!
//! A snapshot's `alloc` event becomes [`EventKind::Alloc`] and its `free_completed` (the
//! moment the block is reusable) [`EventKind::Free`]; `segment_alloc`/`segment_map` and
//! `segment_free`/`segment_unmap` are kept as PyTorch's own segment events, not replayed but
//! used to compute what PyTorch reserved. Blocks freed in the trace without having been
//! allocated in it, and blocks still allocated in the final `segments` that the trace never
//! allocated, were live before the trace began: they are [`DeviceTrace::initial_live`].

pub mod pickle;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use crate::config::{Config, ROUNDUP_POWER2_INTERVALS};
use pickle::PVal;

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
            Some(at) => write!(f, "{}: {at}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for TraceError {}

impl DeviceTrace {
    /// The lower bound on reserved memory: the largest total of live requested bytes at any
    /// point (blocks live at the start included).
    pub fn peak_live_bytes(&self) -> u64 {
        let mut live: u64 = self.initial_live.iter().map(|b| b.size).sum();
        let mut sizes: HashMap<u64, u64> =
            self.initial_live.iter().map(|b| (b.addr, b.size)).collect();
        let mut peak = live;
        for e in &self.events {
            match e.kind {
                EventKind::Alloc => {
                    live += e.size;
                    sizes.insert(e.addr, e.size);
                    peak = peak.max(live);
                }
                EventKind::Free => {
                    if let Some(s) = sizes.remove(&e.addr) {
                        live -= s;
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
                        EventKind::SegmentAlloc => r += e.size,
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

/// Read a trace, detecting its format from its content; `device` keeps one device only.
///
/// # Errors
/// A [`TraceError`] naming the file and, where it applies, the line or event index.
pub fn read_trace(path: &Path, device: Option<usize>) -> Result<Trace, TraceError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| err(&name, None, format!("cannot read: {e}")))?;
    let mut t = parse_trace(&name, &data)?;
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
    if data.first() == Some(&0x80) {
        return parse_snapshot(name, data);
    }
    let text = std::str::from_utf8(data).map_err(|_| {
        err(
            name,
            None,
            "neither a pickle snapshot nor a text (CSV) trace",
        )
    })?;
    let header = text.lines().next().unwrap_or("").to_ascii_lowercase();
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    if cols.contains(&"thread") && cols.contains(&"action") && cols.contains(&"pointer") {
        parse_csv(name, text, &RMM_LOG)
    } else if cols.contains(&"action") && cols.contains(&"ptr") {
        parse_csv(name, text, &PROJECT_CSV)
    } else {
        Err(err(
            name,
            Some("line 1".into()),
            "not a trace: expected a pickle snapshot, a CSV with columns action,ptr,size,stream, \
             or an RMM log (Thread,Time,Action,Pointer,Size,Stream)",
        ))
    }
}

fn parse_int(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Turn a CSV-like list of (line, alloc?, addr, size, stream) into one device's trace,
/// checking that frees match live allocations.
fn build_from_rows(
    name: &str,
    rows: impl Iterator<Item = Result<(usize, bool, u64, u64, u64), TraceError>>,
) -> Result<DeviceTrace, TraceError> {
    let mut live: HashMap<u64, u64> = HashMap::new();
    let mut events = Vec::new();
    for row in rows {
        let (line, alloc, addr, size, stream) = row?;
        let at = || Some(format!("line {line}"));
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
    Ok(DeviceTrace {
        device: 0,
        events,
        ..DeviceTrace::default()
    })
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
        _ => Err(format!("unknown action '{a}' (alloc or free)")),
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
            "unknown action '{a}' (allocate, free, allocate failure)"
        )),
    },
    free_size_optional: false,
};

fn parse_csv(name: &str, text: &str, dialect: &CsvDialect) -> Result<Trace, TraceError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| err(name, Some("line 1".into()), e.to_string()))?
        .clone();
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
    let rows = rdr.records().enumerate().filter_map(|(i, rec)| {
        let line = i + 2;
        let at = || Some(format!("line {line}"));
        let row = (|| {
            let rec = rec.map_err(|e| err(name, at(), e.to_string()))?;
            let field = |c: usize| rec.get(c).unwrap_or("");
            let Some(alloc) = (dialect.classify)(&field(ca).to_ascii_lowercase())
                .map_err(|m| err(name, at(), m))?
            else {
                return Ok(None);
            };
            let addr = parse_int(field(cp))
                .ok_or_else(|| err(name, at(), format!("bad {} '{}'", dialect.ptr, field(cp))))?;
            let size = if field(cs).is_empty() && !alloc && dialect.free_size_optional {
                0
            } else {
                parse_int(field(cs)).ok_or_else(|| {
                    err(name, at(), format!("bad {} '{}'", dialect.size, field(cs)))
                })?
            };
            let stream = match cst.map(field) {
                None | Some("") => 0,
                Some(s) => parse_int(s)
                    .ok_or_else(|| err(name, at(), format!("bad {} '{s}'", dialect.stream)))?,
            };
            Ok(Some((line, alloc, addr, size, stream)))
        })();
        row.transpose()
    });
    let dev = build_from_rows(name, rows)?;
    Ok(Trace {
        path: name.to_string(),
        format: dialect.format,
        devices: vec![dev],
    })
}

fn int_of(v: &PVal, key: &str) -> Option<u64> {
    v.get(key).and_then(|x| x.as_i64()).map(|i| i as u64)
}

/// The allocator settings a snapshot recorded (a dict in PyTorch ≥ 2.x), as a [`Config`].
fn settings_of(v: &PVal) -> Option<Config> {
    let s = v.get("allocator_settings")?;
    if s.pairs()?.is_empty() {
        return None;
    }
    let mut cfg = Config::default();
    if let Some(m) = s.get("max_split_size").and_then(|x| x.as_i64())
        && m > 0
    {
        cfg.max_split_size = m as u64;
    }
    if let Some(m) = s
        .get("max_non_split_rounding_size")
        .and_then(|x| x.as_i64())
        && m > 0
    {
        cfg.max_non_split_rounding = m as u64;
    }
    if let Some(g) = s
        .get("garbage_collection_threshold")
        .and_then(|x| x.as_f64())
        && g > 0.0
        && g < 1.0
    {
        cfg.garbage_collection_threshold = g;
    }
    if let Some(PVal::Bool(true)) = s.get("expandable_segments") {
        cfg.expandable_segments = true;
    }
    if let Some(r) = s.get("roundup_power2_divisions").and_then(|x| x.pairs()) {
        for (k, val) in r {
            let bound = k
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .or_else(|| k.as_i64().map(|i| i as u64));
            if let (Some(b), Some(d)) = (bound, val.as_i64())
                && b.is_power_of_two()
            {
                let idx = (b.trailing_zeros() as usize).min(ROUNDUP_POWER2_INTERVALS - 1);
                cfg.roundup_power2_divisions[idx] = d.max(0) as u64;
            }
        }
    }
    Some(cfg)
}

fn parse_snapshot(name: &str, data: &[u8]) -> Result<Trace, TraceError> {
    let root = pickle::load(data).map_err(|e| err(name, None, format!("bad pickle: {e}")))?;
    let traces = root
        .get("device_traces")
        .and_then(|t| t.items())
        .ok_or_else(|| err(name, None, "not a memory snapshot: no 'device_traces' list"))?;
    let segments = root
        .get("segments")
        .and_then(|s| s.items())
        .ok_or_else(|| err(name, None, "not a memory snapshot: no 'segments' list"))?;
    let settings = settings_of(&root);
    let mut devices = Vec::new();
    for (d, entries) in traces.iter().enumerate() {
        let entries = entries
            .items()
            .ok_or_else(|| err(name, None, format!("device_traces[{d}] is not a list")))?;
        let mut events = Vec::with_capacity(entries.len());
        let mut live: HashMap<u64, u64> = HashMap::new();
        let mut initial_live = Vec::new();
        let mut net_segments: i128 = 0;
        // Expandable segments map pages: their segment events are not whole segments.
        let mut maps_pages = false;
        for (i, e) in entries.iter().enumerate() {
            let at = || Some(format!("device {d} event {i}"));
            let action = e
                .get("action")
                .and_then(|a| a.as_str())
                .ok_or_else(|| err(name, at(), "event without 'action'"))?;
            let addr = int_of(e, "addr").unwrap_or(0);
            let size = int_of(e, "size").unwrap_or(0);
            let stream = int_of(e, "stream").unwrap_or(0);
            let kind = match &*action {
                "alloc" => {
                    if live.insert(addr, size).is_some() {
                        return Err(err(name, at(), format!("{addr:#x} allocated while live")));
                    }
                    EventKind::Alloc
                }
                "free_completed" => {
                    if live.remove(&addr).is_none() {
                        // Allocated before the trace began.
                        initial_live.push(Block { addr, size, stream });
                    }
                    EventKind::Free
                }
                "segment_alloc" | "segment_map" => {
                    maps_pages |= &*action == "segment_map";
                    net_segments += i128::from(size);
                    EventKind::SegmentAlloc
                }
                "segment_free" | "segment_unmap" => {
                    net_segments -= i128::from(size);
                    EventKind::SegmentFree
                }
                _ => continue, // free_requested, oom, snapshot, ...
            };
            events.push(Event {
                kind,
                addr,
                size,
                stream,
            });
        }
        let mut total: u64 = 0;
        let mut held: BTreeMap<u64, Block> = BTreeMap::new();
        for s in &segments {
            if int_of(s, "device").unwrap_or(0) as usize != d {
                continue;
            }
            let seg_size = int_of(s, "total_size").unwrap_or(0);
            total += seg_size;
            let seg_stream = int_of(s, "stream").unwrap_or(0);
            let seg_addr = int_of(s, "address").unwrap_or(0);
            held.insert(
                seg_addr,
                Block {
                    addr: seg_addr,
                    size: seg_size,
                    stream: seg_stream,
                },
            );
            for b in s.get("blocks").and_then(|b| b.items()).unwrap_or_default() {
                let state = b.get("state").and_then(|x| x.as_str());
                let active = matches!(
                    state.as_deref(),
                    Some("active_allocated") | Some("active_pending_free")
                );
                let addr = int_of(&b, "address").unwrap_or(0);
                if active && !live.contains_key(&addr) {
                    let req = int_of(&b, "requested_size").unwrap_or(0);
                    let size = if req > 0 {
                        req
                    } else {
                        int_of(&b, "size").unwrap_or(0)
                    };
                    initial_live.push(Block {
                        addr,
                        size,
                        stream: seg_stream,
                    });
                }
            }
        }
        if events.is_empty() && initial_live.is_empty() {
            continue;
        }
        let start = i128::from(total) - net_segments;
        let expandable = settings.as_ref().is_some_and(|c| c.expandable_segments) || maps_pages;
        let initial_segments = if expandable {
            Vec::new()
        } else {
            for e in events.iter().rev() {
                match e.kind {
                    EventKind::SegmentAlloc => {
                        held.remove(&e.addr);
                    }
                    EventKind::SegmentFree => {
                        held.insert(
                            e.addr,
                            Block {
                                addr: e.addr,
                                size: e.size,
                                stream: e.stream,
                            },
                        );
                    }
                    _ => {}
                }
            }
            held.into_values().collect()
        };
        devices.push(DeviceTrace {
            device: d,
            events,
            initial_live,
            settings: settings.clone(),
            device_total: None,
            pytorch_start_reserved: Some(start.max(0) as u64),
            initial_segments,
        });
    }
    Ok(Trace {
        path: name.to_string(),
        format: TraceFormat::PytorchSnapshot,
        devices,
    })
}
