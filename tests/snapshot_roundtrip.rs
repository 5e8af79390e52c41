//! What cudalloc writes as a snapshot (`CachingAllocator::snapshot_pickle`), `cudalloc
//! replay` reads: history switched off and on, expandable segments, several streams and
//! devices, and each setting in the form PyTorch writes it.

use cudalloc::backend::SimBackend;
use cudalloc::replay::{ReplayOptions, replay_device};
use cudalloc::trace::{EventKind, parse_trace};
use cudalloc::{CachingAllocator, Config};
use serde_pickle::{DeOptions, HashableValue, Value};

const MIB: u64 = 1 << 20;

fn replays(bytes: &[u8]) -> cudalloc::trace::Trace {
    let t = parse_trace("mine.pickle", bytes).unwrap_or_else(|e| panic!("{e}"));
    for d in &t.devices {
        let r = replay_device(&t, d, &ReplayOptions::default(), |_| {})
            .unwrap_or_else(|e| panic!("device {}: {e}", d.device));
        assert!(r.peak_reserved >= r.peak_allocated.min(r.peak_reserved));
    }
    t
}

#[test]
fn history_switched_off_and_on_reads_with_a_note() {
    let alloc = CachingAllocator::new(SimBackend::new(1 << 30), Config::default()).unwrap();
    alloc.record_history(true, 10_000);
    let a = alloc.allocate_raw(0, 4 * MIB, 0).unwrap();
    let keep = alloc.allocate_raw(0, MIB, 0).unwrap();
    alloc.record_history(false, 10_000);
    alloc.free_raw(0, a).unwrap(); // unrecorded
    let b = alloc.allocate_raw(0, 4 * MIB, 0).unwrap(); // unrecorded, same block
    alloc.free_raw(0, keep).unwrap(); // unrecorded
    alloc.record_history(true, 10_000);
    alloc.free_raw(0, b).unwrap();
    let c = alloc.allocate_raw(0, 4 * MIB, 0).unwrap();
    let d = alloc.allocate_raw(0, MIB, 0).unwrap();
    assert_eq!(a, c, "the cache hands the same block out again");
    assert_eq!(keep, d);
    let t = replays(&alloc.snapshot_pickle().unwrap());
    let dev = &t.devices[0];
    assert!(
        dev.notes.iter().any(|n| n.contains("gap in the history")),
        "{:?}",
        dev.notes
    );
    let allocs = dev
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Alloc)
        .count();
    assert_eq!(allocs, 4, "{:?}", dev.events);
    alloc.free_raw(0, c).unwrap();
    alloc.free_raw(0, d).unwrap();
}

#[test]
fn expandable_segments_round_trip() {
    let cfg = Config::parse("expandable_segments:True").unwrap();
    let alloc = CachingAllocator::new(SimBackend::new(1 << 30), cfg.clone()).unwrap();
    alloc.record_history(true, 10_000);
    let mut keep = Vec::new();
    for i in 0..40u64 {
        let p = alloc.allocate_raw(0, (i % 5 + 1) * 3 * MIB, 0).unwrap();
        if i % 2 == 0 {
            keep.push(p);
        } else {
            alloc.free_raw(0, p).unwrap();
        }
    }
    let t = replays(&alloc.snapshot_pickle().unwrap());
    assert_eq!(t.devices[0].settings.as_ref(), Some(&cfg));
    for p in keep {
        alloc.free_raw(0, p).unwrap();
    }
}

#[test]
fn several_streams_and_devices_round_trip() {
    let backend = SimBackend::with_devices(2, 1 << 30);
    let s1 = backend.create_stream();
    let s2 = backend.create_stream();
    let alloc = CachingAllocator::new(backend, Config::default()).unwrap();
    alloc.record_history(true, 10_000);
    let mut held = Vec::new();
    for i in 0..30u64 {
        let dev = (i % 2) as usize;
        let stream = [0, s1, s2][(i % 3) as usize];
        held.push((
            dev,
            alloc.allocate_raw(dev, (i + 1) * 100_000, stream).unwrap(),
        ));
    }
    for (dev, p) in held.drain(..).step_by(2) {
        alloc.free_raw(dev, p).unwrap();
    }
    let t = replays(&alloc.snapshot_pickle().unwrap());
    assert_eq!(t.devices.len(), 2);
    let streams: std::collections::HashSet<u64> = t
        .devices
        .iter()
        .flat_map(|d| d.events.iter().map(|e| e.stream))
        .collect();
    assert!(
        streams.contains(&s1) && streams.contains(&s2),
        "{streams:?}"
    );
}

#[test]
fn settings_round_trip_in_pytorchs_form() {
    for conf in [
        "roundup_power2_divisions:[2:8,16:2,>:1]",
        "roundup_power2_divisions:4",
        "max_split_size_mb:128,garbage_collection_threshold:0.6",
        "max_non_split_rounding_mb:64,max_split_size_mb:256",
        "",
    ] {
        let cfg = Config::parse(conf).unwrap();
        let alloc = CachingAllocator::new(SimBackend::new(1 << 30), cfg.clone()).unwrap();
        alloc.record_history(true, 100);
        let p = alloc.allocate_raw(0, 3 * MIB, 0).unwrap();
        let bytes = alloc.snapshot_pickle().unwrap();
        let t = replays(&bytes);
        // The snapshot records expandable_segments as in force (here the default, True),
        // which reads back as asked for, with the default's 20 MiB step for large-pool
        // growth (an explicit `expandable_segments:True` maps exact pages).
        let mut want = cfg.clone();
        want.expandable_segments_set = true;
        want.expandable_min_map = Some(20 * MIB);
        assert_eq!(t.devices[0].settings.as_ref(), Some(&want), "{conf}");
        // The divisions are a dict keyed by the interval in MiB, as PyTorch writes them.
        let v = serde_pickle::value_from_slice(&bytes, DeOptions::new()).unwrap();
        let Value::Dict(root) = v else { panic!() };
        let Some(Value::Dict(s)) = root.get(&HashableValue::String("allocator_settings".into()))
        else {
            panic!("no settings")
        };
        let Some(Value::Dict(r)) = s.get(&HashableValue::String("roundup_power2_divisions".into()))
        else {
            panic!("roundup_power2_divisions is not a dict")
        };
        assert_eq!(r.len(), 16);
        assert!(r.contains_key(&HashableValue::String("32768".into())));
        alloc.free_raw(0, p).unwrap();
    }
}
