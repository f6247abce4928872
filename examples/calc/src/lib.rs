//! The `calc` service: the demo of farine. Run it with `farine --start calc`.
//!
//! It consumes operations from exchange `calc` (routing key `operations`), publishes each sum
//! back to exchange `calc` with routing key `results`, and logs every result it hears.
//! Its RPC methods: `farine call calc.add '[2, 3]'` and `farine call calc.count '[5]'`.
//! `farine describe --start calc` prints all of this as an AsyncAPI document, with the JSON
//! Schemas of [`Operation`] and [`Sum`] (farine's `schema` feature).

use farine::prelude::*;
use farine::schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request to add two numbers: `{"a": 2, "b": 3}`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "farine::schemars")]
pub struct Operation {
    pub a: i64,
    pub b: i64,
}

/// What calc refuses. A method returning `Result<T, CalcError>` sends the error's value with
/// its text, so a Rust caller gets it back typed:
///
/// ```no_run
/// # async fn demo(calc: calc::CalcClient) {
/// let err = calc.add(i64::MAX, 1).await.unwrap_err();
/// assert_eq!(
///     err.service_error::<calc::CalcError>(),
///     Some(calc::CalcError::Overflow { a: i64::MAX, b: 1 }),
/// );
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, thiserror::Error)]
pub enum CalcError {
    /// The sum does not fit in an `i64`.
    #[error("{a} + {b} overflows a 64-bit integer")]
    Overflow { a: i64, b: i64 },
}

/// `a + b`, or [`CalcError::Overflow`]: the one rule both entry points follow.
pub fn checked_sum(a: i64, b: i64) -> Result<i64, CalcError> {
    a.checked_add(b).ok_or(CalcError::Overflow { a, b })
}

/// A computed sum: `{"sum": 5}`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "farine::schemars")]
pub struct Sum {
    pub sum: i64,
}

#[derive(Default)]
pub struct Calc;

#[farine::service]
impl Calc {
    /// Adds the numbers of each operation and publishes the sum. An overflow fails the
    /// message (retried, then dead-lettered with the reason).
    #[amqp::consume(routing_key = "operations")]
    async fn on_operation(&self, operation: Operation) -> farine::Result<()> {
        let sum = checked_sum(operation.a, operation.b)
            .map_err(|err| farine::Error::Runtime(err.to_string()))?;
        self.publish_sum(sum).await
    }

    /// Publishes a sum to exchange `calc`, routing key `results`.
    #[amqp::publish(routing_key = "results")]
    pub async fn publish_sum(&self, publish: Publisher, sum: i64) -> farine::Result<()> {
        publish.send(&Sum { sum }).await
    }

    /// `calc.add(a, b)`: the sum of two numbers, or [`CalcError::Overflow`].
    #[rpc::method]
    async fn add(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        checked_sum(a, b)
    }

    /// `calc.count(n)`: streams `0, 1, ..., n - 1`, one item at a time.
    #[rpc::method]
    fn count(&self, n: u32) -> impl Stream<Item = u32> + Send + 'static {
        futures::stream::iter(0..n)
    }

    /// Logs every result published on `calc`/`results`.
    #[amqp::consume(routing_key = "results")]
    async fn on_result(&self, result: Sum) -> farine::Result<()> {
        farine::tracing::info!(sum = result.sum, "result");
        Ok(())
    }
}
