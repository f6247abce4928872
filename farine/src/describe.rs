//! `farine describe`: an [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! document (JSON) of the services compiled into a binary, from what the macros registered.
//!
//! `farine describe --start MODULE` builds the crate and runs its binary with [`ENV`] set: the
//! binary then prints the document of the services `farine::main!` would run, without
//! connecting to any broker, and exits. What the document holds, per service:
//!
//! - **servers**: each distinct `amqp_uri` of the services' settings (from `FARINE_INI`),
//!   without its password; a placeholder when `FARINE_INI` is unset;
//! - **consumers** (`#[amqp::consume]`): a `receive` operation on a channel whose address is
//!   the routing key on the consumer's exchange (AMQP binding `is: routingKey`), the queue in
//!   `x-farine-queue`;
//! - **publishers** (`#[amqp::publish]`): a `send` operation to the exchange and routing key;
//! - **RPC methods** (`#[rpc::method]`): a `receive` operation on the request queue
//!   `<service>__<method>` (binding `is: queue`) whose payload is the `{"args": [...],
//!   "kwargs": {...}}` envelope, with a `reply` on a channel of dynamic address (the request's
//!   `reply_to`): item frames `{"body": ..., "__end__": ...}`, the end frame and the error
//!   frame; and, with `broadcast = "..."`, a `send` to that fanout exchange.
//!
//! Payload schemas come from the Rust types: with farine's `schema` feature, a type that
//! implements `schemars::JsonSchema` (re-exported as `farine::schemars`) has its schema (named
//! types under `components/schemas`); any other type has `{}`.
//!
//! ```
//! use farine::prelude::*;
//!
//! #[derive(Default)]
//! pub struct Greeter;
//!
//! #[farine::service]
//! impl Greeter {
//!     #[rpc::method]
//!     async fn hello(&self, name: String) -> String {
//!         format!("hello {name}")
//!     }
//! }
//!
//! let doc = farine::describe::document(None, &["greeter"])?;
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! assert_eq!(doc["channels"]["greeter.hello"]["address"], "greeter__hello");
//! assert_eq!(doc["operations"]["greeter.hello"]["action"], "receive");
//! # Ok::<(), farine::Error>(())
//! ```

use crate::config::{Config, ServiceConfig};
use crate::entry::consume::ConsumeSpec;
use crate::entry::Registered;
use crate::registry::{self, ServiceDef, ServiceRegistration};
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::process::ExitCode;

/// The environment variable that puts a service binary in describe mode: when it is set,
/// `farine::main!` prints the AsyncAPI document of its services on stdout and exits 0,
/// without connecting to anything. `farine describe --start MODULE` sets it.
///
/// ```no_run
/// // What `farine describe` does with the built binary.
/// let out = std::process::Command::new("target/debug/calc")
///     .env(farine::describe::ENV, "1")
///     .output()?;
/// let doc: farine::serde_json::Value = farine::serde_json::from_slice(&out.stdout)?;
/// assert_eq!(doc["asyncapi"], "3.0.0");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const ENV: &str = "FARINE_DESCRIBE";

/// The version of the AsyncAPI specification the document follows.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The AMQP bindings' version.
const BINDING_VERSION: &str = "0.3.0";

/// The `amqp_uri` the document shows when `FARINE_INI` is unset.
const PLACEHOLDER_URI: &str = "amqp://localhost:5672/%2f";

/// The origin given to the placeholder configuration.
const PLACEHOLDER_ORIGIN: &str = "(FARINE_INI unset)";

/// Where the payload schemas of one document are collected: named types go to
/// `components/schemas` and are referenced from where they are used.
pub struct Schemas {
    #[cfg(feature = "schema")]
    generator: schemars::SchemaGenerator,
}

impl Schemas {
    fn new() -> Self {
        Schemas {
            #[cfg(feature = "schema")]
            generator: schemars::generate::SchemaSettings::draft07()
                .with(|settings| settings.definitions_path = "/components/schemas".into())
                .into_generator(),
        }
    }

    /// The named schemas collected, for `components/schemas`.
    fn definitions(&mut self) -> Map<String, Value> {
        #[cfg(feature = "schema")]
        {
            self.generator.take_definitions(true)
        }
        #[cfg(not(feature = "schema"))]
        {
            Map::new()
        }
    }
}

/// The schema of one Rust type, as the macro captured it: `None` when the type has none (it
/// does not implement `JsonSchema`, or farine's `schema` feature is off).
pub type SchemaFn = fn(&mut Schemas) -> Option<Value>;

/// The [`SchemaFn`] of a type without a schema.
pub fn no_schema(_: &mut Schemas) -> Option<Value> {
    None
}

/// The [`SchemaFn`] of a type that implements `JsonSchema` (draft 7, as AsyncAPI 3.0 reads).
#[cfg(feature = "schema")]
pub fn json_schema<T: schemars::JsonSchema>(schemas: &mut Schemas) -> Option<Value> {
    let mut schema = schemas.generator.subschema_for::<T>();
    for transform in schemas.generator.transforms_mut() {
        transform.transform(&mut schema);
    }
    Some(schema.to_value())
}

/// The types of one method, as the macro registered them: its message parameters (a
/// consumer's body, an RPC method's arguments) by name, and an RPC method's result (the
/// item type of a stream).
pub struct MethodSchemas {
    pub method: &'static str,
    pub params: Vec<(&'static str, SchemaFn)>,
    pub returns: Option<SchemaFn>,
}

/// Describe mode (see [`ENV`]): prints the document of the services of `crates` (all when
/// `None`) and returns the exit code.
pub(crate) fn run(crates: Option<&[String]>) -> ExitCode {
    let printed = selected(crates).and_then(|services| {
        let config = match std::env::var_os(crate::config::ENV_VAR) {
            Some(path) if !path.is_empty() => Some(Config::from_env()?),
            _ => None,
        };
        let doc = build(&services, config.as_ref())?;
        serde_json::to_string_pretty(&doc).map_err(Error::json("printing the document"))
    });
    let written = printed.and_then(|text| {
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), "{text}")
            .map_err(|err| Error::Runtime(format!("cannot print the document: {err}")))
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("farine: {err}");
            ExitCode::FAILURE
        }
    }
}

fn selected(crates: Option<&[String]>) -> Result<Vec<&'static ServiceRegistration>> {
    let mut services = registry::services();
    if let Some(crates) = crates {
        services.retain(|r| crates.iter().any(|c| c == r.krate()));
    }
    if services.is_empty() {
        return Err(Error::Runtime(
            "no #[farine::service] of this crate is compiled into this binary: nothing to describe"
                .into(),
        ));
    }
    Ok(services)
}

/// The AsyncAPI document of the services named `names` compiled into this binary (every one
/// when `names` is empty), configured by `config` (`None`: the built-in defaults and a
/// placeholder server). An unknown name is an error listing the known ones.
pub fn document(config: Option<&Config>, names: &[&str]) -> Result<Value> {
    let all = registry::services();
    let services = if names.is_empty() {
        all
    } else {
        names
            .iter()
            .map(|name| {
                all.iter()
                    .copied()
                    .find(|r| r.name == *name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = all.iter().map(|r| r.name).collect();
                        Error::Runtime(format!(
                            "no service named {name:?} in this binary (it has: {})",
                            known.join(", ")
                        ))
                    })
            })
            .collect::<Result<_>>()?
    };
    build(&services, config)
}

fn build(services: &[&ServiceRegistration], config: Option<&Config>) -> Result<Value> {
    let placeholder;
    let config = match config {
        Some(config) => config,
        None => {
            placeholder = Config::from_str(
                &format!("[DEFAULT]\namqp_uri = {PLACEHOLDER_URI}\n"),
                PLACEHOLDER_ORIGIN,
            )?;
            &placeholder
        }
    };
    let mut doc = Document {
        servers: Vec::new(),
        channels: Map::new(),
        operations: Map::new(),
        messages: Map::new(),
        schemas: Schemas::new(),
    };
    let mut described = Vec::new();
    for registration in services {
        let settings = config.service(registration.name)?;
        let def = (registration.build)();
        doc.service(&def, &settings, config.path().display().to_string());
        described.push(registration.name);
    }
    let mut components = Map::new();
    let schemas = doc.schemas.definitions();
    if !schemas.is_empty() {
        components.insert("schemas".into(), Value::Object(schemas));
    }
    let mut messages = std::mem::take(&mut doc.messages);
    messages.insert("farine.end".into(), end_message());
    messages.insert("farine.error".into(), error_message());
    components.insert("messages".into(), Value::Object(messages));
    let servers: Map<String, Value> = doc
        .servers
        .iter()
        .map(|(id, _, server)| (id.clone(), server.clone()))
        .collect();
    Ok(json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": described.join(", "),
            "version": "0.0.0",
            "description": format!(
                "The farine services {}, as their code registers them (wire protocol: farine's \
                 docs/PROTOCOL.md). Every body is JSON.",
                described.join(", ")
            ),
        },
        "defaultContentType": "application/json",
        "servers": servers,
        "channels": doc.channels,
        "operations": doc.operations,
        "components": components,
    }))
}

struct Document {
    /// (id, the redacted URI, the server object).
    servers: Vec<(String, String, Value)>,
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    messages: Map<String, Value>,
    schemas: Schemas,
}

/// A `$ref` to `#/<section>/<id>`, escaped as a JSON pointer.
fn reference(path: &[&str]) -> Value {
    let escaped: Vec<String> = path
        .iter()
        .map(|part| part.replace('~', "~0").replace('/', "~1"))
        .collect();
    json!({ "$ref": format!("#/{}", escaped.join("/")) })
}

impl Document {
    fn service(&mut self, def: &ServiceDef, settings: &ServiceConfig, file: String) {
        let service = def.name;
        let (server, vhost) = self.server(settings, &file);
        let servers = vec![reference(&["servers", &server])];
        let queue_of = |name: &str| {
            json!({
                "name": name,
                "durable": settings.durable,
                "exclusive": settings.exclusive,
                "autoDelete": settings.auto_delete,
                "vhost": vhost,
            })
        };
        let exchange_of = |name: &str, kind: &str| {
            json!({
                "name": name,
                "type": kind,
                "durable": settings.durable,
                "autoDelete": settings.auto_delete,
                "vhost": vhost,
            })
        };
        let schemas_of = |method: &str| def.schemas.iter().find(|s| s.method == method);
        for registered in &def.entries {
            match registered {
                Registered::Consume(attr, _) => {
                    let id = format!("{service}.{}", attr.method);
                    let Ok(spec) = ConsumeSpec::resolve(service, attr, settings) else {
                        // A bad `exchange_type` (the service would not start): skip it.
                        continue;
                    };
                    let body = schemas_of(attr.method)
                        .and_then(|s| s.params.first())
                        .map(|(_, schema)| *schema);
                    let payload = self.schema(body);
                    self.message(&id, "body", payload, None);
                    self.channels.insert(
                        id.clone(),
                        json!({
                            "address": spec.routing_key,
                            "title": format!("{} on exchange {}", spec.routing_key, spec.exchange),
                            "description": format!(
                                "Messages published to exchange `{}` with routing key `{}`, \
                                 consumed from queue `{}`. A failing message is retried through \
                                 `{q}.retry.<ms>ms` queues, then parked in `{q}.dlq`.",
                                spec.exchange, spec.routing_key, spec.queue, q = spec.queue
                            ),
                            "servers": servers,
                            "messages": { "body": reference(&["components", "messages", &id]) },
                            "bindings": { "amqp": {
                                "is": "routingKey",
                                "exchange": exchange_of(spec.exchange, spec.kind.as_str()),
                                "bindingVersion": BINDING_VERSION,
                            }},
                            "x-farine-queue": queue_of(&spec.queue),
                        }),
                    );
                    self.operations.insert(
                        id.clone(),
                        json!({
                            "action": "receive",
                            "channel": reference(&["channels", &id]),
                            "title": id,
                            "summary": format!("Consumer {id} (#[amqp::consume]): acked once the handler succeeded."),
                            "messages": [reference(&["channels", &id, "messages", "body"])],
                            "bindings": { "amqp": { "ack": true, "bindingVersion": BINDING_VERSION } },
                        }),
                    );
                }
                Registered::Rpc(attr, _) => {
                    let id = format!("{service}.{}", attr.method);
                    let reply = format!("{id}.reply");
                    let queue = crate::rpc::names::queue_name(service, attr.method);
                    let schemas = schemas_of(attr.method);
                    let request = self.request(schemas.map_or(&[][..], |s| &s.params));
                    self.message(&id, "request", request, Some("A call (docs/PROTOCOL.md, \"Calling a method\"): positional `args`, then `kwargs` by name."));
                    let item = self.schema(schemas.and_then(|s| s.returns));
                    let item = json!({
                        "type": "object",
                        "properties": {
                            "body": item,
                            "__end__": { "type": "boolean" },
                        },
                        "required": ["body", "__end__"],
                    });
                    self.message(&reply, "item", item, Some("One result (a unary call's, or one item of a stream); `__end__: true` when it is the last."));
                    self.channels.insert(
                        id.clone(),
                        json!({
                            "address": queue,
                            "title": format!("queue {queue}"),
                            "description": format!(
                                "The requests of {id}: published to exchange `{service}` with \
                                 routing key `{queue}` (mandatory), consumed from queue `{queue}`; \
                                 refused requests are parked in `{queue}.dlq`."
                            ),
                            "servers": servers,
                            "messages": { "request": reference(&["components", "messages", &id]) },
                            "bindings": { "amqp": {
                                "is": "queue",
                                "queue": queue_of(&queue),
                                "bindingVersion": BINDING_VERSION,
                            }},
                            "x-farine-exchange": exchange_of(service, settings.exchange_type.as_str()),
                        }),
                    );
                    self.channels.insert(
                        reply.clone(),
                        json!({
                            "address": null,
                            "title": format!("replies of {id}"),
                            "description": "The caller's reply queue, named by the request's \
                                `reply_to`: RabbitMQ's direct reply-to, `farine.reply.<32 hex>` \
                                or 32 hex digits. Frames carry the request's `correlation_id`.",
                            "servers": servers,
                            "messages": {
                                "item": reference(&["components", "messages", &reply]),
                                "end": reference(&["components", "messages", "farine.end"]),
                                "error": reference(&["components", "messages", "farine.error"]),
                            },
                            "bindings": { "amqp": {
                                "is": "routingKey",
                                "exchange": { "name": "", "type": "default", "vhost": vhost },
                                "bindingVersion": BINDING_VERSION,
                            }},
                        }),
                    );
                    let reply_messages: Vec<Value> = ["item", "end", "error"]
                        .iter()
                        .map(|m| reference(&["channels", &reply, "messages", m]))
                        .collect();
                    self.operations.insert(
                        id.clone(),
                        json!({
                            "action": "receive",
                            "channel": reference(&["channels", &id]),
                            "title": id,
                            "summary": format!("RPC method {id} (#[rpc::method]): a unary result, or a stream of items, then the end."),
                            "messages": [reference(&["channels", &id, "messages", "request"])],
                            "reply": {
                                "address": {
                                    "location": "$message.header#/reply_to",
                                    "description": "The request's AMQP property `reply_to`.",
                                },
                                "channel": reference(&["channels", &reply]),
                                "messages": reply_messages,
                            },
                            "bindings": { "amqp": { "ack": true, "bindingVersion": BINDING_VERSION } },
                        }),
                    );
                    if let Some(exchange) = attr.broadcast {
                        let events = format!("{id}.events");
                        let payload = self.schema(None);
                        self.message(&events, "event", payload, Some("An event of a successful call (its result, unless the method sends its own through `Broadcast`)."));
                        self.publisher(&events, exchange, "", "fanout", &servers, &vhost, settings);
                    }
                }
                Registered::Listen(..) | Registered::Execute(..) => {}
            }
        }
        for publisher in &def.publishers {
            let spec = publisher.spec(service);
            let id = format!("{service}.{}", spec.method);
            let payload = self.schema(None);
            self.message(
                &id,
                "message",
                payload,
                Some("What the method sends with its `Publisher`."),
            );
            let kind = if spec.exchange == service {
                settings.exchange_type.as_str()
            } else {
                "direct"
            };
            self.publisher(
                &id,
                spec.exchange,
                spec.routing_key,
                kind,
                &servers,
                &vhost,
                settings,
            );
        }
    }

    /// A `send` operation and its channel, to `exchange` with `routing_key`.
    #[allow(clippy::too_many_arguments)]
    fn publisher(
        &mut self,
        id: &str,
        exchange: &str,
        routing_key: &str,
        kind: &str,
        servers: &[Value],
        vhost: &str,
        settings: &ServiceConfig,
    ) {
        self.channels.insert(
            id.to_string(),
            json!({
                "address": routing_key,
                "title": format!("{routing_key} on exchange {exchange}"),
                "servers": servers,
                "messages": { "message": reference(&["components", "messages", id]) },
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": kind,
                        "durable": settings.durable,
                        "autoDelete": settings.auto_delete,
                        "vhost": vhost,
                    },
                    "bindingVersion": BINDING_VERSION,
                }},
            }),
        );
        self.operations.insert(
            id.to_string(),
            json!({
                "action": "send",
                "channel": reference(&["channels", id]),
                "title": id,
                "summary": format!("Publisher {id}: confirmed by the broker."),
                "messages": [reference(&["channels", id, "messages", "message"])],
                "bindings": { "amqp": {
                    "deliveryMode": settings.delivery_mode,
                    "mandatory": kind != "fanout",
                    "bindingVersion": BINDING_VERSION,
                }},
            }),
        );
    }

    /// The id of the server of `settings.amqp_uri` (added on first use), and its vhost.
    fn server(&mut self, settings: &ServiceConfig, file: &str) -> (String, String) {
        let raw = settings.amqp_uri.expose();
        let shown = settings.amqp_uri.to_string();
        let (scheme, rest) = raw.split_once("://").unwrap_or(("amqp", raw));
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let vhost = match percent_decode(path) {
            vhost if vhost.is_empty() => "/".to_string(),
            vhost => vhost,
        };
        if let Some((id, _, _)) = self.servers.iter().find(|(_, uri, _)| *uri == shown) {
            return (id.clone(), vhost);
        }
        let id = match self.servers.len() {
            0 => "broker".to_string(),
            n => format!("broker{}", n + 1),
        };
        let description = if file == PLACEHOLDER_ORIGIN {
            format!(
                "A placeholder ({shown}): FARINE_INI is unset. Set it to the services' farine.ini \
                 to show their broker."
            )
        } else {
            format!("`amqp_uri` of [{}] in {file}: {shown}", settings.name)
        };
        let mut server = json!({
            "host": host,
            "protocol": scheme,
            "description": description,
        });
        if scheme.starts_with("amqp") {
            server["protocolVersion"] = json!("0-9-1");
        }
        if !path.is_empty() {
            server["pathname"] = json!(format!("/{path}"));
        }
        self.servers.push((id.clone(), shown, server));
        (id, vhost)
    }

    /// A type's schema, `{}` when it has none.
    fn schema(&mut self, schema: Option<SchemaFn>) -> Value {
        schema
            .and_then(|schema| schema(&mut self.schemas))
            .unwrap_or_else(|| json!({}))
    }

    /// The `{"args": [...], "kwargs": {...}}` envelope of a call with these parameters.
    fn request(&mut self, params: &[(&'static str, SchemaFn)]) -> Value {
        let mut items = Vec::new();
        let mut properties = Map::new();
        for (name, schema) in params {
            let schema = self.schema(Some(*schema));
            items.push(schema.clone());
            properties.insert(name.to_string(), schema);
        }
        let mut args = json!({ "type": "array", "maxItems": items.len() });
        if !items.is_empty() {
            args["items"] = Value::Array(items);
        }
        json!({
            "type": "object",
            "properties": {
                "args": args,
                "kwargs": {
                    "type": "object",
                    "properties": properties,
                    "additionalProperties": false,
                },
            },
        })
    }

    /// Adds `components/messages/<id>`.
    fn message(&mut self, id: &str, name: &str, payload: Value, description: Option<&str>) {
        let mut message = json!({
            "name": name,
            "title": id,
            "contentType": "application/json",
            "payload": payload,
            "correlationId": {
                "location": "$message.header#/correlation_id",
                "description": "The AMQP property `correlation_id`.",
            },
        });
        if let Some(description) = description {
            message["description"] = json!(description);
        }
        self.messages.insert(id.to_string(), message);
    }
}

fn end_message() -> Value {
    json!({
        "name": "end",
        "title": "end of a reply",
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "properties": { "__end__": { "const": true } },
            "required": ["__end__"],
            "additionalProperties": false,
        },
    })
}

fn error_message() -> Value {
    json!({
        "name": "error",
        "title": "error reply (terminal)",
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "properties": {
                "__except__": { "type": "string" },
                "__error__": {
                    "type": "object",
                    "properties": {
                        "kind": {
                            "type": "string",
                            "enum": ["service", "bad_arguments", "unknown_method", "timeout", "internal"],
                        },
                        "message": { "type": "string" },
                        "data": {},
                    },
                },
            },
            "required": ["__except__"],
        },
    })
}

/// `%2f` -> `/`; a malformed escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_are_percent_decoded() {
        assert_eq!(percent_decode("%2f"), "/");
        assert_eq!(percent_decode("farine-test"), "farine-test");
        assert_eq!(percent_decode("a%zz%2F"), "a%zz/");
    }

    #[test]
    fn references_are_escaped_json_pointers() {
        assert_eq!(
            reference(&["channels", "a/b~c"]),
            json!({ "$ref": "#/channels/a~1b~0c" })
        );
    }
}
