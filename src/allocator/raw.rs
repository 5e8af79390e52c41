//! The raw, pointer-based API the C layer uses: allocate and free by address, look a pointer
//! up, `record_stream` by pointer. It keeps the pointer map; the blocks are the policy's.

use super::*;

impl<B: Backend> CachingAllocator<B> {
    /// Allocate and return the bare device address; free it with
    /// [`CachingAllocator::free_raw`] (for the C layer).
    ///
    /// # Errors
    /// As [`CachingAllocator::malloc_on`].
    pub fn allocate_raw(&self, device: usize, size: u64, stream: StreamId) -> Result<u64> {
        let dev = self.dev(device)?;
        let (slot, stream_slot) = dev.slot(stream)?;
        let (block, ptr) = self.alloc_block(dev, stream_slot, size)?;
        dev.pointers[pointer_shard(ptr)]
            .lock()
            .insert(ptr, RawEntry { slot, block });
        Ok(ptr)
    }

    /// Free an address returned by [`CachingAllocator::allocate_raw`].
    ///
    /// # Errors
    /// [`Error::UnknownPointer`] for an address not handed out (or already freed) on that
    /// device — nothing is changed then; backend errors.
    pub fn free_raw(&self, device: usize, ptr: u64) -> Result<()> {
        let dev = self.dev(device)?;
        let e = dev.pointers[pointer_shard(ptr)]
            .lock()
            .remove(&ptr)
            .ok_or(Error::UnknownPointer(ptr))?;
        self.free_block(device, e.slot, e.block)
    }

    /// Device of a raw allocation, searching every device (for callers that do not know).
    pub fn device_of_raw(&self, ptr: u64) -> Option<usize> {
        self.devices
            .iter()
            .position(|d| d.pointers[pointer_shard(ptr)].lock().contains_key(&ptr))
    }

    /// Requested size of a raw allocation.
    pub fn raw_size(&self, device: usize, ptr: u64) -> Option<u64> {
        let dev = self.devices.get(device)?;
        let e = *dev.pointers[pointer_shard(ptr)].lock().get(&ptr)?;
        Some(dev.slot_at(e.slot).pools.lock().block_requested(e.block))
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
        let (slot, stream_slot) = dev.slot(stream)?;
        let req = Request::new(size, &self.config);
        let found = {
            let mut g = stream_slot.pools.lock();
            if g.has_pending() {
                self.process_events(dev, &mut g)?;
            }
            g.try_alloc(&req, &self.config)
                .map(|b| (b, g.block_addr(b)))
        };
        let Some((block, ptr)) = found else {
            return Ok(None);
        };
        self.used.store(true, Ordering::Relaxed);
        dev.ledger.block_allocated(ptr, size, stream);
        dev.pointers[pointer_shard(ptr)]
            .lock()
            .insert(ptr, RawEntry { slot, block });
        Ok(Some(ptr))
    }

    /// Stream a raw allocation belongs to.
    pub fn raw_stream(&self, device: usize, ptr: u64) -> Option<StreamId> {
        let dev = self.devices.get(device)?;
        let e = *dev.pointers[pointer_shard(ptr)].lock().get(&ptr)?;
        Some(dev.slot_at(e.slot).stream)
    }

    /// `record_stream` for a raw allocation.
    ///
    /// # Errors
    /// [`Error::UnknownPointer`] if `ptr` is not a live raw allocation of `device`.
    pub fn record_stream_raw(&self, device: usize, ptr: u64, stream: StreamId) -> Result<()> {
        let dev = self.dev(device)?;
        let e = *dev.pointers[pointer_shard(ptr)]
            .lock()
            .get(&ptr)
            .ok_or(Error::UnknownPointer(ptr))?;
        dev.slot_at(e.slot)
            .pools
            .lock()
            .record_stream(e.block, stream);
        Ok(())
    }
}
