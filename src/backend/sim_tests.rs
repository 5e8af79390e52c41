//! Tests of the simulated backend.

use super::*;

const G: u64 = SIM_GRANULARITY;

#[test]
fn virtual_memory_maps_pages_into_reserved_ranges() {
    let b = SimBackend::new(8 * G);
    assert_eq!(b.vmm_granularity(0).unwrap(), G);
    let r = b.reserve_range(0, 16 * G).unwrap();
    assert_eq!(r % G, 0);
    b.map_pages(0, r, 3 * G).unwrap();
    // Host-backed: the mapped pages are writable.
    // SAFETY: the first three pages of the range are mapped read-write.
    unsafe { std::ptr::write_bytes(r as *mut u8, 7, (3 * G) as usize) };
    assert_eq!(b.counts().used, 3 * G);
    assert_eq!(b.mapped_pages(0), vec![r, r + G, r + 2 * G]);
    // Capacity counts mapped pages.
    assert_eq!(
        b.map_pages(0, r + 3 * G, 6 * G),
        Err(BackendError::OutOfMemory)
    );
    assert!(
        b.mapped_pages(0).len() == 3,
        "a failed map leaves nothing mapped"
    );
    // Misuse is an error, not a crash.
    assert!(b.map_pages(0, r + G, G).is_err(), "double map");
    assert!(b.map_pages(0, r + 100, G).is_err(), "unaligned");
    assert!(b.map_pages(0, r + 16 * G, G).is_err(), "outside the range");
    assert!(b.unmap_pages(0, r + 5 * G, G).is_err(), "not mapped");
    assert!(b.free_range(0, r, 16 * G).is_err(), "pages still mapped");
    b.unmap_pages(0, r + G, G).unwrap();
    assert_eq!(b.counts().used, 2 * G);
    b.unmap_pages(0, r, G).unwrap();
    b.unmap_pages(0, r + 2 * G, G).unwrap();
    b.free_range(0, r, 16 * G).unwrap();
    assert_eq!(b.counts().used, 0);
    let c = b.counts();
    assert_eq!((c.reserve_range, c.free_range), (1, 2));
}

#[test]
fn map_failures_can_be_injected() {
    let b = SimBackend::new(64 * G).virtual_only();
    let r = b.reserve_range(0, 4 * G).unwrap();
    b.fail_nth_map(2, BackendError::OutOfMemory);
    b.map_pages(0, r, G).unwrap();
    assert_eq!(b.map_pages(0, r + G, G), Err(BackendError::OutOfMemory));
    b.map_pages(0, r + G, G).unwrap();
    assert_eq!(b.counts().used, 2 * G);
}
