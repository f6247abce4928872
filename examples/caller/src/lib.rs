//! The `caller` service: calls `calc` through its typed client, once a second, and logs what
//! it gets. With `amqp_uri = memory://` both run in one process, with no broker installed:
//!
//! ```text
//! FARINE_INI=examples/caller/memory.ini farine --start calc --start caller
//! ```

use calc::CalcClient;
use farine::prelude::*;
use std::time::Duration;

#[derive(Default)]
pub struct Caller;

#[farine::service]
impl Caller {
    /// Asks calc for `n + n` and for `count(3)` every second until the service stops.
    #[execute::method(restart = true, restart_delay = "1s")]
    async fn ask(&self, calc: CalcClient, shutdown: Shutdown) -> farine::Result<()> {
        let mut n = 1;
        loop {
            let sum = calc.add(n, n).await?;
            let mut items = calc.count(3).await?;
            let mut counted = Vec::new();
            while let Some(item) = items.next().await {
                counted.push(item?);
            }
            farine::tracing::info!("calc.add({n}, {n}) = {sum}; calc.count(3) = {counted:?}");
            n += 1;
            if !shutdown.sleep(Duration::from_secs(1)).await {
                return Ok(());
            }
        }
    }
}
