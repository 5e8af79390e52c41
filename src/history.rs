//! Event history: what the allocator did, in order, in PyTorch's trace vocabulary
//! (`alloc`, `free_requested`, `free_completed`, `segment_alloc`, `segment_free`, `oom`).
//!
//! Off by default; when off, recording costs one relaxed load. When on, entries go to a
//! bounded ring per device (the oldest are dropped, as PyTorch's `max_entries` does).
//!
//! A caller that keeps call stacks of its own (the PyTorch glue keeps Python's) names the
//! stack of the calls a thread is about to make with [`set_thread_context`]; the entries
//! those calls record carry its id, for the caller to resolve when it reads the history.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::backend::StreamId;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A block was handed out.
    Alloc,
    /// The caller freed a block (it may still wait on stream events).
    FreeRequested,
    /// The block is back in the cache.
    FreeCompleted,
    /// A segment was obtained from the driver.
    SegmentAlloc,
    /// A segment was returned to the driver.
    SegmentFree,
    /// Pages were mapped into an expandable segment (`size` bytes at `addr`).
    SegmentMap,
    /// Pages of an expandable segment were unmapped.
    SegmentUnmap,
    /// An allocation failed for lack of memory (`size` is the request).
    Oom,
}

impl Action {
    /// The name PyTorch's snapshots use.
    pub fn name(self) -> &'static str {
        match self {
            Action::Alloc => "alloc",
            Action::FreeRequested => "free_requested",
            Action::FreeCompleted => "free_completed",
            Action::SegmentAlloc => "segment_alloc",
            Action::SegmentFree => "segment_free",
            Action::SegmentMap => "segment_map",
            Action::SegmentUnmap => "segment_unmap",
            Action::Oom => "oom",
        }
    }
}

/// One recorded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What happened.
    pub action: Action,
    /// Block or segment address (0 for `Oom`).
    pub addr: u64,
    /// Requested bytes for block events, segment bytes for segment events.
    pub size: u64,
    /// Stream concerned.
    pub stream: StreamId,
    /// Wall-clock time, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The recording thread's context id at the time ([`set_thread_context`]; 0: none).
    pub context: u64,
}

thread_local! {
    static CONTEXT: Cell<u64> = const { Cell::new(0) };
}

/// Tag the entries this thread records from now on with `id` (0: no context), until the
/// next call.
pub fn set_thread_context(id: u64) {
    CONTEXT.with(|c| c.set(id));
}

#[derive(Debug, Default)]
pub(crate) struct History {
    on: AtomicBool,
    ring: Mutex<(VecDeque<Entry>, usize)>,
}

impl History {
    pub(crate) fn set(&self, enabled: bool, max_entries: usize) {
        let mut g = self.ring.lock();
        g.1 = max_entries.max(1);
        while g.0.len() > g.1 {
            g.0.pop_front();
        }
        self.on.store(enabled, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn record(&self, action: Action, addr: u64, size: u64, stream: StreamId) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        self.push(action, addr, size, stream);
    }

    #[cold]
    fn push(&self, action: Action, addr: u64, size: u64, stream: StreamId) {
        let time_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut g = self.ring.lock();
        if g.0.len() >= g.1 {
            g.0.pop_front();
        }
        g.0.push_back(Entry {
            action,
            addr,
            size,
            stream,
            time_us,
            context: CONTEXT.with(Cell::get),
        });
    }

    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.ring.lock().0.iter().copied().collect()
    }
}
