//! The smallest device capacity at which a trace replays without running out of memory,
//! found by bisection over replays, for cudalloc and for a reference allocator
//! (`cudalloc replay --min-capacity`). It only runs the replays it is handed as closures and
//! compares their outcomes; it decides nothing about allocation and reads no trace itself.

/// Capacities are searched in steps of this many bytes (a small segment, and the page of
/// expandable segments).
pub const STEP: u64 = 2 << 20;

/// What the capacity search found for one trace, setting and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityFit {
    /// The smallest capacity found (in [`STEP`]s, by bisection) at which cudalloc replays
    /// the trace without an out-of-memory error; `None` if it fails even with room for its
    /// own unconstrained peak.
    pub cudalloc: Option<u64>,
    /// Whether the reference allocator was searched too.
    pub reference_searched: bool,
    /// The same for the reference allocator (`None` too when it was not searched).
    pub reference: Option<u64>,
    /// Out-of-memory errors cudalloc meets at the reference's smallest capacity (0: it
    /// completes there too), if both were found.
    pub cudalloc_ooms_at_reference: Option<u64>,
    /// Out-of-memory errors the reference meets at cudalloc's smallest capacity, when that
    /// is below the reference's (more than 0: a capacity where cudalloc completes and the
    /// reference does not).
    pub reference_ooms_at_cudalloc: Option<u64>,
    /// Replays run, both allocators together.
    pub probes: u32,
}

/// The smallest multiple of [`STEP`] in `(lo, hi]` at which `ooms` returns 0, by bisection:
/// `hi` is tried first (`None` if even it fails), then the midpoints, keeping the smallest
/// capacity that completed. Bisection assumes that more memory never hurts; where it does,
/// the answer is a capacity that completes, not necessarily the smallest. `probes` counts
/// the calls.
///
/// # Errors
/// The first error of `ooms`.
pub fn smallest_capacity<E>(
    lo: u64,
    hi: u64,
    probes: &mut u32,
    mut ooms: impl FnMut(u64) -> Result<u64, E>,
) -> Result<Option<u64>, E> {
    let mut lo = lo / STEP * STEP;
    let mut hi = hi.div_ceil(STEP).max(1) * STEP;
    *probes += 1;
    if ooms(hi)? > 0 {
        return Ok(None);
    }
    while hi - lo > STEP {
        let mid = lo + (hi - lo) / 2 / STEP * STEP;
        *probes += 1;
        if ooms(mid)? == 0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisection_finds_the_threshold_in_steps() {
        let need = 37 * STEP + 5;
        let mut probes = 0;
        let got = smallest_capacity(STEP, 100 * STEP, &mut probes, |c| {
            Ok::<_, ()>(u64::from(c < need))
        });
        assert_eq!(got, Ok(Some(38 * STEP)));
        assert!(probes <= 9, "{probes} probes");
    }

    #[test]
    fn a_trace_that_fails_at_the_top_has_no_capacity() {
        let mut probes = 0;
        let got = smallest_capacity(0, 10 * STEP, &mut probes, |_| Ok::<_, ()>(1));
        assert_eq!(got, Ok(None));
        assert_eq!(probes, 1);
    }

    #[test]
    fn errors_stop_the_search() {
        let mut probes = 0;
        let got = smallest_capacity(0, 10 * STEP, &mut probes, |c| {
            if c < 10 * STEP { Err("boom") } else { Ok(0) }
        });
        assert_eq!(got, Err("boom"));
    }
}
