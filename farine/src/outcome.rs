//! How a handled message, event or loop run ended, and the one panic guard every entry kind
//! uses. A leaf: it imports nothing of farine's but the clipping of texts.

use futures::{FutureExt, Stream, StreamExt};
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// How one delivery ended, as the entry point must act on it.
#[derive(Debug)]
pub enum Outcome {
    /// Handled: ack.
    Done,
    /// The handler failed (error or panic): retry per policy, then dead-letter.
    Failed(String),
    /// The message can never be handled (bad JSON, wrong shape): dead-letter at once.
    Poison(String),
}

/// What a handler may return: `()` or any `Result` whose error can be displayed.
#[diagnostic::on_unimplemented(
    message = "a consume, stream::http or execute method returns `()` or `Result<_, E>` with `E: Display`, not `{Self}`",
    label = "returns `{Self}`",
    note = "`()` and `Ok(_)` are success; `Err(_)` is a failure, logged, and for a consumed message retried then dead-lettered"
)]
pub trait HandlerResult {
    fn into_outcome(self) -> Outcome;
}

impl HandlerResult for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl HandlerResult for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Done
    }
}

impl<T, E: std::fmt::Display> HandlerResult for Result<T, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(_) => Outcome::Done,
            Err(err) => Outcome::Failed(crate::clip::clip_owned(err.to_string())),
        }
    }
}

/// Runs `future`, turning a panic into `Err(its message)`: a user's panic never kills the
/// task that runs an entry point.
pub(crate) async fn guard<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| panic_text(&panic))
}

/// [`guard`] for a handler whose result is an [`Outcome`]: a panic is a failure.
pub(crate) async fn guard_outcome<F>(future: F) -> Outcome
where
    F: Future,
    F::Output: HandlerResult,
{
    match guard(future).await {
        Ok(result) => result.into_outcome(),
        Err(panic) => Outcome::Failed(format!("handler panicked: {panic}")),
    }
}

/// [`guard`] for each step of a stream: a panic ends it with `Err(its message)`.
pub(crate) fn guard_stream<S: Stream>(stream: S) -> impl Stream<Item = Result<S::Item, String>> {
    AssertUnwindSafe(stream)
        .catch_unwind()
        .map(|item| item.map_err(|panic| panic_text(&panic)))
}

/// The message of a panic payload, clipped.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        crate::clip::clip(text).into_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        crate::clip::clip(text).into_owned()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_failure_with_its_message() {
        assert_eq!(guard(async { 3 }).await, Ok(3));
        let outcome = guard_outcome(async {
            if true {
                panic!("boom");
            }
        })
        .await;
        assert!(matches!(outcome, Outcome::Failed(ref m) if m == "handler panicked: boom"));
        let items: Vec<_> = guard_stream(futures::stream::iter([1, 2]).map(|n| {
            assert!(n < 2, "two");
            n
        }))
        .collect()
        .await;
        assert_eq!(items, [Ok(1), Err("two".to_string())]);
    }
}
