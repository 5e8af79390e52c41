//! Stream-ordered free: a freed block is cached at once, waits for events recorded on the
//! other streams that used it, or — when their work cannot be followed — is quarantined for
//! good. The front records the events; this file only keeps the books.

use super::*;

/// How the front followed the work that other streams may still do on a block it frees
/// (see [`StreamPools::free`]).
#[derive(Debug, Clone, Copy)]
pub struct Tracking<'a> {
    /// Events recorded on those streams, one per stream whose recording succeeded.
    pub events: &'a [EventId],
    /// Some stream's work cannot be followed: its event could not be recorded and the device
    /// could not be synchronized either. The block is then never reused.
    pub untracked: bool,
}

impl Tracking<'_> {
    /// Nothing to wait for: no other stream used the block (or the device was synchronized).
    pub const NONE: Tracking<'static> = Tracking {
        events: &[],
        untracked: false,
    };
}

/// What became of a freed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeOutcome {
    /// Back in the cache.
    Cached,
    /// Waiting for events on other streams.
    Pending,
    /// Never to be reused (see [`Tracking::untracked`]).
    Quarantined,
}

/// A block that went back to the cache (from [`StreamPools::complete_oldest_pending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    /// Its address.
    pub addr: u64,
    /// The bytes its caller had asked for.
    pub requested: u64,
}

/// An outstanding event that completed (from [`StreamPools::complete_oldest_pending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The event, for the front to release.
    pub event: EventId,
    /// The block that went back to the cache with it, if any.
    pub freed: Option<Freed>,
}

impl StreamPools {
    /// Note that allocated block `id` is used by `stream` too: on free it will wait for
    /// the work queued on that stream.
    pub fn record_stream(&mut self, id: BlockId, stream: StreamId) {
        if stream == self.stream {
            return;
        }
        let mut u = self.blocks[id.0 as usize].uses;
        if u == NIL {
            u = self.spare_uses.pop().unwrap_or_else(|| {
                self.uses.push(Vec::new());
                (self.uses.len() - 1) as u32
            });
            self.blocks[id.0 as usize].uses = u;
        }
        let list = &mut self.uses[u as usize];
        if !list.contains(&stream) {
            list.push(stream);
        }
    }

    /// The other streams that used allocated block `id` (`record_stream`): before freeing
    /// it, the front records an event on each and passes them to [`StreamPools::free`].
    #[inline]
    pub fn stream_uses(&self, id: BlockId) -> &[StreamId] {
        match self.blocks[id.0 as usize].uses {
            NIL => &[],
            u => &self.uses[u as usize],
        }
    }

    /// The caller frees allocated block `id`, with `tracking` saying how the work of the
    /// other streams that used it ([`StreamPools::stream_uses`]) is followed. The block is
    /// back in the cache at once when nothing is to be waited for, waits for the events
    /// otherwise, and is never reused when some stream's work could not be tracked at all.
    #[inline]
    pub fn free(&mut self, id: BlockId, cfg: &Config, tracking: Tracking<'_>) -> FreeOutcome {
        // The last take, freed with nothing to wait for: parked, booked later (`retake`).
        if tracking.events.is_empty() && !tracking.untracked && self.park_unbooked(id.0) {
            return FreeOutcome::Cached;
        }
        self.free_unparked(id, cfg, tracking)
    }

    /// [`StreamPools::free`] of a block that does not park at once.
    #[inline(never)]
    fn free_unparked(&mut self, id: BlockId, cfg: &Config, tracking: Tracking<'_>) -> FreeOutcome {
        let i = id.0;
        let pool = self.block_pool(id);
        let b = &mut self.blocks[i as usize];
        debug_assert_eq!(b.state, BlockState::Allocated);
        let size = b.size;
        let u = std::mem::replace(&mut b.uses, NIL);
        if u != NIL {
            // Emptied, its capacity kept for the next block that needs one.
            self.uses[u as usize].clear();
            self.spare_uses.push(u);
        }
        self.book_caller_free(pool, size, size >= cfg.max_split_size);
        if tracking.events.is_empty() && !tracking.untracked {
            self.return_block(i);
            return FreeOutcome::Cached;
        }
        let b = &mut self.blocks[i as usize];
        b.state = BlockState::Pending;
        b.quarantined = tracking.untracked;
        b.pending_events = tracking.events.len() as u32;
        self.pending.extend(tracking.events.iter().map(|&e| (e, i)));
        if tracking.untracked {
            FreeOutcome::Quarantined
        } else {
            FreeOutcome::Pending
        }
    }

    /// The oldest outstanding event, if any.
    #[inline]
    pub fn oldest_pending(&self) -> Option<EventId> {
        self.pending.front().map(|&(e, _)| e)
    }

    /// The oldest outstanding event completed: drop it; its block returns to the cache if it
    /// was the block's last and the block is not quarantined.
    pub fn complete_oldest_pending(&mut self) -> Option<Completed> {
        let (event, i) = self.pending.pop_front()?;
        let b = &mut self.blocks[i as usize];
        b.pending_events -= 1;
        if b.pending_events == 0 && !b.quarantined {
            let freed = Freed {
                addr: b.addr,
                requested: b.requested,
            };
            self.return_block(i);
            return Some(Completed {
                event,
                freed: Some(freed),
            });
        }
        Some(Completed { event, freed: None })
    }

    /// Every outstanding event, oldest first (for synchronizing them all).
    pub fn pending_events(&self) -> impl Iterator<Item = EventId> + '_ {
        self.pending.iter().map(|&(e, _)| e)
    }

    /// Bytes of blocks waiting on events.
    pub fn pending_bytes(&self) -> u64 {
        self.blocks
            .iter()
            .filter(|b| b.live && b.state == BlockState::Pending)
            .map(|b| b.size)
            .sum()
    }

    /// Block `i` is no longer used by anyone: mark it free, coalesce with free neighbours,
    /// put it in the free set — or, if it is the last block taken from the cache, park it
    /// (see `retake`).
    pub(super) fn return_block(&mut self, i: u32) {
        let pool = self.segments[self.blocks[i as usize].seg as usize].pool;
        self.book_return(i, pool);
        if self.park(i) {
            return;
        }
        self.settle();
        self.coalesce(i);
    }

    /// What the caller's free of a block of `size` bytes in `pool` books: it is no longer
    /// allocated (it may still be active, waiting on events).
    pub(super) fn book_caller_free(&mut self, pool: PoolKind, size: u64, oversize: bool) {
        let st = &mut self.stats;
        stats::decrease(&mut st.allocation, pool, 1);
        stats::decrease(&mut st.allocated_bytes, pool, size);
        if oversize {
            st.oversize_allocations.decrease(1);
        }
    }

    /// What block `i`'s return to the cache books: it is no longer active, and the bytes
    /// its caller asked for go.
    pub(super) fn book_return(&mut self, i: u32, pool: PoolKind) {
        let b = &mut self.blocks[i as usize];
        let (size, req) = (b.size, b.requested);
        b.requested = 0;
        let st = &mut self.stats;
        stats::decrease(&mut st.active, pool, 1);
        stats::decrease(&mut st.active_bytes, pool, size);
        stats::decrease(&mut st.requested_bytes, pool, req);
    }

    /// Returned block `i` (its statistics booked): coalesce it with its free neighbours and
    /// put it in the free set.
    pub(super) fn coalesce(&mut self, i: u32) {
        let cur = self.merge_mapped_free(i);
        self.blocks[cur as usize].state = BlockState::Free;
        self.insert_free(cur);
        self.inactive_split_account(cur, true);
    }
}
