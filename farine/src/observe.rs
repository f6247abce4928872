//! What the test kit watches: each handled delivery's entry point and outcome, sent to
//! whoever listens (nobody, in production: then nothing is built or sent).

use crate::config::AmqpUri;
use crate::outcome::Outcome;
use std::sync::OnceLock;
use tokio::sync::broadcast;

/// One delivery an entry point (a consumer or an RPC method) finished: acked, retried or
/// parked; for a call, answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// `service.method`.
    pub entry_point: String,
    pub outcome: Handling,
    /// The broker it runs on (password hidden): a test kit hears only its own services.
    pub(crate) broker: String,
}

/// How a delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handling {
    /// The method returned `Ok` (or `()`): acked; a call was answered with its result.
    Done,
    /// It failed (its error or panic): retried, or dead-lettered after the last attempt; a
    /// call was answered with the error.
    Failed(String),
    /// It could not be handled at all (not JSON, wrong shape, too big): dead-lettered; a
    /// call was answered "bad arguments" (or parked: no or a forged reply address).
    Poison(String),
}

fn channel() -> &'static broadcast::Sender<Handled> {
    static SENDER: OnceLock<broadcast::Sender<Handled>> = OnceLock::new();
    SENDER.get_or_init(|| broadcast::channel(1024).0)
}

/// The public form of an outcome.
pub(crate) fn handling(outcome: &Outcome) -> Handling {
    match outcome {
        Outcome::Done => Handling::Done,
        Outcome::Failed(reason) => Handling::Failed(reason.clone()),
        Outcome::Poison(reason) => Handling::Poison(reason.clone()),
    }
}

/// Tells the listeners, if any, that `entry_point` (on `broker`) finished a delivery.
pub(crate) fn handled(broker: &AmqpUri, entry_point: &str, outcome: &Handling) {
    let sender = channel();
    if sender.receiver_count() == 0 {
        return;
    }
    let _ = sender.send(Handled {
        entry_point: entry_point.to_string(),
        outcome: outcome.clone(),
        broker: broker.to_string(),
    });
}

/// Listens to every delivery handled in this process from now on.
#[cfg(feature = "testing")]
pub(crate) fn listen() -> broadcast::Receiver<Handled> {
    channel().subscribe()
}
