use crate::context;
use crate::trace::Outgoing;
use crate::transport::Properties;
use crate::{Error, Result};
use serde::Serialize;
use std::borrow::Cow;
use tracing::Instrument;

/// Where an `#[amqp::publish]` method sends when its attribute leaves something out: the
/// exchange and the routing key default to the service's name. The one place this is decided,
/// for the publisher the method gets and for the exchange the runtime declares.
pub(crate) fn destination(
    service: &'static str,
    exchange: Option<&'static str>,
    routing_key: Option<&'static str>,
) -> (&'static str, &'static str) {
    (exchange.unwrap_or(service), routing_key.unwrap_or(service))
}

/// Sends JSON messages to one exchange with a routing key, with publisher confirms.
///
/// A method marked `#[amqp::publish(exchange = "...", routing_key = "...")]` receives one as
/// a parameter; the runtime supplies it, so callers of the method do not pass it:
///
/// ```no_run
/// use farine::prelude::*;
///
/// #[derive(Default)]
/// pub struct Shop;
///
/// #[farine::service]
/// impl Shop {
///     #[amqp::publish(exchange = "orders", routing_key = "created")]
///     pub async fn created(&self, publish: Publisher, id: i64) -> farine::Result<()> {
///         publish.send(&serde_json::json!({ "id": id })).await
///     }
/// }
///
/// # async fn demo() -> farine::Result<()> {
/// Shop.created(42).await?; // publishes {"id": 42} to exchange "orders", key "created"
/// # Ok(()) }
/// ```
///
/// `send` returns once the broker confirmed the message. It fails if the broker refused it
/// or, because messages are published as mandatory, if no queue is bound to receive it;
/// use [`Publisher::mandatory`]`(false)` for broadcasts that may have no listener.
#[derive(Clone, Debug)]
pub struct Publisher {
    service: Cow<'static, str>,
    exchange: Cow<'static, str>,
    routing_key: Cow<'static, str>,
    mandatory: bool,
}

impl Publisher {
    /// A publisher of `service` (whose config section gives the broker, delivery mode and
    /// exchange settings) to `exchange` with `routing_key`.
    pub fn new(
        service: impl Into<Cow<'static, str>>,
        exchange: impl Into<Cow<'static, str>>,
        routing_key: impl Into<Cow<'static, str>>,
    ) -> Self {
        Publisher {
            service: service.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: true,
        }
    }

    /// The publisher of an `#[amqp::publish]` method, its arguments as written.
    pub(crate) fn declared(
        service: &'static str,
        exchange: Option<&'static str>,
        routing_key: Option<&'static str>,
    ) -> Self {
        let (exchange, routing_key) = destination(service, exchange, routing_key);
        Publisher::new(service, exchange, routing_key)
    }

    /// Whether a message no queue receives is an error (the default) or dropped by the broker.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Publishes `message` as JSON with the publisher's routing key.
    pub async fn send<T: Serialize + ?Sized>(&self, message: &T) -> Result<()> {
        self.send_to(&self.routing_key, message).await
    }

    /// Publishes `message` as JSON with another routing key.
    pub async fn send_to<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        message: &T,
    ) -> Result<()> {
        let body = serde_json::to_vec(message).map_err(Error::json(format!(
            "encoding a message for exchange {:?}",
            self.exchange
        )))?;
        let context = context::service(&self.service).await?;
        let settings = &context.settings;
        if settings.auto_declare {
            context
                .broker
                .declare_exchange(
                    &self.exchange,
                    settings.exchange_type,
                    settings.durable,
                    settings.auto_delete,
                )
                .await?;
        }
        let mut properties = Properties::json().with_delivery_mode(settings.delivery_mode);
        // Sent while handling a delivery: the message continues its trace, from a span of its
        // own (a child of the delivery's).
        let outgoing = Outgoing::publish(&self.service, &self.exchange, routing_key);
        if let Some(outgoing) = &outgoing {
            outgoing.inject(&mut properties.headers);
        }
        let published = context
            .broker
            .publish(
                &self.exchange,
                routing_key,
                &body,
                properties,
                self.mandatory,
            )
            .instrument(Outgoing::span(outgoing.as_ref()))
            .await;
        if let (Err(err), Some(outgoing)) = (&published, &outgoing) {
            outgoing.fail(err);
        }
        published
    }
}

/// `#[amqp::publish(...)]` as written.
#[derive(Clone, Debug)]
pub struct PublishAttr {
    pub method: &'static str,
    pub exchange: Option<&'static str>,
    pub routing_key: Option<&'static str>,
}

impl PublishAttr {
    /// Where the publisher sends: the exchange and routing key default to the service name.
    pub fn spec(&self, service: &'static str) -> PublishSpec {
        let (exchange, routing_key) = destination(service, self.exchange, self.routing_key);
        PublishSpec {
            method: self.method,
            exchange,
            routing_key,
        }
    }
}

/// Where a method's publisher sends, resolved from its [`PublishAttr`].
#[derive(Clone, Debug)]
pub struct PublishSpec {
    pub method: &'static str,
    pub exchange: &'static str,
    pub routing_key: &'static str,
}
