//! The allocator settings a snapshot recorded (`allocator_settings`, a dict in PyTorch ≥ 2.x),
//! turned into a [`Config`].
//!
//! The settings are written back as a `CUDALLOC_CONF` string and parsed by [`Config`], so a
//! snapshot's settings are validated exactly as `--conf` validates them: a value `--conf`
//! refuses is an error here too, never clamped, cast or dropped. Keys cudalloc does not
//! implement (PyTorch's pinned-memory and locking settings) are ignored, as
//! `PYTORCH_CUDA_ALLOC_CONF`'s are. This module must not guess a value it cannot read.

use crate::config::{Config, ROUNDUP_POWER2_INTERVALS};

use super::pickle::PVal;

const MIB: i64 = 1 << 20;

/// A byte size PyTorch stores for a `*_mb` key: a whole number of MiB, or -1 (unlimited).
fn mib_key(s: &PVal, key: &str, conf_key: &str, parts: &mut Vec<String>) -> Result<(), String> {
    let Some(v) = s.get(key) else {
        return Ok(());
    };
    let Some(b) = v.as_i64().filter(|_| !matches!(v, PVal::Bool(_))) else {
        return Err(format!("allocator_settings.{key} is not an integer"));
    };
    if b == -1 || (key == "max_split_size" && b == i64::MAX) {
        return Ok(()); // unlimited (SIZE_MAX as PyTorch writes it)
    }
    if b <= 0 || b % MIB != 0 {
        return Err(format!(
            "allocator_settings.{key} = {b} is not a positive whole number of MiB"
        ));
    }
    if key == "max_non_split_rounding_size" && b == 20 * MIB {
        return Ok(()); // the default
    }
    parts.push(format!("{conf_key}:{}", b / MIB));
    Ok(())
}

/// The divisions per interval, from PyTorch's dict (`{"1": d, "2": d, … "32768": d}`, keys
/// in MiB) or the list older cudalloc snapshots wrote.
fn roundup_table(v: &PVal) -> Result<[u64; ROUNDUP_POWER2_INTERVALS], String> {
    let bad = |what: String| format!("allocator_settings.roundup_power2_divisions: {what}");
    let mut table = [0u64; ROUNDUP_POWER2_INTERVALS];
    let division = |d: &PVal| {
        d.as_i64()
            .filter(|&x| x >= 0 && !matches!(d, PVal::Bool(_)))
            .map(|x| x as u64)
            .ok_or_else(|| bad("a division is not a non-negative integer".into()))
    };
    if let Some(pairs) = v.pairs() {
        for (k, d) in pairs {
            let mb = k
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .or_else(|| k.as_i64().and_then(|i| u64::try_from(i).ok()))
                .filter(|mb| mb.is_power_of_two() && *mb < 1 << ROUNDUP_POWER2_INTERVALS)
                .ok_or_else(|| bad("a key is not a power-of-two size in MiB up to 32768".into()))?;
            table[mb.trailing_zeros() as usize] = division(&d)?;
        }
    } else if let Some(items) = v.items() {
        if items.len() != ROUNDUP_POWER2_INTERVALS {
            return Err(bad(format!(
                "{} entries, expected {ROUNDUP_POWER2_INTERVALS}",
                items.len()
            )));
        }
        for (t, d) in table.iter_mut().zip(&items) {
            *t = division(d)?;
        }
    } else {
        return Err(bad("neither a dict nor a list".into()));
    }
    Ok(table)
}

/// The settings of a snapshot whose root is `root`; `None` when it records none.
///
/// # Errors
/// A short description of the first setting that is malformed or that `--conf` refuses.
pub(crate) fn settings_of(root: &PVal) -> Result<Option<Config>, String> {
    let Some(s) = root.get("allocator_settings") else {
        return Ok(None);
    };
    let Some(pairs) = s.pairs() else {
        return Err("allocator_settings is not a dict".into());
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut parts = Vec::new();
    mib_key(&s, "max_split_size", "max_split_size_mb", &mut parts)?;
    mib_key(
        &s,
        "max_non_split_rounding_size",
        "max_non_split_rounding_mb",
        &mut parts,
    )?;
    if let Some(g) = s.get("garbage_collection_threshold") {
        let g = g
            .as_f64()
            .filter(|_| !matches!(g, PVal::Bool(_)))
            .ok_or("allocator_settings.garbage_collection_threshold is not a number")?;
        if g != 0.0 {
            parts.push(format!("garbage_collection_threshold:{g}"));
        }
    }
    match s.get("expandable_segments") {
        None | Some(PVal::Bool(false)) => {}
        Some(PVal::Bool(true)) => parts.push("expandable_segments:True".into()),
        Some(_) => return Err("allocator_settings.expandable_segments is not a bool".into()),
    }
    // Written by cudalloc's own snapshots only: the step expandable growth mapped in.
    let min_map = match s.get("expandable_min_map") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .filter(|&b| b >= 0 && b % MIB == 0 && !matches!(v, PVal::Bool(_)))
                .ok_or("allocator_settings.expandable_min_map is not a whole number of MiB")?
                as u64,
        ),
    };
    if let Some(r) = s.get("roundup_power2_divisions") {
        let t = roundup_table(&r)?;
        if t.iter().any(|&d| d != 0) {
            // Entry `2^(i+1):d` covers interval i alone; `>` the last one.
            let mut items: Vec<String> = (0..ROUNDUP_POWER2_INTERVALS - 1)
                .map(|i| format!("{}:{}", 1u64 << (i + 1), t[i]))
                .collect();
            items.push(format!(">:{}", t[ROUNDUP_POWER2_INTERVALS - 1]));
            parts.push(format!("roundup_power2_divisions:[{}]", items.join(",")));
        }
    }
    let parse = |parts: &[String]| {
        Config::parse_from("allocator_settings", &parts.join(",")).map_err(|e| e.to_string())
    };
    let mut cfg = parse(&parts)?;
    // Named only where the settings read would not give that step anyway.
    if let Some(b) = min_map.filter(|&b| b != cfg.large_min_map()) {
        parts.push(format!("expandable_min_map_mb:{}", b as i64 / MIB));
        cfg = parse(&parts)?;
    }
    Ok(Some(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::pickle::load;

    fn settings(pickle: &[u8]) -> Result<Option<Config>, String> {
        settings_of(&load(pickle).unwrap())
    }

    #[test]
    fn max_split_size_is_checked_as_conf_checks_it() {
        // {'allocator_settings': {'max_split_size': 1}}, protocol 2
        let e = settings(
            b"\x80\x02}X\x12\x00\x00\x00allocator_settings}X\x0e\x00\x00\x00max_split_sizeK\x01ss.",
        )
        .unwrap_err();
        assert!(e.contains("max_split_size"), "{e}");
        // 128 MiB is accepted and lands as max_split_size_mb:128.
        let c = settings(b"\x80\x02}X\x12\x00\x00\x00allocator_settings}X\x0e\x00\x00\x00max_split_sizeJ\x00\x00\x00\x08ss.")
            .unwrap()
            .unwrap();
        assert_eq!(c.to_string(), "max_split_size_mb:128");
        // 1 MiB: a whole number of MiB, but below what --conf accepts.
        let e = settings(b"\x80\x02}X\x12\x00\x00\x00allocator_settings}X\x0e\x00\x00\x00max_split_sizeJ\x00\x00\x10\x00ss.")
            .unwrap_err();
        assert!(e.contains("max_split_size_mb"), "{e}");
    }
}
