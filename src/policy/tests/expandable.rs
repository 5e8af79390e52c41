//! Tests of expandable segments' placement, maps and unmaps (`policy/expandable.rs`).

use super::*;

const G: u64 = 2 * MIB;

fn pools() -> (StreamPools, Config) {
    let c = Config {
        expandable_segments: true,
        ..Config::default()
    };
    let mut p = StreamPools::new(0);
    p.add_expandable_segment(0x10_0000_0000, 64 * G, PoolKind::Large, G);
    (p, c)
}

#[test]
fn pages_are_mapped_at_the_lowest_room_and_merged() {
    let (mut p, c) = pools();
    p.check_invariants(&c).unwrap();
    let r = Request::new(3 * MIB, &c);
    let plan = p.plan_map(&r, G).unwrap();
    assert_eq!((plan.addr, plan.len), (0x10_0000_0000, 2 * G));
    let a = p.commit_map(plan, &r, &c);
    assert_eq!(p.block_size(a), 3 * MIB, "split: any remainder is kept");
    assert_eq!(p.mapped_bytes(), 4 * MIB);
    p.check_invariants(&c).unwrap();
    // The 1 MiB left over counts toward the next request's mapping.
    let r2 = Request::new(5 * MIB, &c);
    assert!(p.try_alloc(&r2, &c).is_none());
    let plan2 = p.plan_map(&r2, G).unwrap();
    assert_eq!((plan2.addr, plan2.len), (0x10_0000_0000 + 2 * G, 2 * G));
    let b = p.commit_map(plan2, &r2, &c);
    assert_eq!(p.block_addr(b), 0x10_0000_0000 + 3 * MIB);
    p.check_invariants(&c).unwrap();
    // Inactive split blocks are not counted in expandable segments (as in PyTorch).
    assert_eq!(p.stats().inactive_split[0].current, 0);
}

#[test]
fn free_pages_are_unmapped_and_holes_reused() {
    let (mut p, c) = pools();
    let r = Request::new(4 * MIB, &c);
    let ids: Vec<BlockId> = (0..4)
        .map(|_| {
            let plan = p.plan_map(&r, G).unwrap();
            p.commit_map(plan, &r, &c)
        })
        .collect();
    assert_eq!(p.mapped_bytes(), 16 * MIB);
    p.free(ids[1], &c, Tracking::NONE);
    p.free(ids[2], &c, Tracking::NONE);
    p.check_invariants(&c).unwrap();
    let plans = p.plan_unmap(G);
    assert_eq!(plans.len(), 1);
    assert_eq!(
        (plans[0].addr, plans[0].len),
        (0x10_0000_0000 + 4 * MIB, 8 * MIB)
    );
    p.commit_unmap(plans[0]);
    assert_eq!(p.mapped_bytes(), 8 * MIB);
    p.check_invariants(&c).unwrap();
    // A mapped run per side of the hole.
    assert_eq!(p.segments().len(), 2);
    // The hole is reused before the tail.
    let plan = p.plan_map(&Request::new(6 * MIB, &c), G).unwrap();
    assert_eq!(plan.addr, 0x10_0000_0000 + 4 * MIB);
    // Everything free and unmapped: the segment can be released.
    p.free(ids[0], &c, Tracking::NONE);
    p.free(ids[3], &c, Tracking::NONE);
    for plan in p.plan_unmap(G) {
        p.commit_unmap(plan);
    }
    p.check_invariants(&c).unwrap();
    let mut out = Vec::new();
    p.release_empty_expandable(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].size, 64 * G);
    assert_eq!(p.segment_count(), 0);
    p.check_invariants(&c).unwrap();
}

#[test]
fn partial_pages_stay_mapped_around_live_blocks() {
    let (mut p, c) = pools();
    let r = Request::new(2 * MIB + 512, &c);
    let a = p.commit_map(p.plan_map(&r, G).unwrap(), &r, &c);
    let b = p.try_alloc(&Request::new(MIB + 512, &c), &c).unwrap();
    assert_eq!(p.block_addr(b), 0x10_0000_0000 + 2 * MIB + 512);
    p.free(a, &c, Tracking::NONE);
    // [0, 2 MiB + 512) free, then the live block on page 1: only page 0 unmaps.
    let plans = p.plan_unmap(G);
    assert_eq!(plans.len(), 1);
    assert_eq!((plans[0].addr, plans[0].len), (0x10_0000_0000, G));
    p.commit_unmap(plans[0]);
    p.check_invariants(&c).unwrap();
    assert_eq!(p.mapped_bytes(), G);
}

#[test]
fn new_pages_join_the_free_pieces_around_a_hole() {
    let (mut p, c) = pools();
    // Three 3 MiB blocks: pages 0..=4 mapped, x at 0, y at 3 MiB, z at 6 MiB.
    let r = Request::new(3 * MIB, &c);
    let x = p.commit_map(p.plan_map(&r, G).unwrap(), &r, &c);
    let y = p.commit_map(p.plan_map(&r, G).unwrap(), &r, &c);
    let z = p.commit_map(p.plan_map(&r, G).unwrap(), &r, &c);
    assert_eq!(p.block_addr(z), 0x10_0000_0000 + 6 * MIB);
    p.free(y, &c, Tracking::NONE);
    // y's whole page [4, 6) MiB is unmapped; [3, 4) MiB stays mapped free.
    for plan in p.plan_unmap(G) {
        p.commit_unmap(plan);
    }
    p.check_invariants(&c).unwrap();
    // 3 MiB fits the hole with the free MiB before it: one page, not two.
    let plan = p.plan_map(&r, G).unwrap();
    assert_eq!(plan.len, G);
    let w = p.commit_map(plan, &r, &c);
    assert_eq!(p.block_addr(w), 0x10_0000_0000 + 3 * MIB);
    p.check_invariants(&c).unwrap();
    // Free x: page [0, 2) MiB unmaps, [2, 3) MiB stays mapped free *after* the hole.
    p.free(x, &c, Tracking::NONE);
    for plan in p.plan_unmap(G) {
        p.commit_unmap(plan);
    }
    let plan = p.plan_map(&r, G).unwrap();
    assert_eq!((plan.addr, plan.len), (0x10_0000_0000, G));
    let v = p.commit_map(plan, &r, &c);
    assert_eq!(
        p.block_addr(v),
        0x10_0000_0000,
        "joined with the piece after"
    );
    p.check_invariants(&c).unwrap();
    assert_eq!(p.block_state(z), Some(BlockState::Allocated));
}

#[test]
fn max_split_size_does_not_apply_inside_expandable_segments() {
    let (mut p, mut c) = pools();
    c.max_split_size = 40 * MIB;
    let big = Request::new(64 * MIB, &c);
    let x = p.commit_map(p.plan_map(&big, G).unwrap(), &big, &c);
    p.free(x, &c, Tracking::NONE);
    // A small request may use (and split) the large free block.
    let y = p.try_alloc(&Request::new(30 * MIB, &c), &c).unwrap();
    assert_eq!(p.block_size(y), 30 * MIB);
    p.check_invariants(&c).unwrap();
}
#[test]
fn placement_prefers_pages_live_blocks_already_touch() {
    let (mut p, c) = pools();
    let base = 0x10_0000_0000;
    // a = [0, 5.5) MiB on pages 0..=2; b = [5.5, 6.5 MiB + 512) shares page 2 with it.
    let r = Request::new(5 * MIB + MIB / 2, &c);
    let a = p.commit_map(p.plan_map(&r, G).unwrap(), &r, &c);
    let r = Request::new(MIB + 512, &c);
    let b = p.commit_map(p.plan_map(&r, G).unwrap(), &r, &c);
    assert_eq!(p.block_addr(b), base + 5 * MIB + MIB / 2);
    p.free(a, &c, Tracking::NONE);
    // 1.5 MiB does not fit in what b left free on page 3. Best fit at the start of
    // [0, 5.5) MiB would pin page 0; its end fits on page 2, which b keeps mapped anyway.
    let x = p.try_alloc(&Request::new(MIB + MIB / 2, &c), &c).unwrap();
    assert_eq!(p.block_addr(x), base + 4 * MIB);
    p.check_invariants(&c).unwrap();
    let plans = p.plan_unmap(G);
    assert_eq!(plans.len(), 1);
    assert_eq!((plans[0].addr, plans[0].len), (base, 2 * G));
    p.commit_unmap(plans[0]);
    p.check_invariants(&c).unwrap();
    // A free block that starts inside a page a live block uses is used from its start.
    p.free(b, &c, Tracking::NONE);
    let y = p.try_alloc(&Request::new(MIB + 512, &c), &c).unwrap();
    assert_eq!(p.block_addr(y), base + 5 * MIB + MIB / 2);
    p.check_invariants(&c).unwrap();
}

#[test]
fn a_request_borrows_a_mapped_page_of_the_other_pool_before_touching_a_new_one() {
    let (mut p, c) = pools();
    let base = 0x10_0000_0000;
    p.add_expandable_segment(0x20_0000_0000, 8 * G, PoolKind::Small, G);
    // Large: [0, 3) MiB live, [3, 4) MiB mapped free on the live block's page.
    let r3 = Request::new(3 * MIB, &c);
    let big = p.commit_map(p.plan_map(&r3, G).unwrap(), &r3, &c);
    // The small pool has nothing mapped: a new small page would be needed.
    let small = Request::new(512 * 1024, &c);
    assert_eq!(small.pool, PoolKind::Small);
    let s = p.try_alloc(&small, &c).unwrap();
    assert_eq!(p.block_addr(s), base + 3 * MIB);
    assert_eq!(
        p.block_pool(s),
        PoolKind::Large,
        "counted where its memory is"
    );
    assert_eq!(
        p.stats().allocated_bytes[2].current as u64,
        3 * MIB + 512 * 1024
    );
    assert_eq!(p.stats().allocated_bytes[1].current, 0);
    p.check_invariants(&c).unwrap();
    // Once the small pool has room on a page it already uses, it serves its own.
    let own = p.commit_map(p.plan_map(&small, G).unwrap(), &small, &c);
    assert_eq!(p.block_pool(own), PoolKind::Small);
    let t = p.try_alloc(&small, &c).unwrap();
    assert_eq!(p.block_pool(t), PoolKind::Small);
    // Freed, the borrowed block goes back to the large pool's free space.
    p.free(s, &c, Tracking::NONE);
    p.check_invariants(&c).unwrap();
    assert_eq!(p.stats().allocated_bytes[2].current as u64, 3 * MIB);
    p.free(big, &c, Tracking::NONE);
    for plan in p.plan_unmap(G) {
        p.commit_unmap(plan);
    }
    assert_eq!(p.mapped_bytes(), G, "only the small pool's page stays");
    p.check_invariants(&c).unwrap();
}
#[test]
fn whole_page_requests_are_placed_page_aligned() {
    let (mut p, c) = pools();
    let base = 0x10_0000_0000;
    // a = [0, 1) MiB, then 7 MiB free up to the end of page 3.
    let r1 = Request::new(MIB + 512, &c);
    let a = p.commit_map(p.plan_map(&r1, G).unwrap(), &r1, &c);
    let r7 = Request::new(7 * MIB - 512, &c);
    let f = p.commit_map(p.plan_map(&r7, G).unwrap(), &r7, &c);
    assert_eq!(p.mapped_bytes(), 8 * MIB);
    p.free(f, &c, Tracking::NONE);
    // Two pages: right after a they would span pages 0..=2 and keep page 0 mapped once a
    // is freed; aligned on page 1 they span only their own two.
    let w = p.try_alloc(&Request::new(2 * G, &c), &c).unwrap();
    assert_eq!(p.block_addr(w), base + G);
    p.free(a, &c, Tracking::NONE);
    let plans = p.plan_unmap(G);
    assert_eq!(
        plans.iter().map(|u| (u.addr, u.len)).collect::<Vec<_>>(),
        vec![(base, G), (base + 3 * G, G)]
    );
    p.check_invariants(&c).unwrap();
}
/// Pages touched by allocated (or pending) blocks, by brute force over the layout.
fn touched_pages(p: &StreamPools) -> std::collections::BTreeSet<u64> {
    let mut t = std::collections::BTreeSet::new();
    for s in p.segments() {
        for b in s.blocks.iter().filter(|b| b.state != BlockState::Free) {
            t.extend(b.addr / G..=(b.addr + b.size - 1) / G);
        }
    }
    t
}

fn brute_new_pages(touched: &std::collections::BTreeSet<u64>, a: u64, r: u64) -> u64 {
    (a / G..=(a + r - 1) / G)
        .filter(|pg| !touched.contains(pg))
        .count() as u64
}

type Step = Result<(), proptest::test_runner::TestCaseError>;

/// Drive fresh pools through `ops`: (0, _, pick) frees a live block; any other kind
/// allocates `units` × 512 bytes, from the cache or by mapping pages (kind 2 then unmaps
/// every free page). `before` sees each request before it is served and returns what
/// `after` gets with the cached block that served it (`None`: nothing cached fitted).
fn drive<T>(
    ops: Vec<(u8, u64, u16)>,
    mut before: impl FnMut(
        &mut StreamPools,
        &Request,
    ) -> Result<T, proptest::test_runner::TestCaseError>,
    mut after: impl FnMut(&StreamPools, &Request, Option<BlockId>, T) -> Step,
) -> Step {
    let (mut p, c) = pools();
    let mut live: Vec<BlockId> = Vec::new();
    for (kind, units, pick) in ops {
        if kind == 0 && !live.is_empty() {
            let id = live.swap_remove(pick as usize % live.len());
            p.free(id, &c, Tracking::NONE);
            continue;
        }
        let r = Request::new(units * 512, &c);
        let seen = before(&mut p, &r)?;
        let cached = p.try_alloc(&r, &c);
        after(&p, &r, cached, seen)?;
        let id = match cached {
            Some(id) => id,
            None => match p.plan_map(&r, G) {
                Some(plan) => p.commit_map(plan, &r, &c),
                None => continue,
            },
        };
        live.push(id);
        p.check_invariants(&c)
            .map_err(proptest::test_runner::TestCaseError::fail)?;
        if kind == 2 {
            for plan in p.plan_unmap(G) {
                p.commit_unmap(plan);
            }
        }
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// The placement shortcuts (no scan when every free block is whole pages, no search
    /// of the other pool where no placement can be free, the large pool's scan stopping
    /// at the fewest pages possible) answer what the plain scan answers, for requests of
    /// both pools: sizes from 512 B (small pool) to about 20 MiB (ten pages).
    #[test]
    fn placement_shortcuts_answer_like_the_full_scan(
        ops in proptest::collection::vec((0u8..4, 1u64..40_000, proptest::prelude::any::<u16>()), 1..80)
    ) {
        drive(
            ops,
            |p, r| {
                if p.expandable_segment(r.pool).is_none() {
                    let base = if r.pool == PoolKind::Small { 1 << 40 } else { 1 << 41 };
                    p.add_expandable_segment(base, 1 << 30, r.pool, G);
                }
                proptest::prop_assert_eq!(
                    p.find_free_paged_with(r, true),
                    p.find_free_paged_with(r, false)
                );
                Ok(())
            },
            |_, _, _, ()| Ok(()),
        )?;
    }

    /// The page count behind each placement matches a brute-force count, and the cache
    /// serves a request at a placement costing the fewest new pages of all.
    #[test]
    fn placement_costs_match_brute_force(
        ops in proptest::collection::vec((0u8..3, 2049u64..24_576, proptest::prelude::any::<u16>()), 1..60)
    ) {
        drive(
            ops,
            |p, r| {
                proptest::prop_assert_eq!(r.pool, PoolKind::Large);
                let touched = touched_pages(p);
                let mut best = None::<u64>;
                for &(size, addr, _) in p.large.iter() {
                    if size < r.rounded {
                        continue;
                    }
                    for a in p.placements(addr, addr + size, r.rounded).into_iter().flatten() {
                        let n = p.new_pages(addr, addr + size, a, r.rounded);
                        proptest::prop_assert_eq!(n, brute_new_pages(&touched, a, r.rounded));
                        best = Some(best.map_or(n, |b| b.min(n)));
                    }
                }
                Ok((touched, best))
            },
            |p, r, cached, (touched, best)| {
                match cached {
                    Some(id) => {
                        let n = brute_new_pages(&touched, p.block_addr(id), r.rounded);
                        proptest::prop_assert_eq!(Some(n), best, "not the cheapest placement");
                    }
                    None => proptest::prop_assert!(best.is_none()),
                }
                Ok(())
            },
        )?;
    }
}
