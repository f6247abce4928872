//! The one exponential backoff of farine: supervised `#[execute::method]` restarts, SSE
//! reconnections and database connection attempts all wait with it, so they agree on the
//! floor, the growth and the cap.
//!
//! A delay is `initial` (raised to `min`) times `factor` for each failure in a row after the
//! first, capped at `max` (itself raised to the first delay, so a cap below the first delay
//! never shortens it), plus up to `jitter` of itself at random.

use std::time::Duration;

/// No failing thing is retried sooner than this: a zero `restart_delay` or a server's
/// `retry: 0` would otherwise spin as fast as the machine allows.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(100);

/// An exponential backoff with optional jitter: [`Backoff::next`] after each failure in a
/// row, [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    min: Duration,
    max: Duration,
    factor: u32,
    /// The largest random addition, as a fraction of the delay (0 to 1).
    jitter: f64,
    /// Failures in a row so far.
    failures: u32,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, without floor or jitter.
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            min: Duration::ZERO,
            max,
            factor: 2,
            jitter: 0.0,
            failures: 0,
        }
    }

    /// No delay is shorter than `min` (the first delay is raised to it).
    pub(crate) fn min(mut self, min: Duration) -> Backoff {
        self.min = min;
        self
    }

    /// Each failure in a row multiplies the delay by `factor` (at least 1; default 2).
    #[allow(dead_code)] // every user doubles today; here so no caller hand-rolls another
    pub(crate) fn factor(mut self, factor: u32) -> Backoff {
        self.factor = factor.max(1);
        self
    }

    /// Adds up to `fraction` (clamped to 0..=1) of each delay at random, so that the clients
    /// of a restarted server do not all come back at the same instant.
    #[allow(dead_code)] // the SSE listener jitters delays it computes itself (`add_jitter`)
    pub(crate) fn jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Counts one more failure and returns the delay before the next attempt (jittered).
    pub(crate) fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.jittered(self.delay(self.failures))
    }

    /// Forgets the failures: the next delay is the first one again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row counted by [`Backoff::next`] since the last reset.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay after `failures` failures in a row (1 is the first), without jitter; 0 is
    /// taken as 1.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let first = self.initial.max(self.min);
        let cap = self.max.max(first);
        if self.factor == 1 || first.is_zero() {
            return first.min(cap);
        }
        // Multiply until the cap: at most ~100 steps even from 1ns, whatever `failures` is.
        let mut delay = first;
        for _ in 1..failures {
            if delay >= cap {
                break;
            }
            delay = delay.saturating_mul(self.factor);
        }
        delay.min(cap)
    }

    /// `delay` plus up to the jitter fraction of it, at random.
    pub(crate) fn jittered(&self, delay: Duration) -> Duration {
        add_jitter(delay, self.jitter)
    }
}

/// `delay` plus up to `fraction` (0 to 1) of it, at random; for delays computed elsewhere
/// than in a [`Backoff`] (an SSE server's `retry:`).
pub(crate) fn add_jitter(delay: Duration, fraction: f64) -> Duration {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return delay;
    }
    delay.mul_f64(1.0 + rand::random_range(0.0..fraction))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let mut backoff = Backoff::new(SEC, Duration::from_secs(30));
        let delays: Vec<u64> = (0..8).map(|_| backoff.next().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff.failures(), 8);
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.next(), SEC);
    }

    #[test]
    fn the_floor_and_the_cap() {
        let floored = Backoff::new(Duration::ZERO, Duration::ZERO).min(MIN_DELAY);
        assert_eq!(floored.delay(1), MIN_DELAY);
        assert_eq!(floored.delay(5), MIN_DELAY);
        // A cap below the first delay does not shorten it.
        assert_eq!(Backoff::new(SEC * 5, SEC).delay(3), SEC * 5);
        assert_eq!(Backoff::new(SEC, SEC).delay(u32::MAX), SEC);
        assert_eq!(
            Backoff::new(Duration::from_nanos(1), Duration::MAX).delay(u32::MAX),
            Duration::MAX
        );
        assert_eq!(Backoff::new(SEC, SEC * 100).delay(0), SEC);
    }

    #[test]
    fn other_factors() {
        let triple = Backoff::new(SEC, SEC * 100).factor(3);
        let delays: Vec<u64> = (1..=6).map(|n| triple.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 3, 9, 27, 81, 100]);
        let flat = Backoff::new(SEC, SEC * 100).factor(0);
        assert_eq!(flat.delay(10), SEC);
    }

    #[test]
    fn jitter_adds_at_most_its_fraction() {
        let backoff = Backoff::new(SEC, SEC).jitter(0.25);
        for _ in 0..1000 {
            let jittered = backoff.jittered(SEC);
            assert!(jittered >= SEC && jittered < Duration::from_millis(1250));
        }
        assert_eq!(backoff.jittered(Duration::ZERO), Duration::ZERO);
        assert_eq!(Backoff::new(SEC, SEC).jitter(f64::NAN).jittered(SEC), SEC);
        let mut plain = Backoff::new(SEC, SEC);
        assert_eq!(plain.next(), SEC);
    }
}
