//! The RAII handle: [`Allocation`], freed into the cache on drop; a driver error met while
//! dropping is kept for the next call ([`CachingAllocator::take_deferred_error`]), never lost.

use super::*;

/// Memory handed out by [`CachingAllocator::malloc`]; returned to the cache on drop.
pub struct Allocation<'a, B: Backend> {
    alloc: &'a CachingAllocator<B>,
    device: u32,
    /// The stream's slot itself, not its index: the free goes straight to its lock.
    stream_slot: &'a StreamSlot,
    block: BlockId,
    ptr: u64,
    size: u64,
}

impl<B: Backend> std::fmt::Debug for Allocation<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocation")
            .field("device", &self.device)
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .finish()
    }
}

impl<B: Backend> Allocation<'_, B> {
    /// Device address.
    #[inline]
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Bytes requested.
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Device index.
    pub fn device(&self) -> usize {
        self.device as usize
    }

    /// Stream the allocation belongs to.
    pub fn stream(&self) -> StreamId {
        self.stream_slot.stream
    }

    /// Mark use on another stream: on free, the block waits for the work queued on
    /// `stream` so far before it is reused.
    pub fn record_stream(&self, stream: StreamId) {
        self.stream_slot
            .lock_hot()
            .record_stream(self.block, stream);
    }

    /// Free now, reporting any error (dropping reports it later through
    /// [`CachingAllocator::take_deferred_error`]).
    ///
    /// # Errors
    /// A backend error while recording events for other streams.
    pub fn free(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        this.alloc
            .free_block(this.device as usize, this.stream_slot, this.block)
    }
}

impl<B: Backend> Drop for Allocation<'_, B> {
    fn drop(&mut self) {
        if let Err(e) = self
            .alloc
            .free_block(self.device as usize, self.stream_slot, self.block)
        {
            *self.alloc.deferred.lock() = Some(e);
        }
    }
}

impl<B: Backend> CachingAllocator<B> {
    /// Allocate `size` bytes on device 0 for use on `stream`.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when nothing fits even after releasing the cache;
    /// [`Error::InvalidArgument`] for a zero or impossible size; backend errors.
    #[inline]
    pub fn malloc(&self, size: u64, stream: StreamId) -> Result<Allocation<'_, B>> {
        self.malloc_on(0, size, stream)
    }

    /// Allocate `size` bytes on `device` for use on `stream`.
    ///
    /// # Errors
    /// As [`CachingAllocator::malloc`], plus an unknown device.
    #[inline]
    pub fn malloc_on(
        &self,
        device: usize,
        size: u64,
        stream: StreamId,
    ) -> Result<Allocation<'_, B>> {
        let dev = self.dev(device)?;
        let (_, stream_slot) = dev.slot(stream)?;
        let (block, ptr) = self.alloc_block(dev, stream_slot, size, malloc::Raw::No)?;
        Ok(Allocation {
            alloc: self,
            device: device as u32,
            stream_slot,
            block,
            ptr,
            size,
        })
    }
}
