//! The exchanges and queues a service relies on, from its registrations and settings exactly
//! as the entry points declare them at start, compared with the broker's.

use super::Report;
use crate::config::{ExchangeKind, ServiceConfig};
use crate::entry::consume::ConsumeSpec;
use crate::entry::deliveries::queue_topology;
use crate::entry::sse::ListenerSpec;
use crate::entry::Registered;
use crate::registry::ServiceDef;
use crate::retry::{self, RetryPolicy};
use crate::rpc::names::queue_name;
use crate::transport::amqp::{Found, Inspector};
use crate::transport::Declaration;

/// An exchange or a queue the service needs.
pub(super) struct Need {
    /// How farine declares it (an exchange or a queue; never a binding).
    declaration: Declaration,
    /// Whether the start declares it (`auto_declare = false` leaves the entry points' own
    /// exchanges and queues to someone else).
    declared: bool,
    /// Which entry point needs it: `service.method`.
    by: String,
}

impl Need {
    fn name(&self) -> &str {
        match &self.declaration {
            Declaration::Exchange { name, .. } | Declaration::Queue { name, .. } => name,
            Declaration::Bind { queue, .. } => queue,
        }
    }

    /// `exchange "calc" (direct, durable)`.
    fn describe(&self) -> String {
        match &self.declaration {
            Declaration::Exchange {
                name,
                kind,
                durable,
                auto_delete,
            } => format!(
                "exchange {name:?} ({kind}{}{})",
                if *durable { ", durable" } else { "" },
                if *auto_delete { ", auto-delete" } else { "" }
            ),
            Declaration::Queue { name, options } => {
                let mut traits = Vec::new();
                if options.durable {
                    traits.push("durable".to_string());
                }
                if options.exclusive {
                    traits.push("exclusive".to_string());
                }
                if options.auto_delete {
                    traits.push("auto-delete".to_string());
                }
                if let Some(ttl) = options.message_ttl_ms {
                    traits.push(format!("ttl {ttl} ms"));
                }
                format!("queue {name:?} ({})", traits.join(", "))
            }
            Declaration::Bind { queue, .. } => format!("binding of {queue:?}"),
        }
    }

    /// The key to name when the broker refuses the declaration: the argument it names, as
    /// the setting that decides it.
    fn key(&self, refusal: &str) -> &'static str {
        let argument = refusal
            .split_once("inequivalent arg '")
            .and_then(|(_, rest)| rest.split_once('\''))
            .map(|(argument, _)| argument);
        match argument {
            Some("type") => "type",
            Some("durable") => "durable",
            Some("auto_delete") => "auto_delete",
            Some("exclusive") => "exclusive",
            Some(arg) if arg.starts_with("x-message-ttl") || arg.starts_with("x-dead-letter") => {
                "retry_delay"
            }
            _ if refusal.contains("RESOURCE_LOCKED") => "exclusive",
            _ => match self.declaration {
                Declaration::Exchange { .. } => "type",
                _ => "durable",
            },
        }
    }
}

/// Lists each entry point of `def` with its queue and binding, and returns the exchanges
/// and queues they need, as the entry points would declare them at start.
pub(super) fn entry_points(
    report: &mut Report,
    def: &ServiceDef,
    settings: &ServiceConfig,
) -> Vec<Need> {
    let service = def.name;
    let mut needs = Vec::new();
    // What an entry point declares with auto_declare on; with it off, its own exchange and
    // queue are needed all the same, but not declared.
    let mut declaring = settings.clone();
    declaring.auto_declare = true;
    let own = |topology: Vec<Declaration>, by: &str, needs: &mut Vec<Need>| {
        for declaration in topology {
            if !matches!(declaration, Declaration::Bind { .. }) {
                needs.push(Need {
                    declaration,
                    declared: settings.auto_declare,
                    by: by.to_string(),
                });
            }
        }
    };
    let always = |topology: Vec<Declaration>, by: &str, needs: &mut Vec<Need>| {
        for declaration in topology {
            needs.push(Need {
                declaration,
                declared: true,
                by: by.to_string(),
            });
        }
    };
    let not_bound = if settings.auto_declare {
        ""
    } else {
        " (auto_declare = false: bound by someone else)"
    };
    for registered in &def.entries {
        match registered {
            Registered::Consume(attr, _) => {
                let label = format!("{service}.{}", attr.method);
                let spec = match ConsumeSpec::resolve(service, attr, settings) {
                    Ok(spec) => spec,
                    Err(err) => {
                        report.problem(err);
                        continue;
                    }
                };
                report.line(format!(
                    "  {label}: consume, queue {:?} bound to exchange {:?} ({}) with routing key {:?}{not_bound}",
                    spec.queue, spec.exchange, spec.kind, spec.routing_key
                ));
                let topology = queue_topology(
                    &declaring,
                    spec.exchange,
                    spec.kind,
                    &spec.queue,
                    spec.routing_key,
                );
                own(topology, &label, &mut needs);
                let policy = RetryPolicy::from_settings(settings);
                always(retry::topology(&spec.queue, &policy), &label, &mut needs);
            }
            Registered::Rpc(attr, _) => {
                let label = format!("{service}.{}", attr.method);
                let queue = queue_name(service, attr.method);
                let broadcast = attr
                    .broadcast
                    .map(|exchange| format!(", broadcasts to fanout exchange {exchange:?}"))
                    .unwrap_or_default();
                report.line(format!(
                    "  {label}: rpc, queue {queue:?} bound to exchange {service:?} ({}) with routing key {queue:?}{not_bound}{broadcast}",
                    settings.exchange_type
                ));
                let topology =
                    queue_topology(&declaring, service, settings.exchange_type, &queue, &queue);
                own(topology, &label, &mut needs);
                always(
                    vec![retry::dead_letter_topology(&queue)],
                    &label,
                    &mut needs,
                );
                if let Some(exchange) = attr.broadcast {
                    let exchange = Declaration::Exchange {
                        name: exchange.to_string(),
                        kind: ExchangeKind::Fanout,
                        durable: settings.durable,
                        auto_delete: false,
                    };
                    always(vec![exchange], &label, &mut needs);
                }
            }
            Registered::Listen(attr, _) => {
                let label = format!("{service}.{}", attr.method);
                match ListenerSpec::from_settings(label.clone(), attr.endpoint, settings) {
                    Ok(spec) => report.line(format!(
                        "  {label}: stream, listens to {} (server-sent events)",
                        crate::config::redact_uri(&spec.endpoint)
                    )),
                    Err(err) => report.problem(err),
                }
            }
            Registered::Execute(attr, _) => {
                report.line(format!(
                    "  {service}.{}: execute, a supervised loop (no queue)",
                    attr.method
                ));
            }
        }
    }
    for publisher in &def.publishers {
        let spec = publisher.spec(service);
        let label = format!("{service}.{}", spec.method);
        report.line(format!(
            "  {label}: publish, to exchange {:?} with routing key {:?}",
            spec.exchange, spec.routing_key
        ));
        let exchange = Declaration::Exchange {
            name: spec.exchange.to_string(),
            kind: settings.exchange_type,
            durable: settings.durable,
            auto_delete: settings.auto_delete,
        };
        own(vec![exchange], &label, &mut needs);
    }
    needs
}

/// Compares each need with the broker, changing nothing: what exists as declared and what
/// the start will declare are listed; what is missing and will not be declared, and what
/// exists otherwise than declared, are problems.
pub(super) async fn compare(
    report: &mut Report,
    inspector: &Inspector,
    settings: &ServiceConfig,
    needs: &[Need],
) {
    let section = &settings.name;
    let mut existing = Vec::new();
    let mut missing = Vec::new();
    let mut seen: Vec<&Declaration> = Vec::new();
    for need in needs {
        // Entry points share their exchange: each declaration once.
        if need.name().is_empty() || seen.contains(&&need.declaration) {
            continue;
        }
        seen.push(&need.declaration);
        let found = match &need.declaration {
            Declaration::Exchange {
                name,
                kind,
                durable,
                auto_delete,
            } => {
                inspector
                    .exchange(name, *kind, *durable, *auto_delete)
                    .await
            }
            Declaration::Queue { name, options } => inspector.queue(name, options).await,
            Declaration::Bind { .. } => continue,
        };
        match found {
            Ok(Found::AsDeclared) => existing.push(need.describe()),
            Ok(Found::Missing) if need.declared => missing.push(need.describe()),
            Ok(Found::Missing) => report.problem(settings.error(
                "auto_declare",
                format!(
                    "{} (needed by {}) does not exist, and auto_declare = false: the start will \
                     not declare it; declare it first, or set auto_declare = true",
                    need.describe(),
                    need.by
                ),
            )),
            Ok(Found::Refused(refusal)) => report.problem(settings.error(
                need.key(&refusal),
                format!(
                    "{} declares {}, but it exists with other settings: the broker refuses that \
                     declaration ({refusal})",
                    need.by,
                    need.describe()
                ),
            )),
            Err(err) => report.problem(settings.error("amqp_uri", err.to_string())),
        }
    }
    if !existing.is_empty() {
        report.line(format!(
            "  [{section}] exist as declared: {}",
            existing.join(", ")
        ));
    }
    if !missing.is_empty() {
        report.line(format!(
            "  [{section}] will be declared at start: {}",
            missing.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::QueueOptions;

    fn need(declaration: Declaration) -> Need {
        Need {
            declaration,
            declared: true,
            by: "calc.on_operation".into(),
        }
    }

    #[test]
    fn a_refusal_names_the_setting_behind_the_argument() {
        let exchange = need(Declaration::Exchange {
            name: "calc".into(),
            kind: ExchangeKind::Direct,
            durable: true,
            auto_delete: false,
        });
        let refused = |arg: &str| {
            format!("PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange 'calc' in vhost '/': received 'direct' but current is 'fanout'")
        };
        assert_eq!(exchange.key(&refused("type")), "type");
        assert_eq!(exchange.key(&refused("durable")), "durable");
        assert_eq!(exchange.key("ACCESS_REFUSED - no"), "type");
        let retry = need(Declaration::Queue {
            name: "operations.retry.1000ms".into(),
            options: QueueOptions {
                durable: true,
                message_ttl_ms: Some(1000),
                ..Default::default()
            },
        });
        assert_eq!(retry.key(&refused("x-message-ttl")), "retry_delay");
        assert_eq!(
            retry.key("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue"),
            "exclusive"
        );
        assert_eq!(
            retry.describe(),
            r#"queue "operations.retry.1000ms" (durable, ttl 1000 ms)"#
        );
        assert_eq!(exchange.describe(), r#"exchange "calc" (direct, durable)"#);
    }
}
