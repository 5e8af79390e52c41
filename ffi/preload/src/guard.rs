//! What every entry into the shim goes through: the re-entrancy guard (the shim's own work —
//! allocator, driver backend, symbol loading — never goes through its hooks) and the one
//! panic boundary (a panic becomes a status for the C caller, never an unwind into it, and is
//! reported on stderr as one line).
//!
//! Must not: call the driver, or take any lock of the cache. The boundary reports only the
//! first panic of the process, so a hook that keeps failing cannot flood stderr.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
    /// Where and why the last panic of this thread happened (written by the panic hook).
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Held while a thread does the shim's own work.
pub(crate) struct Inside;

impl Inside {
    /// `None` when this thread is already inside the shim.
    pub(crate) fn enter() -> Option<Inside> {
        IN_SHIM.with(|f| {
            if f.get() {
                None
            } else {
                f.set(true);
                Some(Inside)
            }
        })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        IN_SHIM.with(|f| f.set(false));
    }
}

/// Whether this thread is inside the shim.
pub(crate) fn inside() -> bool {
    IN_SHIM.with(Cell::get)
}

static QUIET: Once = Once::new();
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Run `f`; a panic in it is `Err` with its location and message on one line.
///
/// The shim carries its own copy of std, so the panic hook set here is the shim's alone: it
/// keeps the default multi-line report away from the program's stderr and leaves the text
/// for the boundary to print.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let text = match info.location() {
                Some(l) => format!("panicked at {}:{}: {}", l.file(), l.line(), message(info)),
                None => format!("panicked: {}", message(info)),
            };
            let _ = LAST_PANIC.try_with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    *s = text.replace('\n', " ");
                }
            });
        }));
    });
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        LAST_PANIC
            .try_with(|s| s.try_borrow_mut().map(|mut s| std::mem::take(&mut *s)))
            .ok()
            .and_then(Result::ok)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "panicked".into())
    })
}

fn message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let p = info.payload();
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The panic boundary of an entry point: `f`'s result, or `on_panic` if it panicked.
pub(crate) fn boundary<T>(entry: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch(f) {
        Ok(v) => v,
        Err(why) => {
            if !REPORTED.swap(true, Ordering::AcqRel) {
                say(format_args!(
                    "internal error in {entry}: {why} (further internal errors are not \
                     reported)"
                ));
            }
            on_panic
        }
    }
}

/// One line on stderr, prefixed with the shim's name. Never panics (unlike `eprintln!`, which
/// does when stderr is closed), so it is safe outside the boundary too.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "cudalloc preload: {line}");
}
