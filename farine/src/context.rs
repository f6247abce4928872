//! Where a running service's broker and settings are found by code that only knows the
//! service's name (a `Publisher` inside a user method). The runtime registers each service
//! it starts; outside the runtime the settings come from `FARINE_INI` on first use.

use crate::broker::Broker;
use crate::config::{Config, ServiceConfig};
use crate::Result;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// A started service's shared resources.
#[derive(Debug)]
pub(crate) struct ServiceContext {
    pub broker: Arc<Broker>,
    pub settings: Arc<ServiceConfig>,
}

type Services = RwLock<HashMap<String, Arc<ServiceContext>>>;

fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(Default::default)
}

pub(crate) fn register(name: &str, context: Arc<ServiceContext>) {
    services()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(name.to_string(), context);
}

pub(crate) fn unregister(name: &str) {
    services()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(name);
}

/// The context of `service`: the running one, or one built from `FARINE_INI`.
pub(crate) async fn service(name: &str) -> Result<Arc<ServiceContext>> {
    let known = services()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(name)
        .cloned();
    if let Some(context) = &known {
        if context.broker.is_connected() {
            return Ok(context.clone());
        }
    }
    let settings = match &known {
        Some(context) => context.settings.clone(),
        None => Arc::new(Config::from_env()?.service(name)?),
    };
    let broker = Broker::shared(&settings.amqp_uri, settings.heartbeat).await?;
    let context = Arc::new(ServiceContext { broker, settings });
    register(name, context.clone());
    Ok(context)
}
