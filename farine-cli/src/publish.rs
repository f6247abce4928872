//! `farine publish EXCHANGE ROUTING_KEY JSON`: sends one message, as a service's publisher
//! would (persistent, confirmed), to try a consumer by hand.

use crate::Failure;
use farine::broker::Broker;
use std::process::ExitCode;

pub fn run(
    exchange: &str,
    routing_key: &str,
    body: &str,
    may_drop: bool,
) -> Result<ExitCode, Failure> {
    let json: serde_json::Value = serde_json::from_str(body).map_err(|err| {
        Failure::with_code(2, format!("the message is not JSON ({err}): {body:?}"))
    })?;
    let body = serde_json::to_vec(&json)
        .map_err(|err| Failure::new(format!("cannot encode the message: {err}")))?;
    let (settings, runtime) = crate::broker_settings()?;
    runtime.block_on(async {
        let broker = Broker::for_service(&settings).await?;
        let properties =
            farine::transport::Properties::json().with_delivery_mode(settings.delivery_mode);
        let sent = broker
            .publish(exchange, routing_key, &body, properties, !may_drop)
            .await;
        broker.close().await;
        sent.map_err(|err| Failure::new(err.to_string()))?;
        println!("published to exchange {exchange:?} with routing key {routing_key:?} (confirmed)");
        Ok(ExitCode::SUCCESS)
    })
}
