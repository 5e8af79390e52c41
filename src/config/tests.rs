//! Tests of the configuration parser.

use super::*;

fn err(s: &str) -> ConfigError {
    Config::parse(s).expect_err(s)
}

#[test]
fn empty_and_whitespace_are_default() {
    assert_eq!(Config::parse("").unwrap(), Config::default());
    assert_eq!(Config::parse("  ").unwrap(), Config::default());
    assert_eq!(Config::default().to_string(), "");
}

#[test]
fn every_key() {
    let c = Config::parse(
        "max_split_size_mb:128, max_non_split_rounding_mb:64,garbage_collection_threshold:0.6,\
         expandable_segments:False,backend:native,roundup_power2_divisions:4,\
         expandable_min_map_mb:8",
    )
    .unwrap();
    assert_eq!(c.expandable_min_map, Some(8 << 20));
    assert_eq!(c.large_min_map(), 8 << 20);
    assert_eq!(c.max_split_size, 128 << 20);
    assert_eq!(c.max_non_split_rounding, 64 << 20);
    assert_eq!(c.garbage_collection_threshold, 0.6);
    assert!(!c.expandable_segments);
    assert_eq!(c.roundup_power2_divisions, [4; ROUNDUP_POWER2_INTERVALS]);
    assert_eq!(c.roundup_divisions_for(1), 4);
}

#[test]
fn roundup_list_form_follows_documented_intervals() {
    let c = Config::parse("roundup_power2_divisions:[256:1,512:2,1024:4,>:8]").unwrap();
    let t = c.roundup_power2_divisions;
    assert!(t[..8].iter().all(|&v| v == 1), "{t:?}");
    assert_eq!(t[8], 2, "256-512 MiB");
    assert_eq!(t[9], 4, "512 MiB-1 GiB");
    assert!(t[10..].iter().all(|&v| v == 8));
    assert_eq!(c.roundup_divisions_for(100 << 20), 1);
    assert_eq!(c.roundup_divisions_for(300 << 20), 2);
    assert_eq!(c.roundup_divisions_for(700 << 20), 4);
    assert_eq!(c.roundup_divisions_for(5 << 30), 8);
    // Without '>', the rest stays off.
    let c = Config::parse("roundup_power2_divisions:[64:8,256:4]").unwrap();
    assert_eq!(c.roundup_divisions_for(10 << 20), 8);
    assert_eq!(c.roundup_divisions_for(100 << 20), 4);
    assert_eq!(c.roundup_divisions_for(300 << 20), 0);
}

#[test]
fn display_round_trips() {
    for s in [
        "max_split_size_mb:200",
        "roundup_power2_divisions:[64:8,256:4,>:1]",
        "roundup_power2_divisions:2",
        "garbage_collection_threshold:0.8,max_non_split_rounding_mb:40",
        "expandable_min_map_mb:0",
        "expandable_segments:True,expandable_min_map_mb:64",
    ] {
        let c = Config::parse(s).unwrap();
        let back = Config::parse(&c.to_string()).unwrap();
        assert_eq!(c, back, "{s} -> {c}");
    }
}

#[test]
fn the_large_pool_maps_20_mib_by_default_and_exact_pages_with_expandable_segments_true() {
    assert_eq!(Config::default().large_min_map(), 20 << 20);
    let c = Config::parse("max_split_size_mb:128").unwrap();
    assert_eq!(c.large_min_map(), 20 << 20);
    assert_eq!(
        Config::parse("expandable_segments:True")
            .unwrap()
            .large_min_map(),
        0
    );
    let c = Config::parse("expandable_segments:True,expandable_min_map_mb:20").unwrap();
    assert_eq!(c.large_min_map(), 20 << 20);
    assert_eq!(
        Config::parse("expandable_min_map_mb:0")
            .unwrap()
            .large_min_map(),
        0
    );
    let e = err("expandable_min_map_mb:4096");
    assert_eq!(e.key.as_deref(), Some("expandable_min_map_mb"));
    assert!(e.message.contains("must be <= 1024"), "{e}");
}

#[test]
fn errors_name_key_and_position() {
    let e = err("max_split_size_mb:10");
    assert_eq!(e.key.as_deref(), Some("max_split_size_mb"));
    assert_eq!(e.position, 18);
    assert!(e.to_string().contains("must be >= 20"), "{e}");

    let e = err("max_split_size_mb:128,foo:1");
    assert_eq!(e.key.as_deref(), Some("foo"));
    assert_eq!(e.position, 22);
    assert!(e.message.contains("unknown key"));

    let e = err("garbage_collection_threshold:1.0");
    assert_eq!(e.position, 29);
    let e = err("garbage_collection_threshold:abc");
    assert!(e.message.contains("not a number"));
    let e = err("max_split_size_mb");
    assert_eq!(e.position, 17);
    assert!(e.message.contains("expected ':'"));
    let e = err("max_split_size_mb:-5");
    assert!(e.message.contains("not a non-negative integer"));
    let e = err("roundup_power2_divisions:3");
    assert!(e.message.contains("power of two"));
    let e = err("roundup_power2_divisions:[64:8,256:4");
    assert_eq!(e.position, 25);
    assert!(e.message.contains("unbalanced"));
    let e = err("roundup_power2_divisions:[100:8]");
    assert!(e.message.contains("not a power of two"));
    let e = err("roundup_power2_divisions:[>:1,64:2]");
    assert!(e.message.contains("last"));
    assert!(
        Config::parse("expandable_segments:True")
            .unwrap()
            .expandable_segments
    );
    let e = err("expandable_segments:maybe");
    assert!(e.message.contains("True or False"));
    let e = err("backend:cudaMallocAsync");
    assert!(e.message.contains("itself the allocator"));
    let e = err("pinned_use_cuda_host_register:True");
    assert!(e.message.contains("not supported by cudalloc"));
    let e = err("max_split_size_mb:128,");
    assert!(e.message.contains("after ','"));
    let e = err("max_split_size_mb:128 max_non_split_rounding_mb:30");
    assert!(e.message.contains("expected ','"));
}

#[test]
fn pytorch_variable_is_lenient_for_unsupported_keys_only() {
    let (c, notes) = Config::parse_pytorch(
        "PYTORCH_CUDA_ALLOC_CONF",
        "max_split_size_mb:64,pinned_use_cuda_host_register:True,mystery:[1:2]",
    )
    .unwrap();
    assert_eq!(c.max_split_size, 64 << 20);
    assert_eq!(notes.len(), 2);
    assert!(
        notes[0].contains("'pinned_use_cuda_host_register'"),
        "{notes:?}"
    );
    assert!(notes[1].contains("'mystery'"));
    assert!(Config::parse_pytorch("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:5").is_err());
}

#[test]
fn environment_precedence() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
    };
    let (c, n) = Config::from_vars(vars(&[
        ("CUDALLOC_CONF", "max_split_size_mb:100"),
        ("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:200"),
    ]))
    .unwrap();
    assert_eq!(c.max_split_size, 100 << 20);
    assert!(n.is_empty());
    let (c, _) = Config::from_vars(vars(&[
        ("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:200"),
        ("PYTORCH_ALLOC_CONF", "max_split_size_mb:300"),
    ]))
    .unwrap();
    assert_eq!(c.max_split_size, 200 << 20);
    let (c, n) = Config::from_vars(vars(&[(
        "PYTORCH_ALLOC_CONF",
        "release_lock_on_cudamalloc:True",
    )]))
    .unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(n.len(), 1);
    let e = Config::from_vars(vars(&[("CUDALLOC_CONF", "nope:1")])).unwrap_err();
    assert_eq!(e.source, "CUDALLOC_CONF");
    assert_eq!(Config::from_vars(|_| None).unwrap().0, Config::default());
}

#[test]
fn builders_validate() {
    assert!(Config::default().with_max_split_size_mb(10).is_err());
    assert_eq!(
        Config::default()
            .with_max_split_size_mb(64)
            .unwrap()
            .max_split_size,
        64 << 20
    );
    assert!(
        Config::default()
            .with_garbage_collection_threshold(1.5)
            .is_err()
    );
    assert!(Config::default().with_roundup_power2_divisions(6).is_err());
}
