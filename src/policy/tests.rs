use super::*;

fn cfg() -> Config {
    Config::default()
}

fn req(size: u64) -> Request {
    Request::new(size, &cfg())
}

const MIB: u64 = 1 << 20;

#[test]
fn rounding_and_pools_follow_pytorch() {
    let c = cfg();
    assert_eq!(round_size(1, &c), 512);
    assert_eq!(round_size(512, &c), 512);
    assert_eq!(round_size(513, &c), 1024);
    assert_eq!(pool_for(MIB), PoolKind::Small);
    assert_eq!(pool_for(MIB + 512), PoolKind::Large);
    assert_eq!(segment_size_for(512), 2 * MIB);
    assert_eq!(segment_size_for(MIB), 2 * MIB);
    assert_eq!(segment_size_for(MIB + 512), 20 * MIB);
    assert_eq!(segment_size_for(10 * MIB - 512), 20 * MIB);
    assert_eq!(segment_size_for(10 * MIB), 10 * MIB);
    assert_eq!(segment_size_for(11 * MIB + 1), 12 * MIB);
}

#[test]
fn roundup_power2_divisions_rounds_to_steps() {
    let mut c = cfg();
    c.roundup_power2_divisions = [4; crate::config::ROUNDUP_POWER2_INTERVALS];
    // 1200 KiB lies in [1 MiB, 2 MiB): steps of 256 KiB.
    assert_eq!(round_size(1200 << 10, &c), 1280 << 10);
    // Powers of two stay.
    assert_eq!(round_size(4 * MIB, &c), 4 * MIB);
    // Small sizes (≤ 512 × divisions) use plain 512 B rounding.
    assert_eq!(round_size(1500, &c), 1536);
    // 5 MiB + 1 in [4, 8) MiB: steps of 1 MiB.
    assert_eq!(round_size(5 * MIB + 1, &c), 6 * MIB);
}

#[test]
fn small_segment_is_split_and_coalesced() {
    let c = cfg();
    let mut p = StreamPools::new(0);
    let a = p.add_segment_and_alloc(0x1000_0000, 2 * MIB, &req(1000), &c);
    assert_eq!(p.block_addr(a), 0x1000_0000);
    assert_eq!(p.block_size(a), 1024);
    // The rest is one free split block.
    assert_eq!(p.stats().inactive_split[0].current, 1);
    assert_eq!(
        p.stats().inactive_split_bytes[0].current as u64,
        2 * MIB - 1024
    );
    let b = p.try_alloc(&req(4096), &c).expect("fits in the remainder");
    assert_eq!(p.block_addr(b), 0x1000_0000 + 1024);
    p.check_invariants(&c).unwrap();
    assert_eq!(p.free(a, &c, Tracking::NONE), FreeOutcome::Cached);
    p.check_invariants(&c).unwrap();
    assert_eq!(p.stats().inactive_split[0].current, 2);
    assert_eq!(p.free(b, &c, Tracking::NONE), FreeOutcome::Cached);
    p.check_invariants(&c).unwrap();
    // Fully coalesced: one whole free block, not split.
    assert_eq!(p.stats().inactive_split[0].current, 0);
    assert_eq!(p.largest_free(), 2 * MIB);
    let mut out = Vec::new();
    p.release_free_segments(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].size, 2 * MIB);
    assert_eq!(p.segment_count(), 0);
    p.check_invariants(&c).unwrap();
}

#[test]
fn best_fit_picks_smallest_sufficient_block() {
    let c = cfg();
    let mut p = StreamPools::new(0);
    // Three separate large segments, all freed.
    let a = p.add_segment_and_alloc(0x1_0000_0000, 12 * MIB, &req(12 * MIB), &c);
    let b = p.add_segment_and_alloc(0x2_0000_0000, 16 * MIB, &req(16 * MIB), &c);
    let d = p.add_segment_and_alloc(0x3_0000_0000, 14 * MIB, &req(14 * MIB), &c);
    for x in [a, b, d] {
        p.free(x, &c, Tracking::NONE);
    }
    let e = p.try_alloc(&req(13 * MIB), &c).unwrap();
    assert_eq!(p.block_addr(e), 0x3_0000_0000, "14 MiB is the best fit");
    // 14 - 13 = 1 MiB remaining: not > 1 MiB, so the large block is not split.
    assert_eq!(p.block_size(e), 14 * MIB);
    p.check_invariants(&c).unwrap();
}

#[test]
fn large_blocks_split_only_when_remainder_exceeds_small_size() {
    let c = cfg();
    let mut p = StreamPools::new(0);
    let a = p.add_segment_and_alloc(0x1_0000_0000, 20 * MIB, &req(2 * MIB), &c);
    assert_eq!(p.block_size(a), 2 * MIB);
    let b = p.try_alloc(&req(17 * MIB + 512), &c).unwrap();
    // Remainder 20 - 2 - (17 MiB + 512) < 1 MiB: kept whole.
    assert_eq!(p.block_size(b), 18 * MIB);
    p.check_invariants(&c).unwrap();
}

#[test]
fn max_split_size_rules() {
    let mut c = cfg();
    c.max_split_size = 40 * MIB;
    let mut p = StreamPools::new(0);
    let big = p.add_segment_and_alloc(0x1_0000_0000, 64 * MIB, &Request::new(64 * MIB, &c), &c);
    p.free(big, &c, Tracking::NONE);
    // A request below max_split never takes an oversize block.
    assert!(p.try_alloc(&Request::new(30 * MIB, &c), &c).is_none());
    // An oversize request takes it only if it wastes < 20 MiB.
    assert!(p.try_alloc(&Request::new(42 * MIB, &c), &c).is_none());
    let x = p.try_alloc(&Request::new(50 * MIB, &c), &c).unwrap();
    // And it is not split.
    assert_eq!(p.block_size(x), 64 * MIB);
    assert_eq!(p.stats().oversize_allocations.current, 1);
    p.check_invariants(&c).unwrap();
}

#[test]
fn stream_uses_hold_block_until_events_complete() {
    let c = cfg();
    let mut p = StreamPools::new(7);
    let a = p.add_segment_and_alloc(0x1000_0000, 2 * MIB, &req(MIB), &c);
    let _rest = p.try_alloc(&req(MIB), &c).expect("second half");
    p.record_stream(a, 7); // own stream: ignored
    p.record_stream(a, 9);
    p.record_stream(a, 9);
    assert_eq!(p.stream_uses(a), &[9]);
    let events = [42];
    let tracking = Tracking {
        events: &events,
        untracked: false,
    };
    assert_eq!(p.free(a, &c, tracking), FreeOutcome::Pending);
    assert_eq!(p.block_state(a), Some(BlockState::Pending));
    // Still active, not allocated.
    assert_eq!(p.stats().allocation[0].current, 1);
    assert_eq!(p.stats().active[0].current, 2);
    p.check_invariants(&c).unwrap();
    assert!(
        p.try_alloc(&req(MIB), &c).is_none(),
        "pending block is not reusable"
    );
    assert_eq!(p.oldest_pending(), Some(42));
    assert_eq!(
        p.complete_oldest_pending(),
        Some(Completed {
            event: 42,
            freed: Some(Freed {
                addr: 0x1000_0000,
                requested: MIB
            })
        })
    );
    assert_eq!(p.block_state(a), Some(BlockState::Free));
    assert_eq!(p.stats().active[0].current, 1);
    p.check_invariants(&c).unwrap();
    assert!(p.try_alloc(&req(MIB), &c).is_some());
}

#[test]
fn gc_candidates_age_with_lookups() {
    let c = cfg();
    let mut p = StreamPools::new(0);
    let a = p.add_segment_and_alloc(0x1_0000_0000, 20 * MIB, &req(20 * MIB), &c);
    let b = p.add_segment_and_alloc(0x2_0000_0000, 22 * MIB, &req(22 * MIB), &c);
    p.free(a, &c, Tracking::NONE);
    for _ in 0..5 {
        let _ = p.try_alloc(&req(100 * MIB), &c);
    }
    p.free(b, &c, Tracking::NONE);
    let mut cands = p.gc_candidates();
    cands.sort();
    assert_eq!(cands.len(), 2);
    assert_eq!(cands[0].0, 0);
    assert_eq!(cands[1].0, 5);
    let r = p.release_gc_candidate(cands[1].1).unwrap();
    assert_eq!(r.addr, 0x1_0000_0000);
    p.check_invariants(&c).unwrap();
}

mod expandable;
mod parking;
