//! libyaml-safer 0.3.0 panics on some malformed input instead of returning an error (four
//! cases found by the `yaml_load` fuzz target, two reported upstream as simonask/libyaml-safer
//! #6 and #7). Config text comes from files, the control API and `straitctl apply`, so a panic
//! there would be a crash on input: the parser's calls run under [`catch`], which turns a
//! panic into `None` (the text is then refused with an error) and keeps the default panic
//! hook from printing a backtrace for it.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs a guarded call: its panics are expected and reported as
    /// errors, not printed.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; `None` if it panicked.
pub(super) fn catch<T>(f: impl FnOnce() -> T) -> Option<T> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_none_and_the_guard_is_lifted() {
        assert_eq!(catch(|| 7), Some(7));
        assert_eq!(catch(|| -> u8 { panic!("parser bug") }), None);
        assert!(!GUARDED.with(Cell::get));
    }
}
