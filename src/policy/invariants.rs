//! The invariant checker: blocks tile their segments, no two free neighbours, free
//! indexes agree with block states, statistics equal a recount. Called by tests (the model
//! test after every step); it must never change state.

use super::*;

impl StreamPools {
    /// Check every invariant of the pools; `Err` says which one broke. Costs a full scan:
    /// for tests and debugging.
    pub fn check_invariants(&self, cfg: &Config) -> Result<(), String> {
        if self.is_unsettled() {
            // A park is coalescing put off, unbooked cycles statistics put off: the invariants hold of the pools it stands for.
            let mut settled = self.clone();
            settled.settle();
            return settled.check_invariants(cfg);
        }
        let mut recount = BlockStats::default();
        let mut free_seen = 0usize;
        let mut unmapped_seen = 0usize;
        let mut mapped_recount = 0u64;
        let mut pending_seen = 0u64;
        let mut partial_seen = [0u32; 2];
        for (si, s) in self.segments.iter().enumerate() {
            if !s.live {
                continue;
            }
            if s.expandable && self.expandable[s.pool.idx()] != Some(si as u32) {
                return Err(format!("expandable segment {si} is not its pool's"));
            }
            let mut i = s.head;
            let mut expect_addr = s.addr;
            let mut prev = NIL;
            let mut prev_free = false;
            let mut prev_unmapped = false;
            while i != NIL {
                let b = self
                    .blocks
                    .get(i as usize)
                    .ok_or_else(|| format!("segment {si}: dangling block index {i}"))?;
                if !b.live {
                    return Err(format!("segment {si}: dead block {i} linked"));
                }
                if b.seg as usize != si {
                    return Err(format!(
                        "block {i} in segment {si} claims segment {}",
                        b.seg
                    ));
                }
                if b.prev != prev {
                    return Err(format!("block {i}: prev link {} != {}", b.prev, prev));
                }
                if b.addr != expect_addr {
                    return Err(format!(
                        "segment {si}: block {i} at {:#x}, expected {:#x} (gap or overlap)",
                        b.addr, expect_addr
                    ));
                }
                if b.size == 0 || b.size % MIN_BLOCK_SIZE != 0 {
                    return Err(format!("block {i}: bad size {}", b.size));
                }
                if !b.mapped {
                    if !s.expandable {
                        return Err(format!("block {i} of fixed segment {si} is unmapped"));
                    }
                    if b.state != BlockState::Free {
                        return Err(format!("block {i} in unmapped pages is {:?}", b.state));
                    }
                    if prev_unmapped {
                        return Err(format!(
                            "segment {si}: adjacent unmapped blocks at {:#x}",
                            b.addr
                        ));
                    }
                    if !self.unmapped[s.pool.idx()].contains(&(b.addr, i)) {
                        return Err(format!("unmapped block {i} missing from the unmapped set"));
                    }
                    unmapped_seen += 1;
                    expect_addr = b.addr + b.size;
                    prev_free = false;
                    prev_unmapped = true;
                    prev = i;
                    i = b.next;
                    continue;
                }
                prev_unmapped = false;
                if s.expandable {
                    mapped_recount += b.size;
                }
                let free = b.state == BlockState::Free;
                if free && prev_free {
                    return Err(format!(
                        "segment {si}: adjacent free blocks at {:#x}",
                        b.addr
                    ));
                }
                let in_set = match s.pool {
                    PoolKind::Small => self.small.contains(i, b.size),
                    PoolKind::Large => self.large.contains(&(b.size, b.addr, i)),
                };
                if free != in_set {
                    return Err(format!("block {i}: free={free} but in free set={in_set}"));
                }
                let split = (b.prev != NIL || b.next != NIL) && !s.expandable;
                match b.state {
                    BlockState::Free => {
                        free_seen += 1;
                        if self.is_partial(i) {
                            partial_seen[s.pool.idx()] += 1;
                        }
                        if split {
                            stats::increase(&mut recount.inactive_split, s.pool, 1);
                            stats::increase(&mut recount.inactive_split_bytes, s.pool, b.size);
                        }
                        if b.pending_events != 0 {
                            return Err(format!("free block {i} has pending events"));
                        }
                    }
                    BlockState::Allocated | BlockState::Pending => {
                        if b.state == BlockState::Allocated {
                            stats::increase(&mut recount.allocation, s.pool, 1);
                            stats::increase(&mut recount.allocated_bytes, s.pool, b.size);
                            if b.size >= cfg.max_split_size {
                                recount.oversize_allocations.increase(1);
                            }
                        } else {
                            pending_seen += u64::from(b.pending_events);
                            if b.pending_events == 0 && !b.quarantined {
                                return Err(format!("pending block {i} has no event"));
                            }
                        }
                        stats::increase(&mut recount.active, s.pool, 1);
                        stats::increase(&mut recount.active_bytes, s.pool, b.size);
                        stats::increase(&mut recount.requested_bytes, s.pool, b.requested);
                    }
                }
                expect_addr = b.addr + b.size;
                prev_free = free;
                prev = i;
                i = b.next;
            }
            if expect_addr != s.addr + s.size {
                return Err(format!(
                    "segment {si}: blocks end at {:#x}, segment at {:#x}",
                    expect_addr,
                    s.addr + s.size
                ));
            }
        }
        if partial_seen != self.partial_free {
            return Err(format!(
                "free blocks inside pages: counted {:?}, recount {partial_seen:?}",
                self.partial_free
            ));
        }
        let unmapped_len: usize = self.unmapped.iter().map(BTreeSet::len).sum();
        if unmapped_len != unmapped_seen {
            return Err(format!(
                "unmapped sets hold {unmapped_len} entries, segments {unmapped_seen} blocks"
            ));
        }
        if mapped_recount != self.mapped_bytes {
            return Err(format!(
                "mapped bytes kept {}, recount {mapped_recount}",
                self.mapped_bytes
            ));
        }
        let set_len = self.small.len() + self.large.len();
        if set_len != free_seen {
            return Err(format!(
                "free sets hold {set_len} entries, segments {free_seen} free blocks"
            ));
        }
        if pending_seen != self.pending.len() as u64 {
            return Err(format!(
                "pending queue holds {}, blocks count {pending_seen}",
                self.pending.len()
            ));
        }
        let cur = |a: &crate::stats::StatArray| [a[0].current, a[1].current, a[2].current];
        let st = &self.stats;
        let pairs = [
            ("allocation", &st.allocation, &recount.allocation),
            ("active", &st.active, &recount.active),
            (
                "inactive_split",
                &st.inactive_split,
                &recount.inactive_split,
            ),
            (
                "allocated_bytes",
                &st.allocated_bytes,
                &recount.allocated_bytes,
            ),
            ("active_bytes", &st.active_bytes, &recount.active_bytes),
            (
                "inactive_split_bytes",
                &st.inactive_split_bytes,
                &recount.inactive_split_bytes,
            ),
            (
                "requested_bytes",
                &st.requested_bytes,
                &recount.requested_bytes,
            ),
        ];
        for (name, have, want) in pairs {
            if cur(have) != cur(want) {
                return Err(format!(
                    "stat {name}: kept {:?}, recount {:?}",
                    cur(have),
                    cur(want)
                ));
            }
            for s in have.iter() {
                if s.peak < s.current || s.current < 0 {
                    return Err(format!("stat {name}: bad peak/current {s:?}"));
                }
            }
        }
        if st.oversize_allocations.current != recount.oversize_allocations.current {
            return Err("stat oversize_allocations differs from recount".into());
        }
        Ok(())
    }
}
