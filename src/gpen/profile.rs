//! Wall time of each stage of a forward (encoder levels, mapping network, decoder levels), for
//! `examples/profile_gpen.rs`: off unless the calling thread asks, then one clock read per
//! stage. Meaningful on the CPU, where every op is synchronous.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// When recording began, and the stages so far.
type Spans = Option<(Instant, Vec<(String, Duration)>)>;

thread_local! {
    static SPANS: RefCell<Spans> = const { RefCell::new(None) };
}

/// Runs `f` with stage timing on, and returns what it returned with the stages it went through,
/// in order: each with the time since the stage before it (or since the start).
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<(String, Duration)>) {
    SPANS.with(|s| *s.borrow_mut() = Some((Instant::now(), Vec::new())));
    let result = f();
    let spans = SPANS.with(|s| s.borrow_mut().take()).map(|(_, v)| v).unwrap_or_default();
    (result, spans)
}

/// Ends the current stage, named by `name` (called only while recording).
pub(super) fn mark(name: impl FnOnce() -> String) {
    SPANS.with(|s| {
        if let Some((last, spans)) = s.borrow_mut().as_mut() {
            let now = Instant::now();
            spans.push((name(), now - *last));
            *last = now;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_recorded_in_order_only_while_asked() {
        mark(|| "ignored".into());
        let (v, spans) = record(|| {
            mark(|| "a".into());
            std::thread::sleep(Duration::from_millis(5));
            mark(|| "b".into());
            7
        });
        assert_eq!(v, 7);
        let names: Vec<_> = spans.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(spans[1].1 >= Duration::from_millis(5));
        assert!(record(|| ()).1.is_empty());
    }
}
