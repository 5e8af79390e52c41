//! `cargo +nightly fuzz run replay_trace [-- -max_len=2000000 -rss_limit_mb=4096]`: any bytes
//! through the trace readers, and what they accept through a replay on a small simulated
//! device. A panic, abort or stack overflow is a finding; errors are the expected outcome
//! for most inputs. Seed the corpus with `traces/*.csv` and `tests/fixtures/bad-traces/*`.
#![no_main]

use cudalloc::replay::{ReplayOptions, check_figures, replay_device};
use cudalloc::trace::parse_trace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(trace) = parse_trace("fuzz", data) else {
        return;
    };
    let opts = ReplayOptions {
        capacity: Some(16 << 30),
        ..ReplayOptions::default()
    };
    for dev in &trace.devices {
        if let Ok(r) = replay_device(&trace, dev, &opts, |_| {}) {
            // replay_device checks its figures itself; a second look costs nothing.
            assert!(check_figures(&r, 16 << 30).is_ok());
        }
    }
});
