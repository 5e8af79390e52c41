//! The cache's life in the process: started on first use, by exactly one thread; disabled
//! for good if that start fails or panics; started afresh in a forked child; never calling
//! the driver once exit has begun.
//!
//! Responsible for: the start state machine, the `atexit` and fork handlers (each inside the
//! panic boundary), and the fault knob the tests use. Must not: call the driver itself (the
//! cache does, in `Cache::new`), or free a cache (a published cache lives until the process
//! ends; a forked child's inherited one is leaked on purpose: freeing it would call the
//! driver for the parent's memory).
//!
//! `CUDALLOC_PRELOAD_FAULT` (for tests; a comma-separated list) injects failures:
//! `start-error` (start fails), `start-panic` (start panics), `exit-panic` (the exit handler
//! panics), `fork-panic` (the fork child handler panics). Any other value fails the start,
//! naming it.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

use crate::cache::Cache;
use crate::guard::{boundary, catch, say};

const UNINIT: u8 = 0;
const STARTING: u8 = 1;
const READY: u8 = 2;
const DISABLED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static CACHE: AtomicPtr<Cache> = AtomicPtr::new(std::ptr::null_mut());
static EXITING: AtomicBool = AtomicBool::new(false);
static HANDLERS: AtomicBool = AtomicBool::new(false);

const FAULT_START_ERROR: u8 = 1;
const FAULT_START_PANIC: u8 = 2;
const FAULT_EXIT_PANIC: u8 = 4;
const FAULT_FORK_PANIC: u8 = 8;
static FAULTS: AtomicU8 = AtomicU8::new(0);

fn fault(f: u8) -> bool {
    FAULTS.load(Ordering::Relaxed) & f != 0
}

/// Whether exit has begun (no driver call may be made any more).
pub(crate) fn exiting() -> bool {
    EXITING.load(Ordering::Acquire)
}

/// The cache, started on first use; `None` when disabled or exiting (pass through). Call
/// with the re-entrancy guard held: the start calls the driver.
pub(crate) fn cache() -> Option<&'static Cache> {
    if exiting() {
        return None;
    }
    loop {
        match STATE.load(Ordering::Acquire) {
            READY => {
                // SAFETY: READY is published after CACHE; a published cache is never freed.
                return unsafe { CACHE.load(Ordering::Acquire).as_ref() };
            }
            DISABLED => return None,
            STARTING => std::thread::yield_now(),
            _ => {
                if STATE
                    .compare_exchange(UNINIT, STARTING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                // Whatever happens in the start, the state leaves STARTING: a panic there
                // disables the cache instead of leaving every other thread waiting.
                match catch(start).unwrap_or_else(|why| Err(format!("start {why}"))) {
                    Ok(c) => {
                        CACHE.store(Box::into_raw(Box::new(c)), Ordering::Release);
                        STATE.store(READY, Ordering::Release);
                    }
                    Err(e) => {
                        say(format_args!("disabled, passing calls to the driver: {e}"));
                        STATE.store(DISABLED, Ordering::Release);
                    }
                }
            }
        }
    }
}

fn start() -> Result<Cache, String> {
    if !HANDLERS.swap(true, Ordering::AcqRel) {
        // SAFETY: registering plain extern "C" functions, each of which catches its panics.
        unsafe {
            libc::atexit(at_exit);
            libc::pthread_atfork(None, None, Some(in_fork_child));
        }
    }
    FAULTS.store(parse_faults()?, Ordering::Relaxed);
    if fault(FAULT_START_ERROR) {
        return Err("CUDALLOC_PRELOAD_FAULT=start-error".into());
    }
    if fault(FAULT_START_PANIC) {
        panic!("CUDALLOC_PRELOAD_FAULT=start-panic");
    }
    Cache::new()
}

fn parse_faults() -> Result<u8, String> {
    let Some(v) = std::env::var_os("CUDALLOC_PRELOAD_FAULT") else {
        return Ok(0);
    };
    let v = v.to_string_lossy();
    let mut bits = 0;
    for f in v.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        bits |= match f {
            "start-error" => FAULT_START_ERROR,
            "start-panic" => FAULT_START_PANIC,
            "exit-panic" => FAULT_EXIT_PANIC,
            "fork-panic" => FAULT_FORK_PANIC,
            _ => {
                return Err(format!(
                    "CUDALLOC_PRELOAD_FAULT: unknown fault {f:?} (known: start-error, \
                     start-panic, exit-panic, fork-panic)"
                ));
            }
        };
    }
    Ok(bits)
}

extern "C" fn at_exit() {
    boundary("the exit handler", (), || {
        if std::env::var_os("CUDALLOC_SUMMARY_AT_EXIT").is_some_and(|v| v == "1")
            && STATE.load(Ordering::Acquire) == READY
        {
            // SAFETY: READY is published after CACHE; a published cache is never freed.
            if let Some(c) = unsafe { CACHE.load(Ordering::Acquire).as_ref() } {
                use std::io::Write;
                for text in c.summaries() {
                    let _ = writeln!(std::io::stderr(), "{text}");
                }
            }
        }
        EXITING.store(true, Ordering::Release);
        if fault(FAULT_EXIT_PANIC) {
            panic!("CUDALLOC_PRELOAD_FAULT=exit-panic");
        }
    });
}

extern "C" fn in_fork_child() {
    boundary("the fork handler", (), || {
        // The parent's cache (and its CUDA state) is not the child's: start afresh, unless
        // the parent's start failed (the child's would fail the same way).
        if STATE.load(Ordering::Acquire) != DISABLED {
            CACHE.store(std::ptr::null_mut(), Ordering::Release);
            STATE.store(UNINIT, Ordering::Release);
        }
        if fault(FAULT_FORK_PANIC) {
            panic!("CUDALLOC_PRELOAD_FAULT=fork-panic");
        }
    });
}
