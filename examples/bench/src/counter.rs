//! The message counter of the events consumers (farine's and lapin's), in the service
//! process: the bench arms it with the number of messages it is about to publish, and hears
//! `done` once that many were handled.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

static COUNT: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static DONE: Notify = Notify::const_new();

/// Starts counting from zero towards `target`.
pub fn arm(target: u64) {
    TARGET.store(u64::MAX, Ordering::SeqCst);
    COUNT.store(0, Ordering::SeqCst);
    TARGET.store(target, Ordering::SeqCst);
}

/// One message handled.
pub fn hit() {
    let count = COUNT.fetch_add(1, Ordering::AcqRel) + 1;
    if count == TARGET.load(Ordering::Acquire) {
        DONE.notify_one();
    }
}

/// Resolves once the armed target was reached.
pub async fn reached() {
    DONE.notified().await;
}
