//! The snapshot export: PyTorch's structure, events in order, readable by pickle.

use cudalloc::history::Action;
use cudalloc::{CachingAllocator, Config, SimBackend};
use serde_pickle::{DeOptions, HashableValue, Value};

fn get<'a>(v: &'a Value, k: &str) -> &'a Value {
    match v {
        Value::Dict(d) => d
            .get(&HashableValue::String(k.into()))
            .unwrap_or_else(|| panic!("missing key {k}")),
        _ => panic!("not a dict looking up {k}"),
    }
}

fn list(v: &Value) -> &Vec<Value> {
    match v {
        Value::List(l) => l,
        _ => panic!("not a list: {v:?}"),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::I64(i) => *i,
        _ => panic!("not an int: {v:?}"),
    }
}

#[test]
fn snapshot_has_segments_blocks_and_history() {
    let alloc = CachingAllocator::new(SimBackend::new(1 << 30), Config::fixed_segments()).unwrap();
    alloc.record_history(true, 1000);
    let a = alloc.malloc(1000, 0).unwrap();
    let b = alloc.malloc(5 << 20, 0).unwrap();
    let a_ptr = a.ptr();
    drop(a);
    let h = alloc.history(0).unwrap();
    let actions: Vec<Action> = h.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            Action::SegmentAlloc,
            Action::Alloc,
            Action::SegmentAlloc,
            Action::Alloc,
            Action::FreeRequested,
            Action::FreeCompleted,
        ]
    );
    assert_eq!(h[1].addr, a_ptr);
    assert_eq!(h[1].size, 1000);
    assert_eq!(h[2].size, 20 << 20);

    let bytes = alloc.snapshot_pickle().unwrap();
    let v = serde_pickle::value_from_slice(&bytes, DeOptions::new()).unwrap();
    let segs = list(get(&v, "segments"));
    assert_eq!(segs.len(), 2);
    let total: i64 = segs.iter().map(|s| int(get(s, "total_size"))).sum();
    assert_eq!(total, (2 << 20) + (20 << 20));
    for s in segs {
        let blocks = list(get(s, "blocks"));
        let sum: i64 = blocks.iter().map(|b| int(get(b, "size"))).sum();
        assert_eq!(sum, int(get(s, "total_size")), "blocks tile the segment");
    }
    let large = segs
        .iter()
        .find(|s| matches!(get(s, "segment_type"), Value::String(t) if t == "large"))
        .unwrap();
    assert_eq!(int(get(large, "allocated_size")), 5 << 20);
    let traces = list(get(&v, "device_traces"));
    assert_eq!(traces.len(), 1);
    assert_eq!(list(&traces[0]).len(), 6);
    drop(b);

    // Python's own pickle reads it, when python3 is around.
    let path = std::env::temp_dir().join(format!("cudalloc-snap-{}.pickle", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    match std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import pickle,sys; d=pickle.load(open(sys.argv[1],'rb')); \
             assert {'segments','device_traces','allocator_settings'} <= set(d); \
             print(len(d['segments']), len(d['device_traces'][0]))",
        )
        .arg(&path)
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "python could not load the snapshot: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2 6");
        }
        Err(_) => eprintln!("python3 not found: skipping the Python load check"),
    }
    let _ = std::fs::remove_file(path);
}
