//! A simulated device, for tests, benchmarks and trace replay.
//!
//! Segments are real host memory (anonymous `mmap` with `MAP_NORESERVE`, so untouched pages
//! cost nothing) unless the backend is built *virtual*, where addresses are made up and must
//! not be dereferenced (replays of traces bigger than the host). Streams and events are
//! simulated: an event completes when the test says so ([`SimBackend::complete_stream`],
//! [`SimBackend::complete_all`]), or at once in *auto-complete* mode. Failures can be
//! injected, the capacity changed at any time, and every call is counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use parking_lot::Mutex;

use super::{Backend, EventId, MemInfo, StreamId};
use crate::error::BackendError;

/// Counts of every backend call (and the device's use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounts {
    /// `alloc_segment` calls, failed ones included.
    pub alloc_calls: u64,
    /// Successful segment allocations.
    pub allocs: u64,
    /// `free_segment` calls.
    pub frees: u64,
    /// `mem_info` calls.
    pub mem_info: u64,
    /// `record_event` calls.
    pub record_event: u64,
    /// `query_event` calls.
    pub query_event: u64,
    /// `synchronize_event` calls.
    pub synchronize_event: u64,
    /// `release_event` calls.
    pub release_event: u64,
    /// `synchronize_device` calls.
    pub synchronize_device: u64,
    /// `reserve_range` calls.
    pub reserve_range: u64,
    /// `free_range` calls.
    pub free_range: u64,
    /// `map_pages` calls, failed ones included.
    pub map_pages: u64,
    /// `unmap_pages` calls.
    pub unmap_pages: u64,
    /// Bytes in segments and mapped pages now.
    pub used: u64,
    /// Highest `used` seen.
    pub peak_used: u64,
}

#[derive(Debug)]
struct SimEvent {
    device: usize,
    stream: StreamId,
    done: bool,
}

#[derive(Debug)]
struct DeviceState {
    capacity: u64,
    used: u64,
    segments: HashMap<u64, u64>,
    next_virtual: u64,
    /// Reserved address ranges: start → size.
    ranges: BTreeMap<u64, u64>,
    /// Mapped pages (their start addresses).
    pages: HashSet<u64>,
}

/// Page size of the simulated virtual-memory mappings (the granularity CUDA reports for
/// current GPUs).
pub const SIM_GRANULARITY: u64 = 2 << 20;

#[derive(Debug)]
struct Inner {
    devices: Vec<DeviceState>,
    events: HashMap<EventId, SimEvent>,
    next_event: EventId,
    next_stream: StreamId,
    counts: SimCounts,
    /// Fail the alloc call whose 1-based number (counting from when it was set) is this.
    fail_nth: Option<(u64, BackendError)>,
    fail_all: Option<BackendError>,
    fail_nth_map: Option<(u64, BackendError)>,
}

/// A simulated device (or several).
#[derive(Debug)]
pub struct SimBackend {
    inner: Mutex<Inner>,
    backed: bool,
    auto_complete: bool,
}

impl SimBackend {
    /// One device of `capacity` bytes, host-backed, events completing only when told.
    pub fn new(capacity: u64) -> SimBackend {
        SimBackend::with_devices(1, capacity)
    }

    /// `n` devices of `capacity` bytes each.
    pub fn with_devices(n: usize, capacity: u64) -> SimBackend {
        let devices = (0..n.max(1))
            .map(|d| DeviceState {
                capacity,
                used: 0,
                segments: HashMap::new(),
                // Distinct, 2 MiB-aligned ranges per device, far from host mappings.
                next_virtual: 0x7e00_0000_0000 + ((d as u64) << 40),
                ranges: BTreeMap::new(),
                pages: HashSet::new(),
            })
            .collect();
        SimBackend {
            inner: Mutex::new(Inner {
                devices,
                events: HashMap::new(),
                next_event: 1,
                next_stream: 1,
                counts: SimCounts::default(),
                fail_nth: None,
                fail_all: None,
                fail_nth_map: None,
            }),
            backed: true,
            auto_complete: false,
        }
    }

    /// Addresses are made up and never backed by memory (for replaying large traces).
    pub fn virtual_only(mut self) -> SimBackend {
        self.backed = false;
        self
    }

    /// Events complete as soon as they are recorded (for replay).
    pub fn auto_complete(mut self) -> SimBackend {
        self.auto_complete = true;
        self
    }

    /// Whether segment addresses point at real host memory.
    pub fn is_backed(&self) -> bool {
        self.backed
    }

    /// A fresh stream id (never 0, the default stream).
    pub fn create_stream(&self) -> StreamId {
        let mut g = self.inner.lock();
        let s = g.next_stream;
        g.next_stream += 1;
        s
    }

    /// Complete every event recorded so far on `stream` of `device`.
    pub fn complete_stream(&self, device: usize, stream: StreamId) {
        let mut g = self.inner.lock();
        for e in g.events.values_mut() {
            if e.device == device && e.stream == stream {
                e.done = true;
            }
        }
    }

    /// Complete one event.
    pub fn complete_event(&self, event: EventId) {
        if let Some(e) = self.inner.lock().events.get_mut(&event) {
            e.done = true;
        }
    }

    /// Complete every outstanding event.
    pub fn complete_all(&self) {
        for e in self.inner.lock().events.values_mut() {
            e.done = true;
        }
    }

    /// Events recorded and not yet released.
    pub fn live_events(&self) -> usize {
        self.inner.lock().events.len()
    }

    /// Events recorded, not yet complete.
    pub fn incomplete_events(&self) -> usize {
        self.inner
            .lock()
            .events
            .values()
            .filter(|e| !e.done)
            .count()
    }

    /// Make the `n`-th next `alloc_segment` call (1 = the very next) fail with `err`.
    pub fn fail_nth_alloc(&self, n: u64, err: BackendError) {
        self.inner.lock().fail_nth = Some((n.max(1), err));
    }

    /// Make the `n`-th next `map_pages` call (1 = the very next) fail with `err`.
    pub fn fail_nth_map(&self, n: u64, err: BackendError) {
        self.inner.lock().fail_nth_map = Some((n.max(1), err));
    }

    /// Mapped pages of `device`, sorted.
    pub fn mapped_pages(&self, device: usize) -> Vec<u64> {
        let g = self.inner.lock();
        let mut v: Vec<u64> = g
            .devices
            .get(device)
            .map(|d| d.pages.iter().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Make every `alloc_segment` call fail with `err` (or stop doing so with `None`).
    pub fn fail_all_allocs(&self, err: Option<BackendError>) {
        self.inner.lock().fail_all = err;
    }

    /// Change the capacity of `device` (segments already held stay).
    pub fn set_capacity(&self, device: usize, capacity: u64) {
        if let Some(d) = self.inner.lock().devices.get_mut(device) {
            d.capacity = capacity;
        }
    }

    /// Call counts so far (`used`/`peak_used` summed over devices).
    pub fn counts(&self) -> SimCounts {
        let g = self.inner.lock();
        let mut c = g.counts;
        c.used = g.devices.iter().map(|d| d.used).sum();
        c
    }

    /// Reset the call counters (not `used`).
    pub fn reset_counts(&self) {
        let mut g = self.inner.lock();
        let used: u64 = g.devices.iter().map(|d| d.used).sum();
        g.counts = SimCounts {
            used,
            peak_used: used,
            ..SimCounts::default()
        };
    }

    /// Segments currently held on `device`, as (address, size), sorted.
    pub fn segments(&self, device: usize) -> Vec<(u64, u64)> {
        let g = self.inner.lock();
        let mut v: Vec<(u64, u64)> = g
            .devices
            .get(device)
            .map(|d| d.segments.iter().map(|(&a, &s)| (a, s)).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    fn device(g: &mut Inner, device: usize) -> Result<&mut DeviceState, BackendError> {
        g.devices.get_mut(device).ok_or(BackendError::Driver {
            code: 101,
            message: format!("invalid device ordinal {device}"),
        })
    }
}

fn map_host(size: u64) -> Result<u64, BackendError> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
    // result is checked against MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        // The host refused: to the allocator this is the device being full.
        return Err(BackendError::OutOfMemory);
    }
    Ok(p as u64)
}

/// Reserve host address space with no access, aligned to the simulated granularity.
fn reserve_host(size: u64) -> Result<u64, BackendError> {
    let g = SIM_GRANULARITY;
    // SAFETY: an anonymous PROT_NONE reservation with no hint; checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (size + g) as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(BackendError::OutOfMemory);
    }
    let start = p as u64;
    let aligned = start.div_ceil(g) * g;
    // Trim the slack so exactly [aligned, aligned + size) stays reserved.
    // SAFETY: both pieces lie inside the mapping just made and are not used by anyone.
    unsafe {
        if aligned > start {
            libc::munmap(start as *mut libc::c_void, (aligned - start) as usize);
        }
        let end = start + size + g;
        if end > aligned + size {
            libc::munmap(
                (aligned + size) as *mut libc::c_void,
                (end - aligned - size) as usize,
            );
        }
    }
    Ok(aligned)
}

fn protect_host(addr: u64, size: u64, rw: bool) {
    // SAFETY: [addr, addr+size) lies inside a range reserved by `reserve_host` and still
    // reserved (the callers check the page table first).
    unsafe {
        if !rw {
            libc::madvise(
                addr as *mut libc::c_void,
                size as usize,
                libc::MADV_DONTNEED,
            );
        }
        let prot = if rw {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_NONE
        };
        libc::mprotect(addr as *mut libc::c_void, size as usize, prot);
    }
}

fn unmap_host(addr: u64, size: u64) {
    // SAFETY: (addr, size) is exactly a mapping made by `map_host` and removed from the
    // segment table before this call, so nothing else refers to it.
    unsafe {
        libc::munmap(addr as *mut libc::c_void, size as usize);
    }
}

impl Backend for SimBackend {
    fn device_count(&self) -> usize {
        self.inner.lock().devices.len()
    }

    fn alloc_segment(&self, device: usize, size: u64) -> Result<u64, BackendError> {
        let mut g = self.inner.lock();
        g.counts.alloc_calls += 1;
        if let Some(e) = &g.fail_all {
            return Err(e.clone());
        }
        if let Some((n, e)) = g.fail_nth.take() {
            if n <= 1 {
                return Err(e);
            }
            g.fail_nth = Some((n - 1, e));
        }
        let backed = self.backed;
        let d = Self::device(&mut g, device)?;
        if size == 0 || d.used.saturating_add(size) > d.capacity {
            return Err(BackendError::OutOfMemory);
        }
        let addr = if backed {
            map_host(size)?
        } else {
            let a = d.next_virtual;
            // Keep virtual segments 2 MiB aligned and never reuse addresses.
            d.next_virtual += size.div_ceil(2 << 20) * (2 << 20);
            a
        };
        d.used += size;
        d.segments.insert(addr, size);
        let used: u64 = g.devices.iter().map(|d| d.used).sum();
        g.counts.allocs += 1;
        g.counts.peak_used = g.counts.peak_used.max(used);
        Ok(addr)
    }

    fn free_segment(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        let mut g = self.inner.lock();
        g.counts.frees += 1;
        let d = Self::device(&mut g, device)?;
        match d.segments.get(&addr) {
            Some(&s) if s == size => {
                d.segments.remove(&addr);
                d.used -= size;
            }
            _ => {
                return Err(BackendError::Driver {
                    code: 1,
                    message: format!("free of unknown segment {addr:#x} ({size} bytes)"),
                });
            }
        }
        drop(g);
        if self.backed {
            unmap_host(addr, size);
        }
        Ok(())
    }

    fn mem_info(&self, device: usize) -> Result<MemInfo, BackendError> {
        let mut g = self.inner.lock();
        g.counts.mem_info += 1;
        let d = Self::device(&mut g, device)?;
        Ok(MemInfo {
            free: d.capacity.saturating_sub(d.used),
            total: d.capacity,
        })
    }

    fn record_event(&self, device: usize, stream: StreamId) -> Result<EventId, BackendError> {
        let mut g = self.inner.lock();
        g.counts.record_event += 1;
        Self::device(&mut g, device)?;
        let id = g.next_event;
        g.next_event += 1;
        let done = self.auto_complete;
        g.events.insert(
            id,
            SimEvent {
                device,
                stream,
                done,
            },
        );
        Ok(id)
    }

    fn query_event(&self, _device: usize, event: EventId) -> Result<bool, BackendError> {
        let mut g = self.inner.lock();
        g.counts.query_event += 1;
        match g.events.get(&event) {
            Some(e) => Ok(e.done),
            None => Err(BackendError::Driver {
                code: 400,
                message: format!("query of unknown event {event}"),
            }),
        }
    }

    fn synchronize_event(&self, _device: usize, event: EventId) -> Result<(), BackendError> {
        let mut g = self.inner.lock();
        g.counts.synchronize_event += 1;
        match g.events.get_mut(&event) {
            // Waiting for an event means the simulated work finished.
            Some(e) => {
                e.done = true;
                Ok(())
            }
            None => Err(BackendError::Driver {
                code: 400,
                message: format!("synchronize of unknown event {event}"),
            }),
        }
    }

    fn release_event(&self, _device: usize, event: EventId) {
        let mut g = self.inner.lock();
        g.counts.release_event += 1;
        g.events.remove(&event);
    }

    fn synchronize_device(&self, device: usize) -> Result<(), BackendError> {
        let mut g = self.inner.lock();
        g.counts.synchronize_device += 1;
        Self::device(&mut g, device)?;
        for e in g.events.values_mut() {
            if e.device == device {
                e.done = true;
            }
        }
        Ok(())
    }

    fn vmm_granularity(&self, device: usize) -> Result<u64, BackendError> {
        Self::device(&mut self.inner.lock(), device)?;
        Ok(SIM_GRANULARITY)
    }

    fn reserve_range(&self, device: usize, size: u64) -> Result<u64, BackendError> {
        let mut g = self.inner.lock();
        g.counts.reserve_range += 1;
        let backed = self.backed;
        let d = Self::device(&mut g, device)?;
        if size == 0 || !size.is_multiple_of(SIM_GRANULARITY) {
            return Err(invalid(format!(
                "reserve of {size} bytes: not a multiple of the granularity"
            )));
        }
        let addr = if backed {
            reserve_host(size)?
        } else {
            let a = d.next_virtual;
            d.next_virtual += size;
            a
        };
        d.ranges.insert(addr, size);
        Ok(addr)
    }

    fn free_range(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        let mut g = self.inner.lock();
        g.counts.free_range += 1;
        let d = Self::device(&mut g, device)?;
        if d.ranges.get(&addr) != Some(&size) {
            return Err(invalid(format!(
                "free of unknown range {addr:#x} ({size} bytes)"
            )));
        }
        if d.pages.iter().any(|&p| p >= addr && p < addr + size) {
            return Err(invalid(format!(
                "free of range {addr:#x} with pages still mapped"
            )));
        }
        d.ranges.remove(&addr);
        drop(g);
        if self.backed {
            unmap_host(addr, size);
        }
        Ok(())
    }

    fn map_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        let mut g = self.inner.lock();
        g.counts.map_pages += 1;
        if let Some((n, e)) = g.fail_nth_map.take() {
            if n <= 1 {
                return Err(e);
            }
            g.fail_nth_map = Some((n - 1, e));
        }
        let d = Self::device(&mut g, device)?;
        check_pages(d, addr, size)?;
        let pages: Vec<u64> = (addr..addr + size)
            .step_by(SIM_GRANULARITY as usize)
            .collect();
        if pages.iter().any(|p| d.pages.contains(p)) {
            return Err(invalid(format!("map over mapped pages at {addr:#x}")));
        }
        if d.used.saturating_add(size) > d.capacity {
            return Err(BackendError::OutOfMemory);
        }
        d.used += size;
        d.pages.extend(pages);
        let used: u64 = g.devices.iter().map(|d| d.used).sum();
        g.counts.peak_used = g.counts.peak_used.max(used);
        drop(g);
        if self.backed {
            protect_host(addr, size, true);
        }
        Ok(())
    }

    fn unmap_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        let mut g = self.inner.lock();
        g.counts.unmap_pages += 1;
        let d = Self::device(&mut g, device)?;
        check_pages(d, addr, size)?;
        let pages: Vec<u64> = (addr..addr + size)
            .step_by(SIM_GRANULARITY as usize)
            .collect();
        if !pages.iter().all(|p| d.pages.contains(p)) {
            return Err(invalid(format!("unmap of pages not mapped at {addr:#x}")));
        }
        for p in &pages {
            d.pages.remove(p);
        }
        d.used -= size;
        drop(g);
        if self.backed {
            protect_host(addr, size, false);
        }
        Ok(())
    }
}

fn invalid(message: String) -> BackendError {
    BackendError::Driver { code: 1, message }
}

/// `[addr, addr + size)` is page-aligned and inside one reserved range.
fn check_pages(d: &DeviceState, addr: u64, size: u64) -> Result<(), BackendError> {
    if size == 0 || !addr.is_multiple_of(SIM_GRANULARITY) || !size.is_multiple_of(SIM_GRANULARITY) {
        return Err(invalid(format!("{addr:#x}+{size}: not page-aligned")));
    }
    match d.ranges.range(..=addr).next_back() {
        Some((&start, &len)) if addr + size <= start + len => Ok(()),
        _ => Err(invalid(format!(
            "{addr:#x}+{size}: outside every reserved range"
        ))),
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        if !self.backed {
            return;
        }
        let g = self.inner.get_mut();
        for d in &mut g.devices {
            for (&a, &s) in d.segments.iter().chain(d.ranges.iter()) {
                unmap_host(a, s);
            }
            d.segments.clear();
            d.ranges.clear();
        }
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
