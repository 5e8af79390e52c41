//! The raw, pointer-based API the C layer uses: allocate and free by address, look a pointer
//! up, `record_stream` by pointer. Each stream keeps the addresses of its raw allocations
//! under its own lock ([`Pools`]), so a malloc or a free that names the right stream takes one
//! lock; a pointer whose stream is not known is looked for stream by stream. The blocks are
//! the policy's.

use super::*;
use malloc::Raw;

impl<B: Backend> CachingAllocator<B> {
    /// Allocate and return the bare device address; free it with
    /// [`CachingAllocator::free_raw`] (for the C layer).
    ///
    /// # Errors
    /// As [`CachingAllocator::malloc_on`].
    #[inline]
    pub fn allocate_raw(&self, device: usize, size: u64, stream: StreamId) -> Result<u64> {
        let dev = self.dev(device)?;
        let (_, stream_slot) = dev.slot(stream)?;
        let (_, ptr) = self.alloc_block(dev, stream_slot, size, Raw::Yes)?;
        Ok(ptr)
    }

    /// Free an address returned by [`CachingAllocator::allocate_raw`].
    ///
    /// # Errors
    /// [`Error::UnknownPointer`] for an address not handed out (or already freed) on that
    /// device — nothing is changed then; backend errors.
    pub fn free_raw(&self, device: usize, ptr: u64) -> Result<()> {
        self.free_raw_on(device, ptr, None)
    }

    /// [`CachingAllocator::free_raw`] with the stream the allocation was made on, if the
    /// caller knows it (PyTorch's plug-in passes it): the pointer is looked for there first,
    /// under the lock the free takes anyway. A wrong stream costs a search, not an error.
    ///
    /// # Errors
    /// As [`CachingAllocator::free_raw`].
    #[inline]
    pub fn free_raw_on(&self, device: usize, ptr: u64, stream: Option<StreamId>) -> Result<()> {
        let dev = self.dev(device)?;
        if let Some((_, slot)) = stream.and_then(|s| dev.find_slot(s)) {
            let mut g = slot.lock_hot();
            if let Some(block) = g.raw.remove(ptr) {
                return self.free_locked(dev, slot.stream, &mut g, block);
            }
        }
        self.free_raw_searched(dev, ptr)
    }

    #[cold]
    fn free_raw_searched(&self, dev: &Device, ptr: u64) -> Result<()> {
        for (_, slot) in dev.indexed_slots() {
            let mut g = slot.lock();
            if let Some(block) = g.raw.remove(ptr) {
                return self.free_locked(dev, slot.stream, &mut g, block);
            }
        }
        Err(Error::UnknownPointer(ptr))
    }

    /// Run `f` on the pools of the stream holding raw allocation `ptr` of `dev`, locked,
    /// with its block; `None` if no stream holds it.
    fn with_raw<T>(
        &self,
        dev: &Device,
        ptr: u64,
        f: impl FnOnce(&mut Pools, StreamId, BlockId) -> T,
    ) -> Option<T> {
        for (_, slot) in dev.indexed_slots() {
            let mut g = slot.lock();
            if let Some(block) = g.raw.get(ptr) {
                return Some(f(&mut g, slot.stream, block));
            }
        }
        None
    }

    /// Device of a raw allocation, searching every device (for callers that do not know).
    pub fn device_of_raw(&self, ptr: u64) -> Option<usize> {
        self.devices
            .iter()
            .position(|d| self.with_raw(d, ptr, |_, _, _| ()).is_some())
    }

    /// Requested size of a raw allocation.
    pub fn raw_size(&self, device: usize, ptr: u64) -> Option<u64> {
        let dev = self.devices.get(device)?;
        self.with_raw(dev, ptr, |g, _, b| g.block_requested(b))
    }

    /// Allocate like [`CachingAllocator::allocate_raw`], but only from the cache: `None` when
    /// that would need a new segment (the LD_PRELOAD shim first makes deferred frees
    /// reusable then).
    ///
    /// # Errors
    /// As [`CachingAllocator::allocate_raw`], except out of memory.
    pub fn allocate_raw_cached(
        &self,
        device: usize,
        size: u64,
        stream: StreamId,
    ) -> Result<Option<u64>> {
        if size == 0 || size > MAX_REQUEST {
            return Err(Error::InvalidArgument(format!(
                "cannot allocate {size} bytes (must be 1..={MAX_REQUEST})"
            )));
        }
        let dev = self.dev(device)?;
        let (_, stream_slot) = dev.slot(stream)?;
        let req = Request::new(size, &self.config);
        let ptr = {
            let mut g = stream_slot.lock_hot();
            if g.has_pending() {
                self.process_events(dev, &mut g)?;
            }
            let Some(block) = g.try_alloc(&req, &self.config) else {
                return Ok(None);
            };
            g.handed_out(block, Raw::Yes).1
        };
        self.used.store(true, Ordering::Relaxed);
        dev.ledger.block_allocated(ptr, size, stream);
        Ok(Some(ptr))
    }

    /// Stream a raw allocation belongs to.
    pub fn raw_stream(&self, device: usize, ptr: u64) -> Option<StreamId> {
        let dev = self.devices.get(device)?;
        self.with_raw(dev, ptr, |_, s, _| s)
    }

    /// `record_stream` for a raw allocation.
    ///
    /// # Errors
    /// [`Error::UnknownPointer`] if `ptr` is not a live raw allocation of `device`.
    pub fn record_stream_raw(&self, device: usize, ptr: u64, stream: StreamId) -> Result<()> {
        let dev = self.dev(device)?;
        self.with_raw(dev, ptr, |g, _, b| g.record_stream(b, stream))
            .ok_or(Error::UnknownPointer(ptr))
    }
}
