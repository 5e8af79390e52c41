//! Replay a trace through the allocator on a simulated device and report what it reserved,
//! beside what PyTorch reserved on the same workload.
//!
//! The figures a replay reports must be possible: counters use checked arithmetic (a block's
//! bytes leave the live total exactly as they entered it), and [`check_figures`] fails the
//! replay loudly rather than print a figure no device could show. This module must not
//! second-guess the trace reader's checks by silently skipping events.

use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::allocator::CachingAllocator;
use crate::backend::SimBackend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::policy::{SMALL_BUFFER as SMALL_SEGMENT, SMALL_SIZE};
use crate::trace::{DeviceTrace, EventKind, MAX_BYTES, Trace};

/// Default simulated capacity when the trace does not know the device's.
pub const DEFAULT_CAPACITY: u64 = 80 << 30;

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Configuration; `None`: the trace's recorded settings, else the defaults.
    pub config: Option<Config>,
    /// Simulated capacity; `None`: the trace's device total, else [`DEFAULT_CAPACITY`].
    pub capacity: Option<u64>,
    /// Keep a sampled series (for plots) of about this many buckets, each as its lowest and
    /// highest values (so peaks survive); 0: none.
    pub series_points: usize,
    /// Record the allocator's event history (for `--dump-snapshot`).
    pub record_history: bool,
    /// Do not call `empty_cache` where the traced program released PyTorch's segments
    /// (`segment_free` events, the program's own `torch.cuda.empty_cache()` calls), which a
    /// replay does by default.
    pub ignore_empty_cache: bool,
    /// Start from an empty cache. By default a replay with fixed segments starts from the
    /// cache PyTorch held when the trace began (its segments, rebuilt by allocating and
    /// freeing a block of each one's size), so both allocators start alike.
    pub cold_start: bool,
    /// Also report cudalloc's memory summary at the moment of its peak reserved bytes (the
    /// replay runs a second time, up to that moment).
    pub summary_at_peak: bool,
}

impl ReplayOptions {
    /// The configuration a replay of `dev` uses: the one given, else the trace's recorded
    /// settings, else the defaults.
    pub fn config_for(&self, dev: &DeviceTrace) -> Config {
        match &self.config {
            Some(c) => c.clone(),
            None => dev.settings.clone().unwrap_or_default(),
        }
    }

    /// The simulated capacity of a replay of `dev`: the one given, else the trace's device
    /// total, else [`DEFAULT_CAPACITY`].
    pub fn capacity_for(&self, dev: &DeviceTrace) -> u64 {
        self.capacity
            .or(dev.device_total)
            .unwrap_or(DEFAULT_CAPACITY)
    }
}

/// What a reference allocator (PyTorch's, [`crate::reference`]) did on the same replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Always "pytorch" (the only reference engine).
    pub engine: &'static str,
    /// `torch.__version__` without its local part (e.g. "2.15.0").
    pub torch_version: String,
    /// `reserved_bytes.all.peak`.
    pub peak_reserved: u64,
    /// `num_device_alloc`, after the warm start.
    pub device_allocs: u64,
    /// Allocations that raised `torch.OutOfMemoryError`.
    pub ooms: u64,
    /// Alloc and free operations replayed.
    pub events: u64,
    /// Seconds of the child's replay loop.
    pub seconds: f64,
}

impl Reference {
    /// Replayed events per second in the child.
    pub fn events_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// An out-of-memory event of the trace (PyTorch failed a request), judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomEvent {
    /// Its index among the trace's events.
    pub event: usize,
    /// The request that failed.
    pub request: u64,
    /// Bytes live in the trace then.
    pub live: u64,
    /// The driver's free bytes then, as PyTorch recorded them.
    pub device_free: u64,
    /// PyTorch's reserved bytes then, when the trace has its segment figures.
    pub pytorch_reserved: Option<u64>,
    /// Shortage (no setting helps), fragmentation (the memory was there) or unknown.
    pub verdict: crate::explain::Verdict,
    /// For a shortage, how many bytes the program must give up at least.
    pub short_by: Option<u64>,
}

/// One sample of the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Event index.
    pub event: usize,
    /// Live requested bytes.
    pub live: u64,
    /// cudalloc's reserved bytes.
    pub reserved: u64,
    /// PyTorch's reserved bytes, when known.
    pub pytorch_reserved: Option<u64>,
}

/// What a replay measured.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Trace path.
    pub trace: String,
    /// Device index in the trace.
    pub device: usize,
    /// The configuration used, as a `CUDALLOC_CONF` string ("" = defaults).
    pub config: String,
    /// The simulated device's capacity.
    pub capacity: u64,
    /// Alloc and free events replayed (blocks live at the start included as allocs).
    pub events: u64,
    /// Peak live bytes: the lower bound on any allocator's reserved memory.
    pub peak_allocated: u64,
    /// cudalloc's peak reserved bytes.
    pub peak_reserved: u64,
    /// PyTorch's peak reserved bytes on the traced run, when the trace has its segments.
    pub pytorch_peak_reserved: Option<u64>,
    /// cudalloc's device (segment) allocations.
    pub device_allocs: u64,
    /// PyTorch's segment allocations in the trace, when known.
    pub pytorch_segment_allocs: Option<u64>,
    /// Allocations that failed for lack of (simulated) memory.
    pub ooms: u64,
    /// Wall time of the replay loop.
    pub seconds: f64,
    /// Sampled series (empty unless asked for).
    pub series: Vec<Point>,
    /// The snapshot pickle after the replay (when history was recorded).
    pub snapshot: Option<Vec<u8>>,
    /// Segments of PyTorch's cache at the trace's start that the replay started from (0:
    /// an empty cache).
    pub warm_segments: usize,
    /// The event at which cudalloc's reserved bytes last rose to their peak (`None`: before
    /// the first event, while the blocks live at the start were allocated).
    pub peak_event: Option<usize>,
    /// cudalloc's `memory_summary()` at that moment, when asked for.
    pub summary_at_peak: Option<String>,
    /// Notes (settings that could not be applied).
    pub notes: Vec<String>,
    /// The trace's out-of-memory events, judged (snapshots record them as `oom`).
    pub oom_events: Vec<OomEvent>,
    /// The same replay through PyTorch's own allocator, when asked for
    /// ([`crate::reference`]; [`replay_device`] leaves it `None`).
    pub reference: Option<Reference>,
}

impl ReplayReport {
    /// Overhead of peak reserved over the lower bound, in percent.
    pub fn overhead_pct(reserved: u64, lower: u64) -> f64 {
        if lower == 0 {
            0.0
        } else {
            (reserved as f64 / lower as f64 - 1.0) * 100.0
        }
    }

    /// Replayed events per second.
    pub fn events_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Replay one device of a trace. `progress` is called now and then with the number of
/// events done.
///
/// # Errors
/// A configuration the allocator refuses; an internal error.
pub fn replay_device(
    trace: &Trace,
    dev: &DeviceTrace,
    opts: &ReplayOptions,
    progress: impl FnMut(u64),
) -> Result<ReplayReport> {
    let (mut report, _) = replay_until(trace, dev, opts, None, progress)?;
    if opts.summary_at_peak {
        let stop = Some(report.peak_event);
        let (_, alloc) = replay_until(trace, dev, opts, stop, |_| {})?;
        report.summary_at_peak = Some(alloc.memory_summary(0)?);
    }
    Ok(report)
}

/// [`replay_device`], stopping after event `stop` when given (`Some(None)`: before the
/// first event); returns the allocator as the replay left it.
fn replay_until(
    trace: &Trace,
    dev: &DeviceTrace,
    opts: &ReplayOptions,
    stop: Option<Option<usize>>,
    mut progress: impl FnMut(u64),
) -> Result<(ReplayReport, CachingAllocator<SimBackend>)> {
    let notes = dev.notes.clone();
    let config = opts.config_for(dev);
    let capacity = opts.capacity_for(dev);
    let backend = SimBackend::new(capacity).virtual_only().auto_complete();
    let alloc = CachingAllocator::new(backend, config.clone())?;
    if opts.record_history {
        alloc.record_history(true, usize::MAX);
    }
    let py_series = dev.pytorch_reserved_series();
    let total_events = (dev.initial_live.len() + dev.events.len()) as u64;
    let step = dev
        .events
        .len()
        .checked_div(opts.series_points)
        .map_or(usize::MAX, |s| s.max(1));
    // The trace's address → the replay's pointer and the bytes it added to `live`.
    let mut map: FxHashMap<u64, (u64, u64)> = FxHashMap::default();
    map.reserve(dev.initial_live.len() + 1024);
    let mut live: u64 = 0;
    let mut peak_live: u64 = 0;
    let mut peak_reserved: u64 = 0;
    let mut ooms = 0u64;
    let mut replayed = 0u64;
    let mut series = Vec::new();
    // The lowest and highest values of the series bucket being filled.
    let mut bucket: Option<(Point, Point)> = None;
    let started = Instant::now();

    let mut warm_segments = 0;
    if warm_start(opts, &config) {
        let mut warm = Vec::with_capacity(dev.initial_segments.len());
        for s in &dev.initial_segments {
            match alloc.allocate_raw(0, warm_block_size(s.size), s.stream) {
                Ok(p) => warm.push(p),
                Err(Error::OutOfMemory(_)) => ooms += 1,
                Err(e) => return Err(e),
            }
        }
        warm_segments = warm.len();
        for (p, s) in warm.into_iter().zip(&dev.initial_segments) {
            alloc.free_raw_on(0, p, Some(s.stream))?;
        }
    }
    let warm_device_allocs = alloc.memory_stats(0)?.num_device_alloc;
    let mut do_alloc = |addr: u64,
                        size: u64,
                        stream: u64,
                        map: &mut FxHashMap<u64, (u64, u64)>,
                        live: &mut u64|
     -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        if map.contains_key(&addr) {
            return Err(Error::Internal(format!(
                "trace address {addr:#x} allocated while live in the replay"
            )));
        }
        match alloc.allocate_raw(0, size, stream) {
            Ok(p) => {
                map.insert(addr, (p, size));
                *live = live
                    .checked_add(size)
                    .ok_or_else(|| Error::Internal("live bytes overflow in the replay".into()))?;
                Ok(())
            }
            Err(Error::OutOfMemory(_)) => {
                ooms += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    for b in &dev.initial_live {
        do_alloc(b.addr, b.size, b.stream, &mut map, &mut live)?;
        replayed += 1;
    }
    peak_live = peak_live.max(live);
    peak_reserved = peak_reserved.max(alloc.reserved_bytes(0));
    let mut peak_event = None;
    let mut prev_kind = None;
    // Live bytes of the trace itself (whether or not this replay served them), for judging
    // its out-of-memory events; kept only when it has some.
    let judge_ooms = dev.events.iter().any(|e| e.kind == EventKind::Oom);
    let mut trace_sizes: FxHashMap<u64, u64> = FxHashMap::default();
    let mut trace_live: u64 = dev.initial_live.iter().map(|b| b.size).sum();
    if judge_ooms {
        trace_sizes.extend(dev.initial_live.iter().map(|b| (b.addr, b.size)));
    }
    let mut oom_events = Vec::new();
    let events = if stop == Some(None) {
        &dev.events[..0]
    } else {
        &dev.events[..]
    };
    for (i, e) in events.iter().enumerate() {
        match e.kind {
            // PyTorch returns segments outside an out-of-memory retry only when the program
            // calls empty_cache (or under garbage collection): replay the call, once per
            // burst of releases.
            EventKind::SegmentFree
                if !opts.ignore_empty_cache && prev_kind != Some(EventKind::SegmentFree) =>
            {
                alloc.empty_cache(Some(0))?;
            }
            EventKind::Oom => {
                let pytorch_reserved = py_series.as_ref().map(|s| s[i]);
                let (verdict, short_by) = match pytorch_reserved {
                    Some(r) => crate::explain::judge(trace_live, e.size, e.addr, r, 0),
                    None => (crate::explain::Verdict::Unknown, None),
                };
                oom_events.push(OomEvent {
                    event: i,
                    request: e.size,
                    live: trace_live,
                    device_free: e.addr,
                    pytorch_reserved,
                    verdict,
                    short_by,
                });
                // Not an allocator call: it does not break a burst of segment releases.
                continue;
            }
            EventKind::Alloc => {
                if judge_ooms && e.size > 0 {
                    trace_sizes.insert(e.addr, e.size);
                    trace_live = trace_live.saturating_add(e.size);
                }
                do_alloc(e.addr, e.size, e.stream, &mut map, &mut live)?;
                peak_live = peak_live.max(live);
                let reserved = alloc.reserved_bytes(0);
                if reserved > peak_reserved {
                    peak_reserved = reserved;
                    peak_event = Some(i);
                }
                replayed += 1;
            }
            EventKind::Free => {
                if let Some(s) = trace_sizes.remove(&e.addr) {
                    trace_live = trace_live.saturating_sub(s);
                }
                if let Some((p, size)) = map.remove(&e.addr) {
                    // The trace's stream is a hint: a block freed on another stream than
                    // its own is found by a search.
                    alloc.free_raw_on(0, p, Some(e.stream))?;
                    // `size` entered `live` when the block did.
                    live -= size;
                }
                replayed += 1;
            }
            _ => {}
        }
        prev_kind = Some(e.kind);
        if step != usize::MAX {
            // Each bucket of `step` events keeps its lowest and highest values, so a peak
            // between two samples is never lost from the plot.
            let now = Point {
                event: i,
                live,
                reserved: alloc.reserved_bytes(0),
                pytorch_reserved: py_series.as_ref().map(|s| s[i]),
            };
            let (lo, hi) = bucket.get_or_insert((now, now));
            lo.live = lo.live.min(now.live);
            lo.reserved = lo.reserved.min(now.reserved);
            lo.pytorch_reserved = lo.pytorch_reserved.min(now.pytorch_reserved);
            hi.live = hi.live.max(now.live);
            hi.reserved = hi.reserved.max(now.reserved);
            hi.pytorch_reserved = hi.pytorch_reserved.max(now.pytorch_reserved);
            if (i + 1).is_multiple_of(step) || i + 1 == events.len() {
                let (mut lo, mut hi) = bucket.take().unwrap_or((now, now));
                lo.event = i;
                hi.event = i;
                series.push(lo);
                series.push(hi);
            }
        }
        if i.is_multiple_of(65536) {
            progress(i as u64 + dev.initial_live.len() as u64);
        }
        if stop == Some(Some(i)) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress(total_events);
    let stats = alloc.memory_stats(0)?;
    let snapshot = if opts.record_history {
        Some(alloc.snapshot_pickle()?)
    } else {
        None
    };
    let report = ReplayReport {
        trace: trace.path.clone(),
        device: dev.device,
        config: config.to_string(),
        capacity,
        events: replayed,
        peak_allocated: dev.peak_live_bytes().max(peak_live),
        peak_reserved: peak_reserved.max(stats.segments.reserved_bytes[0].peak as u64),
        pytorch_peak_reserved: dev.pytorch_peak_reserved(),
        device_allocs: stats.num_device_alloc - warm_device_allocs,
        pytorch_segment_allocs: dev.pytorch_segment_allocs(),
        ooms,
        seconds,
        series,
        snapshot,
        warm_segments,
        peak_event,
        summary_at_peak: None,
        notes,
        oom_events,
        reference: None,
    };
    check_figures(&report, capacity)?;
    Ok((report, alloc))
}

/// Fail a replay whose figures no device could show: reserved beyond the simulated
/// capacity, live or PyTorch's reserved bytes beyond [`MAX_BYTES`].
///
/// # Errors
/// [`Error::Internal`] naming the figure.
pub fn check_figures(r: &ReplayReport, capacity: u64) -> Result<()> {
    let bad = |what: String| {
        Err(Error::Internal(format!(
            "impossible replay figure ({what}); please report this trace"
        )))
    };
    if r.peak_reserved > capacity {
        return bad(format!(
            "peak reserved {} above the capacity {capacity}",
            r.peak_reserved
        ));
    }
    if r.peak_allocated > MAX_BYTES {
        return bad(format!("peak live {} above {MAX_BYTES}", r.peak_allocated));
    }
    if let Some(p) = r.pytorch_peak_reserved.filter(|&p| p > MAX_BYTES) {
        return bad(format!("PyTorch's peak reserved {p} above {MAX_BYTES}"));
    }
    Ok(())
}

/// Whether a replay starts from the cache PyTorch held when the trace began (fixed segments
/// only: expandable segments always start empty).
fn warm_start(opts: &ReplayOptions, config: &Config) -> bool {
    !opts.cold_start && !config.expandable_segments
}

/// Whether a replay of `dev` under `opts` really starts warm: fixed segments, not told to
/// start cold, and a cache at the trace's start to rebuild (otherwise it is the empty start).
pub fn starts_warm(dev: &DeviceTrace, opts: &ReplayOptions) -> bool {
    warm_start(opts, &opts.config_for(dev)) && !dev.initial_segments.is_empty()
}

/// The block that rebuilds one of PyTorch's starting segments: a block of a segment's size
/// gets a segment of that size (a small-pool segment for 2 MiB and under); freed, it is cached
/// as PyTorch's was.
fn warm_block_size(segment: u64) -> u64 {
    if segment <= SMALL_SEGMENT {
        SMALL_SIZE
    } else {
        segment
    }
}

/// One operation of a replay, as another allocator replays it ([`script`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Allocate `size` bytes on `stream` for the trace's block at `addr` (replacing a block
    /// still live at that address; size 0 allocates nothing).
    Alloc {
        /// The trace's address, the block's name.
        addr: u64,
        /// Bytes.
        size: u64,
        /// Stream id.
        stream: u64,
    },
    /// Free the block allocated for `addr`, if its allocation succeeded.
    Free {
        /// The trace's address.
        addr: u64,
    },
    /// Release every fully free cached segment.
    EmptyCache,
    /// Allocate a block that rebuilds one of the segments PyTorch held at the start.
    Warm {
        /// Bytes.
        size: u64,
        /// Stream id.
        stream: u64,
    },
    /// Free every [`Op::Warm`] block; device allocations are counted from here.
    WarmDone,
}

/// The operations [`replay_device`] performs on its allocator, in its order, for another
/// allocator to perform on the same events: the warm start (unless cold or expandable), the
/// blocks live at the start, then the trace's allocs and frees with an `empty_cache` at
/// each burst of PyTorch's segment releases (unless ignored).
pub fn script(dev: &DeviceTrace, opts: &ReplayOptions, config: &Config) -> Vec<Op> {
    let mut ops = Vec::with_capacity(
        dev.initial_segments.len() + dev.initial_live.len() + dev.events.len() + 1,
    );
    if warm_start(opts, config) {
        for s in &dev.initial_segments {
            ops.push(Op::Warm {
                size: warm_block_size(s.size),
                stream: s.stream,
            });
        }
    }
    ops.push(Op::WarmDone);
    for b in &dev.initial_live {
        ops.push(Op::Alloc {
            addr: b.addr,
            size: b.size,
            stream: b.stream,
        });
    }
    let mut prev_kind = None;
    for e in &dev.events {
        match e.kind {
            EventKind::SegmentFree
                if !opts.ignore_empty_cache && prev_kind != Some(EventKind::SegmentFree) =>
            {
                ops.push(Op::EmptyCache);
            }
            EventKind::Alloc => ops.push(Op::Alloc {
                addr: e.addr,
                size: e.size,
                stream: e.stream,
            }),
            EventKind::Free => ops.push(Op::Free { addr: e.addr }),
            // Judged, not replayed: it does not break a burst of segment releases.
            EventKind::Oom => continue,
            _ => {}
        }
        prev_kind = Some(e.kind);
    }
    ops
}
