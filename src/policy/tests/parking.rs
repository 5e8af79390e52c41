//! Parking a freed block and taking it straight back (see `retake`) is invisible: pools
//! that park and pools that coalesce at once, driven through the same operations, hand out
//! the same addresses and, once the park is settled, hold the same blocks, free index, GC
//! ages, lookup counts and statistics, with fixed and with expandable segments.

use super::*;

const G: u64 = 2 * MIB;

/// What an observer can tell of the pools, block ids aside.
fn observed(p: &StreamPools) -> impl PartialEq + std::fmt::Debug {
    let mut p = p.clone();
    p.settle();
    let mut free: Vec<(u64, u64, u64)> = p
        .blocks
        .iter()
        .filter(|b| b.live && b.state == BlockState::Free && b.mapped)
        .map(|b| (b.addr, b.size, b.gc_base))
        .collect();
    free.sort();
    let mut large: Vec<(u64, u64)> = p.large.iter().map(|&(s, a, _)| (s, a)).collect();
    large.sort();
    (
        p.segments(),
        free,
        large,
        p.small.len(),
        p.lookups,
        p.partial_free,
        p.stats.clone(),
        p.free_bytes(),
        p.largest_free(),
    )
}

type Step = Result<(), proptest::test_runner::TestCaseError>;

/// Ops: (0, _, pick) frees a live block; (1, _, pick) frees one used on another stream
/// (it waits on an event); (2, ..) completes the oldest event; (3, ..) releases what is
/// wholly free; (4, ..) repeats the last request; (5, ..) resets the peaks (so that the
/// peaks a parked free and its retake pass through can show); (6, ..) frees the newest
/// live block (the pattern parks and recuts are for); anything else allocates `units` × 512
/// bytes from one of a few sizes, so that requests repeat.
/// `max_split`: with `max_split_size_mb:20`, so that the largest size is oversize.
fn run(expandable: bool, max_split: bool, ops: Vec<(u8, u64, u16)>) -> Step {
    let mut c = Config {
        expandable_segments: expandable,
        ..Config::default()
    };
    if max_split {
        c = c
            .with_max_split_size_mb(20)
            .expect("a valid max_split_size");
    }
    let mut plain = StreamPools::new(0);
    let mut parking = StreamPools::parking(0);
    if expandable {
        for p in [&mut plain, &mut parking] {
            p.add_expandable_segment(1 << 40, 1 << 30, PoolKind::Small, G);
            p.add_expandable_segment(1 << 41, 1 << 30, PoolKind::Large, G);
        }
    }
    // Sizes around the pools' and the pages' edges too, so that a recut meets free space
    // too small, remainders under 512 bytes and requests of whole pages.
    let sizes = [
        512,
        3 * 512,
        4096,
        70_000,
        MIB - 512,
        MIB,
        G - 512,
        G,
        3 * MIB + 512,
        24 * MIB,
    ];
    let mut live: Vec<(BlockId, BlockId)> = Vec::new();
    let mut next_segment = 1u64 << 36;
    let mut next_event = 0;
    let mut last = sizes[0];
    for (kind, units, pick) in ops {
        match kind {
            0 | 1 | 6 if !live.is_empty() => {
                let (x, y) = if kind == 6 {
                    live.pop().expect("not empty")
                } else {
                    live.swap_remove(pick as usize % live.len())
                };
                let events = [next_event];
                let tracking = if kind != 1 {
                    Tracking::NONE
                } else {
                    next_event += 1;
                    plain.record_stream(x, 5);
                    parking.record_stream(y, 5);
                    Tracking {
                        events: &events,
                        untracked: false,
                    }
                };
                proptest::prop_assert_eq!(
                    plain.free(x, &c, tracking),
                    parking.free(y, &c, tracking)
                );
            }
            2 => {
                let a = plain.complete_oldest_pending();
                proptest::prop_assert_eq!(a, parking.complete_oldest_pending());
            }
            3 => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                plain.release_free_segments(&mut a);
                parking.release_free_segments(&mut b);
                proptest::prop_assert_eq!(a, b);
                parking.settle();
                let (a, b) = (plain.plan_unmap(G), parking.plan_unmap(G));
                proptest::prop_assert_eq!(a.len(), b.len());
                for (a, b) in a.into_iter().zip(b) {
                    proptest::prop_assert_eq!((a.addr, a.len), (b.addr, b.len));
                    plain.commit_unmap(a);
                    parking.commit_unmap(b);
                }
            }
            5 => {
                // As the front resets peaks: under a lock that settles.
                parking.settle();
                plain.stats_mut().reset_peak();
                parking.stats_mut().reset_peak();
            }
            _ => {
                let size = if kind == 4 {
                    last
                } else {
                    sizes[units as usize % sizes.len()] + (units % 3) * 100
                };
                last = size;
                let r = Request::new(size, &c);
                let (a, b) = (plain.try_alloc(&r, &c), parking.try_alloc(&r, &c));
                proptest::prop_assert_eq!(
                    a.map(|x| plain.block_addr(x)),
                    b.map(|y| parking.block_addr(y))
                );
                let pair = match (a, b) {
                    (Some(x), Some(y)) => (x, y),
                    _ if expandable => match (plain.plan_map(&r, G), parking.plan_map(&r, G)) {
                        (Some(pa), Some(pb)) => {
                            (plain.commit_map(pa, &r, &c), parking.commit_map(pb, &r, &c))
                        }
                        (None, None) => continue,
                        (pa, pb) => {
                            return Err(proptest::test_runner::TestCaseError::fail(format!(
                                "map plans differ: {:?} / {:?}",
                                pa.map(|p| (p.addr, p.len)),
                                pb.map(|p| (p.addr, p.len))
                            )));
                        }
                    },
                    _ => {
                        let at = next_segment;
                        next_segment += 1 << 30;
                        (
                            plain.add_segment_and_alloc(at, r.segment_size, &r, &c),
                            parking.add_segment_and_alloc(at, r.segment_size, &r, &c),
                        )
                    }
                };
                live.push(pair);
            }
        }
        plain
            .check_invariants(&c)
            .map_err(proptest::test_runner::TestCaseError::fail)?;
        parking
            .check_invariants(&c)
            .map_err(proptest::test_runner::TestCaseError::fail)?;
        proptest::prop_assert_eq!(observed(&plain), observed(&parking));
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    #[test]
    fn parked_frees_answer_like_coalescing_at_once(
        expandable in proptest::prelude::any::<bool>(),
        max_split in proptest::prelude::any::<bool>(),
        ops in proptest::collection::vec((0u8..10, 0u64..1000, proptest::prelude::any::<u16>()), 1..120)
    ) {
        run(expandable, max_split, ops)?;
    }

    /// Mostly malloc+free pairs of varying sizes (the hot path's pattern, where a park
    /// is taken back or its space recut), with some blocks kept, frees of older blocks,
    /// peak resets and releases in between.
    #[test]
    fn pairs_of_varying_sizes_answer_like_coalescing_at_once(
        expandable in proptest::prelude::any::<bool>(),
        max_split in proptest::prelude::any::<bool>(),
        steps in proptest::collection::vec((0u8..16, 0u64..1000, proptest::prelude::any::<u16>()), 1..150)
    ) {
        let mut ops = Vec::new();
        for (k, units, pick) in steps {
            match k {
                // Allocate and free at once.
                0..=10 => ops.extend([(9, units, pick), (6, 0, 0)]),
                // Allocate and keep.
                11 | 12 => ops.push((9, units, pick)),
                // Free an older block, reset the peaks, release.
                13 => ops.push((0, units, pick)),
                14 => ops.push((5, units, pick)),
                _ => ops.push((3, units, pick)),
            }
        }
        run(expandable, max_split, ops)?;
    }
}

/// The pattern the park is for does park, and taking the block back goes through it.
#[test]
fn a_freed_block_is_parked_and_taken_back_by_the_same_request() {
    let c = cfg();
    let mut p = StreamPools::parking(0);
    let first = p.add_segment_and_alloc(0x1000_0000, 2 * MIB, &req(4096), &c);
    let a = p.try_alloc(&req(4000), &c).unwrap();
    p.free(a, &c, Tracking::NONE);
    assert!(p.is_parked());
    let b = p.try_alloc(&req(4096), &c).unwrap();
    assert!(!p.is_parked());
    assert_eq!(p.block_addr(b), p.block_addr(a));
    assert_eq!(p.block_requested(b), 4096);
    p.free(b, &c, Tracking::NONE);
    assert!(p.is_parked());
    // Another size settles the park first.
    let d = p.try_alloc(&req(8192), &c).unwrap();
    assert!(!p.is_parked());
    assert_eq!(p.block_addr(d), p.block_addr(a));
    p.free(first, &c, Tracking::NONE);
    p.free(d, &c, Tracking::NONE);
    p.settle();
    assert_eq!(p.free_bytes(), 2 * MIB);
    p.check_invariants(&c).unwrap();
}

/// The peaks of `inactive_split` that a free and its retake pass through (the coalesced
/// block in, its pieces out) are booked as coalescing at once books them, with pieces
/// beside the take (its bytes peak) and with none (its count peak).
#[test]
fn cycles_book_the_peaks_coalescing_passes_through() {
    let c = cfg();
    for with_piece in [true, false] {
        let mut plain = StreamPools::new(0);
        let mut parking = StreamPools::parking(0);
        let mut takes = Vec::new();
        for p in [&mut plain, &mut parking] {
            let x = p.add_segment_and_alloc(0x1000_0000, 2 * MIB, &req(4096), &c);
            let y = p.try_alloc(&req(4096), &c).unwrap();
            if !with_piece {
                // Fence y in: a live block after it, then y freed and taken again, so the
                // take leaves no free piece beside it.
                let _z = p.try_alloc(&req(4096), &c).unwrap();
                p.free(y, &c, Tracking::NONE);
                p.settle();
                let again = p.try_alloc(&req(4096), &c).unwrap();
                assert_eq!(p.block_addr(again), p.block_addr(y));
                takes.push(again);
            } else {
                takes.push(y);
            }
            let _ = x;
            p.settle();
            p.stats_mut().reset_peak();
        }
        let (mut a, mut b) = (takes[0], takes[1]);
        for _ in 0..3 {
            plain.free(a, &c, Tracking::NONE);
            parking.free(b, &c, Tracking::NONE);
            assert!(parking.is_parked());
            a = plain.try_alloc(&req(4096), &c).unwrap();
            b = parking.try_alloc(&req(4096), &c).unwrap();
        }
        parking.settle();
        assert_eq!(plain.stats(), parking.stats(), "with_piece: {with_piece}");
        let st = plain.stats();
        if with_piece {
            assert!(st.inactive_split_bytes[0].peak > st.inactive_split_bytes[0].current);
        } else {
            assert!(st.inactive_split[0].peak > st.inactive_split[0].current);
        }
    }
}

/// A recut is refused when the pool holds other free space: here a free page that the
/// full path's placement prefers (it is the smaller block) for a request of another size
/// than the parked block's.
#[test]
fn a_recut_leaves_a_better_placement_elsewhere_to_the_full_path() {
    // Sizes by index into `run`'s table: 27 is G, 48 is 3 MiB + 512, 36 is G - 512.
    let ops = vec![
        (9, 27, 0), // a page
        (9, 27, 0), // another
        (9, 48, 0), // two pages, mostly used
        (0, 0, 0),  // the first page freed: a free whole page (the last block moves first)
        (0, 0, 0),  // the two pages freed: free whole pages after the second page
        (9, 48, 0), // taken again from the two pages (the single page is too small)
        (6, 0, 0),  // freed: parked
        (9, 36, 0), // another size: the single free page is the better placement
    ];
    run(true, false, ops).unwrap();
}

/// Recuts between two oversize sizes (with `max_split_size_mb:20`) book the oversize
/// statistics as the full path does.
#[test]
fn recuts_between_oversize_blocks_book_them_as_the_full_path_does() {
    // Sizes by index into `run`'s table: 19 is 24 MiB + 100, 39 is 24 MiB.
    let ops = vec![
        (9, 19, 0),
        (6, 0, 0),
        (9, 39, 0),
        (6, 0, 0),
        (9, 19, 0),
        (6, 0, 0),
        (9, 39, 0),
    ];
    run(true, true, ops).unwrap();
}

/// A park in a fixed segment is not recut while the stream has expandable segments: the
/// full path then looks there first, and a small request may fit at no new page in a
/// partial free block of the large pool's segment that the take's larger request did not
/// fit in.
#[test]
fn a_park_in_a_fixed_segment_beside_expandable_ones_takes_the_full_path() {
    let c = Config {
        expandable_segments: true,
        ..Config::default()
    };
    let mut plain = StreamPools::new(0);
    let mut parking = StreamPools::parking(0);
    let mut addrs = Vec::new();
    for p in [&mut plain, &mut parking] {
        p.add_expandable_segment(1 << 40, 1 << 30, PoolKind::Small, G);
        p.add_expandable_segment(1 << 41, 1 << 30, PoolKind::Large, G);
        // Two pages mapped in the large pool, most of the second used: a partial free
        // block of about 1 MiB after it.
        let big = Request::new(3 * MIB + 512, &c);
        let plan = p.plan_map(&big, G).unwrap();
        p.commit_map(plan, &big, &c);
        // A fixed small segment, wholly free, then a 1 MiB take from it (the partial
        // block is too small for it): the take is remembered, the rest stays free.
        let x = p.add_segment_and_alloc(1 << 36, 2 * MIB, &req(MIB), &c);
        p.free(x, &c, Tracking::NONE);
        p.settle();
        let a = p.try_alloc(&req(MIB), &c).unwrap();
        assert_eq!(p.block_addr(a), 1 << 36);
        p.free(a, &c, Tracking::NONE);
        // A small request: it fits the large pool's partial block at no new page.
        let b = p.try_alloc(&req(4096), &c).unwrap();
        addrs.push(p.block_addr(b));
    }
    assert_eq!(addrs[0], addrs[1]);
    assert!(addrs[0] > 1 << 41, "placed in the large pool's segment");
    parking.settle();
    assert_eq!(plain.stats(), parking.stats());
}
