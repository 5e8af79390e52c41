//! The arena: blocks and segments in vectors with free-slot lists, addressed by index;
//! a block's links to its neighbours in its segment. It must not decide anything about
//! which block serves which request.

use super::*;

/// Handle of a block inside one [`StreamPools`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Life state of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// In the free set, available for reuse on this stream.
    Free,
    /// Handed out to a caller.
    Allocated,
    /// Freed by the caller, waiting for events on other streams that used it.
    Pending,
}

/// One block: 56 bytes, plain data, so handing out and merging blocks copies no heap
/// value (the streams that used a block live in [`StreamPools`]' side table).
#[derive(Debug, Clone, Copy)]
pub(super) struct Block {
    pub(super) addr: u64,
    pub(super) size: u64,
    pub(super) requested: u64,
    /// Value of the pool's lookup counter when the block became free (GC age base).
    pub(super) gc_base: u64,
    pub(super) seg: u32,
    pub(super) prev: u32,
    pub(super) next: u32,
    pub(super) pending_events: u32,
    /// Index of the other streams that used this block (`record_stream`) in the side
    /// table; `NIL`: none.
    pub(super) uses: u32,
    pub(super) state: BlockState,
    /// Freed while work on another stream might still use it, with no way to know when that
    /// ends (recording and device synchronization both failed): never reused.
    pub(super) quarantined: bool,
    /// Backed by device memory. Always true in fixed segments; in an expandable segment,
    /// unmapped blocks are free address space with no memory behind it (never handed out,
    /// not in the free sets).
    pub(super) mapped: bool,
    pub(super) live: bool,
}

impl Block {
    /// A free block, linked to nothing yet.
    pub(super) fn fresh(addr: u64, size: u64, seg: u32, mapped: bool) -> Block {
        Block {
            addr,
            size,
            requested: 0,
            gc_base: 0,
            seg,
            prev: NIL,
            next: NIL,
            pending_events: 0,
            uses: NIL,
            state: BlockState::Free,
            quarantined: false,
            mapped,
            live: true,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) addr: u64,
    pub(super) size: u64,
    pub(super) pool: PoolKind,
    pub(super) head: u32,
    /// An expandable segment: a reserved address range whose pages are mapped as needed.
    pub(super) expandable: bool,
    pub(super) live: bool,
}

impl StreamPools {
    /// Device address of a block.
    #[inline]
    pub fn block_addr(&self, id: BlockId) -> u64 {
        self.blocks[id.0 as usize].addr
    }

    /// Size of a block.
    #[inline]
    pub fn block_size(&self, id: BlockId) -> u64 {
        self.blocks[id.0 as usize].size
    }

    /// Bytes requested for a block.
    #[inline]
    pub fn block_requested(&self, id: BlockId) -> u64 {
        self.blocks[id.0 as usize].requested
    }

    /// State of a block, or `None` if the id is not a live block.
    pub fn block_state(&self, id: BlockId) -> Option<BlockState> {
        self.blocks
            .get(id.0 as usize)
            .filter(|b| b.live)
            .map(|b| b.state)
    }

    /// Pool of a block.
    #[inline]
    pub fn block_pool(&self, id: BlockId) -> PoolKind {
        self.segments[self.blocks[id.0 as usize].seg as usize].pool
    }

    pub(super) fn new_block(&mut self, b: Block) -> u32 {
        if let Some(i) = self.spare_blocks.pop() {
            self.blocks[i as usize] = b;
            i
        } else {
            self.blocks.push(b);
            (self.blocks.len() - 1) as u32
        }
    }

    pub(super) fn drop_block(&mut self, i: u32) {
        self.blocks[i as usize].live = false;
        self.spare_blocks.push(i);
    }

    #[inline]
    pub(super) fn is_mapped_free(&self, i: u32) -> bool {
        let b = &self.blocks[i as usize];
        b.state == BlockState::Free && b.mapped
    }

    #[inline]
    pub(super) fn is_split(&self, i: u32) -> bool {
        let b = &self.blocks[i as usize];
        b.prev != NIL || b.next != NIL
    }

    /// A new segment covered by one free block (mapped or not); returns the block.
    pub(super) fn new_segment(
        &mut self,
        addr: u64,
        size: u64,
        pool: PoolKind,
        expandable: bool,
    ) -> u32 {
        let seg = Segment {
            addr,
            size,
            pool,
            head: NIL,
            expandable,
            live: true,
        };
        let s = if let Some(s) = self.spare_segments.pop() {
            self.segments[s as usize] = seg;
            s
        } else {
            self.segments.push(seg);
            (self.segments.len() - 1) as u32
        };
        self.live_segments += 1;
        let i = self.new_block(Block::fresh(addr, size, s, !expandable));
        self.segments[s as usize].head = i;
        i
    }

    /// Split block `i` at address `at`, strictly inside it: `i` keeps what lies before `at`,
    /// a new block (backed by memory or not, `mapped`) takes the rest and is linked after it.
    /// Returns the new block. Free-set and stats bookkeeping are the caller's.
    pub(super) fn split_at(&mut self, i: u32, at: u64, mapped: bool) -> u32 {
        let (addr, size, seg, next) = {
            let b = &self.blocks[i as usize];
            (b.addr, b.size, b.seg, b.next)
        };
        debug_assert!(at > addr && at < addr + size);
        let t = self.new_block(Block {
            prev: i,
            next,
            ..Block::fresh(at, addr + size - at, seg, mapped)
        });
        if next != NIL {
            self.blocks[next as usize].prev = t;
        }
        let b = &mut self.blocks[i as usize];
        b.next = t;
        b.size = at - addr;
        t
    }

    /// Block `a` takes over the block after it (which must exist): sizes add up, the links
    /// skip it, and it is dropped. Free-set and stats bookkeeping are the caller's.
    pub(super) fn merge_next(&mut self, a: u32) {
        let b = self.blocks[a as usize].next;
        let (size, after) = (self.blocks[b as usize].size, self.blocks[b as usize].next);
        self.blocks[a as usize].size += size;
        self.blocks[a as usize].next = after;
        if after != NIL {
            self.blocks[after as usize].prev = a;
        }
        self.drop_block(b);
    }
}
