//! The free path: the front's half of the policy's free protocol (events recorded on the
//! streams that used a block, or a device synchronization) and processing completed events.

use super::*;

impl<B: Backend> CachingAllocator<B> {
    pub(super) fn free_block(
        &self,
        device: usize,
        stream_slot: &StreamSlot,
        block: BlockId,
    ) -> Result<()> {
        let dev = &self.devices[device];
        let mut g = stream_slot.lock_hot();
        self.free_locked(dev, stream_slot.stream, &mut g, block)
    }

    /// Free `block` of the stream whose pools `g` are (locked by the caller). Inlined into
    /// the cached free: a block no other stream used is back in the cache here; one that
    /// others used goes through [`Self::free_tracked`].
    #[inline]
    pub(super) fn free_locked(
        &self,
        dev: &Device,
        stream: StreamId,
        g: &mut StreamPools,
        block: BlockId,
    ) -> Result<()> {
        let (addr, size) = (g.block_addr(block), g.block_requested(block));
        dev.ledger.free_requested(addr, size, stream);
        if g.stream_uses(block).is_empty() {
            g.free(block, &self.config, Tracking::NONE);
            dev.ledger.block_freed(addr, size, stream);
            return Ok(());
        }
        self.free_tracked(dev, stream, g, block, addr, size)
    }

    /// [`Self::free_locked`] of a block other streams used: an event recorded on each.
    #[inline(never)]
    fn free_tracked(
        &self,
        dev: &Device,
        stream: StreamId,
        g: &mut StreamPools,
        block: BlockId,
        addr: u64,
        size: u64,
    ) -> Result<()> {
        let n = g.stream_uses(block).len();
        let mut events = Vec::with_capacity(n);
        let mut failed = None;
        for &s in g.stream_uses(block) {
            match self.backend.record_event(dev.index, s) {
                Ok(ev) => events.push(ev),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        // Could not mark some other stream's progress: wait for the whole device instead, so
        // the block is safe to reuse. If even that fails, nothing says the other stream is
        // done with it: the block is never reused.
        let untracked = failed.is_some() && self.backend.synchronize_device(dev.index).is_err();
        let tracking = Tracking {
            events: &events,
            untracked,
        };
        if g.free(block, &self.config, tracking) == FreeOutcome::Cached {
            dev.ledger.block_freed(addr, size, stream);
        }
        match failed {
            Some(e) if untracked => Err(Error::Backend(e)),
            _ => Ok(()),
        }
    }

    /// Poll outstanding events of one stream, oldest first, returning blocks whose events
    /// all completed to the cache.
    pub(super) fn process_events(&self, dev: &Device, g: &mut StreamPools) -> Result<()> {
        while let Some(ev) = g.oldest_pending() {
            if !self.backend.query_event(dev.index, ev)? {
                break;
            }
            if let Some(Completed { freed: Some(f), .. }) = g.complete_oldest_pending() {
                dev.ledger.block_freed(f.addr, f.requested, g.stream());
            }
            self.backend.release_event(dev.index, ev);
        }
        Ok(())
    }

    /// Wait for every outstanding event of one stream and process them.
    pub(super) fn sync_events(&self, dev: &Device, g: &mut StreamPools) -> Result<()> {
        while let Some(ev) = g.oldest_pending() {
            self.backend.synchronize_event(dev.index, ev)?;
            if let Some(Completed { freed: Some(f), .. }) = g.complete_oldest_pending() {
                dev.ledger.block_freed(f.addr, f.requested, g.stream());
            }
            self.backend.release_event(dev.index, ev);
        }
        Ok(())
    }
}
