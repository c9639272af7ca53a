//! Injected out-of-memory failures that drive the memory policy in tests (the
//! `fault-injection` feature: production builds never read the environment variable).

use std::sync::atomic::{AtomicU64, Ordering};

use tch::TchError;

/// Environment variable that makes every Nth generator forward of an element fail as out of
/// memory (a testing switch, read when the element starts; unset or 0 = off): `N` for every
/// element, or `NAME:N[,NAME:N…]` for the elements of those names only.
pub const FAIL_EVERY_ENV: &str = "GST_GPEN_FAIL_EVERY";

/// Environment variable that makes every generator forward of an element take that many more
/// milliseconds (a testing switch, read when the element starts, in the syntax of
/// [`FAIL_EVERY_ENV`]): forwards long enough to be caught in flight.
pub const SLOW_FORWARD_ENV: &str = "GST_GPEN_SLOW_FORWARD_MS";

/// Environment variable that makes the generator forwards of an element return their input (a
/// testing switch for benchmarks of everything but the generator, read when the element starts,
/// in the syntax of [`FAIL_EVERY_ENV`]; non-zero: on).
pub const SKIP_FORWARD_ENV: &str = "GST_GPEN_SKIP_FORWARD";

/// Environment variable giving the text of the injected failures (a testing switch; unset: the
/// CUDA caching allocator's "CUDA out of memory" message), so that tests inject what each
/// backend says when an allocation fails.
pub const FAIL_MESSAGE_ENV: &str = "GST_GPEN_FAIL_MESSAGE";

/// What [`FAIL_EVERY_ENV`] asks of the element named `element` (0 when unset, not for it, or
/// not a number).
pub fn fail_every_from_env(element: &str) -> u64 {
    std::env::var(FAIL_EVERY_ENV).map(|v| fail_every_for(&v, element)).unwrap_or(0)
}

/// What [`SLOW_FORWARD_ENV`] asks of the element named `element`, in milliseconds.
pub fn slow_forward_from_env(element: &str) -> u64 {
    std::env::var(SLOW_FORWARD_ENV).map(|v| fail_every_for(&v, element)).unwrap_or(0)
}

/// Whether [`SKIP_FORWARD_ENV`] asks the element named `element` to skip its forwards.
pub fn skip_forward_from_env(element: &str) -> bool {
    std::env::var(SKIP_FORWARD_ENV).is_ok_and(|v| fail_every_for(&v, element) > 0)
}

fn fail_every_for(spec: &str, element: &str) -> u64 {
    let spec = spec.trim();
    if let Ok(n) = spec.parse() {
        return n;
    }
    spec.split(',')
        .filter_map(|part| part.trim().rsplit_once(':'))
        .find(|(name, _)| *name == element)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Counts a generator forward in `counter` and, every `every` forwards (0 = never), fails it
/// the way CUDA does when memory runs out (or with the text of [`FAIL_MESSAGE_ENV`]).
pub fn injected_fault(counter: &AtomicU64, every: u64) -> Result<(), TchError> {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if every > 0 && n.is_multiple_of(every) {
        if let Ok(text) = std::env::var(FAIL_MESSAGE_ENV) {
            return Err(TchError::Torch(format!("{text} (injected by {FAIL_EVERY_ENV}={every}, forward {n})")));
        }
        return Err(TchError::Torch(format!(
            "CUDA out of memory. Tried to allocate 2.00 GiB (injected by {FAIL_EVERY_ENV}={every}, forward {n})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_injection_names_elements() {
        assert_eq!(fail_every_for("3", "any"), 3);
        assert_eq!(fail_every_for("g1:2, g3:5", "g3"), 5);
        assert_eq!(fail_every_for("g1:2,g3:5", "g2"), 0);
        assert_eq!(fail_every_for("nonsense", "g1"), 0);
    }
}
