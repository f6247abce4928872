//! The `relay` service: listens to a Server-Sent-Events endpoint and republishes each event's
//! data, in order, to exchange `relay` with routing key `event`; and publishes a heartbeat to
//! routing key `heartbeat` every few seconds. Run it with `farine --start relay`; the endpoint
//! is the `endpoint` key of its `[relay]` section.

use farine::prelude::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct Relay;

#[farine::service]
impl Relay {
    /// One event at a time, confirmed by the broker before the next is read. Data that is JSON
    /// is republished as that JSON value, any other text as a JSON string.
    #[stream::http]
    #[amqp::publish(exchange = "relay", routing_key = "event")]
    async fn on_event(&self, publish: Publisher, event: Event) -> farine::Result<()> {
        let data = serde_json::from_str(&event.data)
            .unwrap_or_else(|_| serde_json::Value::String(event.data.clone()));
        publish.send(&data).await
    }

    /// Says the relay is alive every 5 seconds until the service stops.
    #[execute::method(restart = true, restart_delay = "1s")]
    #[amqp::publish(exchange = "relay", routing_key = "heartbeat")]
    async fn heartbeat(&self, publish: Publisher, shutdown: Shutdown) -> farine::Result<()> {
        let publish = publish.mandatory(false);
        while shutdown.sleep(Duration::from_secs(5)).await {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            publish.send(&serde_json::json!({ "alive": now })).await?;
        }
        Ok(())
    }
}
