//! What the macros register at link time: each service's name and a function that builds
//! its entry points around one shared instance. The runtime reads these; nothing else does.

use crate::amqp::PublishAttr;
use crate::describe::{MethodSchemas, SchemaFn};
use crate::entry::consume::{ConsumeAttr, ConsumeHandler};
use crate::entry::execute::{ExecuteAttr, ExecuteHandler};
use crate::entry::rpc::{RpcAttr, RpcHandler};
use crate::entry::sse::{EventHandler, ListenAttr};
use crate::entry::Registered;

/// One `#[farine::service]`, collected with `inventory`.
pub struct ServiceRegistration {
    pub name: &'static str,
    /// The module the service is defined in (`module_path!()`): its first segment is the
    /// crate, which decides whether `farine::main!` runs it.
    pub module: &'static str,
    pub build: fn() -> ServiceDef,
}

inventory::collect!(ServiceRegistration);

impl ServiceRegistration {
    /// The crate the service is defined in.
    pub fn krate(&self) -> &'static str {
        self.module.split("::").next().unwrap_or(self.module)
    }
}

/// Every service compiled into this binary, in name order.
pub fn services() -> Vec<&'static ServiceRegistration> {
    let mut all: Vec<_> = inventory::iter::<ServiceRegistration>().collect();
    all.sort_by_key(|s| s.name);
    all
}

/// A service's entry points, built around one instance of the service, as the macros wrote
/// them: the runtime resolves and attaches them (`crate::entry`).
pub struct ServiceDef {
    pub name: &'static str,
    /// Every entry point, in the order of the methods.
    pub entries: Vec<Registered>,
    /// The publishers, whose exchanges are declared at start.
    pub publishers: Vec<PublishAttr>,
    /// Methods that take a database parameter: the service must have a database.
    pub db_methods: Vec<&'static str>,
    /// The types of each method's messages, for `farine describe`.
    pub schemas: Vec<MethodSchemas>,
}

impl ServiceDef {
    pub fn new(name: &'static str) -> Self {
        ServiceDef {
            name,
            entries: Vec::new(),
            publishers: Vec::new(),
            db_methods: Vec::new(),
            schemas: Vec::new(),
        }
    }

    pub fn consume(&mut self, attr: ConsumeAttr, handler: ConsumeHandler) {
        self.entries.push(Registered::Consume(attr, handler));
    }

    pub fn rpc(&mut self, attr: RpcAttr, handler: RpcHandler) {
        self.entries.push(Registered::Rpc(attr, handler));
    }

    pub fn publish(&mut self, attr: PublishAttr) {
        self.publishers.push(attr);
    }

    pub fn listen(&mut self, attr: ListenAttr, handler: EventHandler) {
        self.entries.push(Registered::Listen(attr, handler));
    }

    pub fn execute(&mut self, attr: ExecuteAttr, handler: ExecuteHandler) {
        self.entries.push(Registered::Execute(attr, handler));
    }

    pub fn uses_db(&mut self, method: &'static str) {
        self.db_methods.push(method);
    }

    /// The schemas of `method`'s message parameters (by name) and of its result.
    pub fn schemas(
        &mut self,
        method: &'static str,
        params: Vec<(&'static str, SchemaFn)>,
        returns: Option<SchemaFn>,
    ) {
        self.schemas.push(MethodSchemas {
            method,
            params,
            returns,
        });
    }
}
