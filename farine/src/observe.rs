//! What the test kit watches: each handled delivery's entry point and outcome, sent to
//! whoever listens (nobody, in production: then nothing is built or sent).

use crate::outcome::Outcome;
use std::sync::OnceLock;
use tokio::sync::broadcast;

/// One delivery an entry point finished with: acked, retried or parked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// `service.method`.
    pub entry_point: String,
    pub outcome: Handling,
}

/// How a delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handling {
    /// The method returned `Ok` (or `()`): acked.
    Done,
    /// It failed (its error or panic): retried, or dead-lettered after the last attempt.
    Failed(String),
    /// It could not be handled at all (not JSON, wrong shape, too big): dead-lettered.
    Poison(String),
}

fn channel() -> &'static broadcast::Sender<Handled> {
    static SENDER: OnceLock<broadcast::Sender<Handled>> = OnceLock::new();
    SENDER.get_or_init(|| broadcast::channel(1024).0)
}

/// Tells the listeners, if any, that `entry_point` finished a delivery.
pub(crate) fn handled(entry_point: &str, outcome: &Outcome) {
    let sender = channel();
    if sender.receiver_count() == 0 {
        return;
    }
    let outcome = match outcome {
        Outcome::Done => Handling::Done,
        Outcome::Failed(reason) => Handling::Failed(reason.clone()),
        Outcome::Poison(reason) => Handling::Poison(reason.clone()),
    };
    let _ = sender.send(Handled {
        entry_point: entry_point.to_string(),
        outcome,
    });
}

/// Listens to every delivery handled in this process from now on.
#[cfg(feature = "testing")]
pub(crate) fn listen() -> broadcast::Receiver<Handled> {
    channel().subscribe()
}
