//! Every misuse of the attributes, as a `syn::Error` spanned on the offending token. All
//! errors of a service are reported together so the user fixes them in one pass.

use crate::ast::{EntryKind, Injected, Method, Service};
use syn::spanned::Spanned;
use syn::{FnArg, Pat, ReturnType, Type};

#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn at(&mut self, span: impl Spanned, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span.span(), message));
    }
}

pub fn check(service: &Service) -> syn::Result<()> {
    let mut errors = Errors::default();
    let item = &service.item;
    if let Some((_, path, _)) = &item.trait_ {
        errors.at(
            path,
            "#[farine::service] goes on an inherent `impl YourType { ... }`, not a trait impl",
        );
    }
    if !item.generics.params.is_empty() {
        errors.at(&item.generics, "a farine service cannot be generic");
    }
    let name_ok = !service.name.is_empty()
        && service
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if !name_ok {
        errors.at(
            service.name_span,
            format!(
                "service name {:?}: expected lowercase letters, digits, `_`, `-` or `.`",
                service.name
            ),
        );
    }
    for method in &service.methods {
        check_method(method, &mut errors);
    }
    errors.0.map_or(Ok(()), Err)
}

fn check_method(method: &Method, errors: &mut Errors) {
    let sig = &method.sig;
    let name = sig.ident.to_string();
    for extra in method.entries.iter().skip(1) {
        errors.at(
            &extra.attr,
            format!(
                "`{name}` already is a #[{}] entry point; a method has at most one entry point",
                method.entries[0].kind.shown()
            ),
        );
    }
    for (extra, _) in method.publishes.iter().skip(1) {
        errors.at(extra, format!("duplicate #[amqp::publish] on `{name}`"));
    }

    match sig.receiver() {
        Some(receiver) if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        Some(receiver) => errors.at(
            receiver,
            format!("`{name}` must take `&self`: one instance of the service is shared by all its entry points"),
        ),
        None => errors.at(
            &sig.ident,
            format!("`{name}` must take `&self`: farine calls it on the service instance"),
        ),
    }
    if !sig.generics.params.is_empty() {
        errors.at(
            &sig.generics,
            format!("`{name}` cannot be generic: farine must know the types it decodes"),
        );
    }
    let entry = method.entry();
    let needs_async = !matches!(entry.map(|e| e.kind), Some(EntryKind::Rpc));
    if needs_async && sig.asyncness.is_none() {
        errors.at(sig.fn_token, format!("`{name}` must be an `async fn`"));
    }
    if let Some(entry) = entry {
        if entry.kind == EntryKind::Rpc && sig.asyncness.is_none() && !returns_stream(&sig.output) {
            errors.at(
                sig.fn_token,
                format!("#[rpc::method] `{name}` must be an `async fn`, or a `fn` returning `impl Stream<Item = T> + Send + 'static` for a streaming method"),
            );
        }
    }

    check_params(method, errors);
    if let Some(entry) = entry {
        check_entry_args(method, entry, errors);
    }
    for (_, args) in &method.publishes {
        for key in ["exchange", "routing_key"] {
            if let Some(lit) = args.str(key) {
                if lit.value().contains(char::is_whitespace) {
                    errors.at(&lit, format!("`{key}` cannot contain whitespace"));
                }
            }
        }
    }
}

fn check_params(method: &Method, errors: &mut Errors) {
    let sig = &method.sig;
    let name = sig.ident.to_string();
    let publishers = method
        .params
        .iter()
        .filter(|p| p.injected == Some(Injected::Publisher))
        .count();
    match (method.publishes.first(), publishers) {
        (None, 0) | (Some(_), 1) => {}
        (None, _) => {
            for param in method
                .params
                .iter()
                .filter(|p| p.injected == Some(Injected::Publisher))
            {
                errors.at(
                    &param.ty,
                    format!("a `Publisher` parameter needs #[amqp::publish(exchange = \"...\", routing_key = \"...\")] on `{name}`, which says where it publishes"),
                );
            }
        }
        (Some((attr, _)), 0) => errors.at(
            attr,
            format!(
                "#[amqp::publish] gives `{name}` a publisher: add a parameter `publish: Publisher`"
            ),
        ),
        (Some(_), _) => errors.at(
            &sig.inputs,
            format!("`{name}` takes one `Publisher` parameter, not {publishers}"),
        ),
    }

    for input in &sig.inputs {
        if let FnArg::Typed(typed) = input {
            if let Type::ImplTrait(_) = &*typed.ty {
                errors.at(
                    &typed.ty,
                    "`impl Trait` parameters are not supported: name the type",
                );
            }
        }
    }

    let Some(entry) = method.entry() else { return };
    for param in method.message_params() {
        if let Type::Reference(reference) = &*param.ty {
            errors.at(
                reference,
                "the runtime decodes this parameter from the message, so it must be an owned type (`String`, not `&str`)",
            );
        }
    }
    let message: Vec<_> = method.message_params().collect();
    match entry.kind {
        EntryKind::Consume | EntryKind::Stream => {
            let what = if entry.kind == EntryKind::Consume {
                "message body, e.g. `order: Order` (any serde::Deserialize type) or `body: serde_json::Value`"
            } else {
                "event, e.g. `event: Event<Price>` or `event: Event` for raw data"
            };
            match message.len() {
                1 => {}
                0 => errors.at(
                    &sig.inputs,
                    format!("#[{}] `{name}` must take the {what}", entry.kind.shown()),
                ),
                _ => {
                    for extra in &message[1..] {
                        errors.at(
                            &extra.pat,
                            format!(
                                "#[{}] `{name}` takes one {what}; farine cannot supply this parameter",
                                entry.kind.shown()
                            ),
                        );
                    }
                }
            }
        }
        EntryKind::Execute => {
            for extra in &message {
                errors.at(
                    &extra.pat,
                    format!("#[execute::method] `{name}` is started by the runtime with no arguments; farine cannot supply this parameter"),
                );
            }
        }
        EntryKind::Rpc => {
            for param in &message {
                if !matches!(&*param.pat, Pat::Ident(ident) if ident.by_ref.is_none() && ident.subpat.is_none())
                {
                    errors.at(
                        &param.pat,
                        "an RPC parameter must be a plain name: callers may pass it by name in `kwargs`",
                    );
                }
            }
        }
    }
}

fn check_entry_args(method: &Method, entry: &crate::ast::Entry, errors: &mut Errors) {
    let args = &entry.args;
    if let Some(lit) = args.int("concurrency") {
        if !matches!(lit.base10_parse::<u16>(), Ok(n) if n > 0) {
            errors.at(&lit, "`concurrency` expects a whole number from 1 to 65535");
        }
    }
    if let Some(lit) = args.str("exchange_type") {
        if !["direct", "topic", "fanout", "headers"].contains(&lit.value().as_str()) {
            errors.at(
                &lit,
                "`exchange_type` expects one of \"direct\", \"topic\", \"fanout\", \"headers\"",
            );
        }
    }
    for key in ["exchange", "routing_key", "queue", "broadcast"] {
        if let Some(lit) = args.str(key) {
            let value = lit.value();
            if value.contains(char::is_whitespace) {
                errors.at(&lit, format!("`{key}` cannot contain whitespace"));
            } else if value.is_empty() && key != "routing_key" {
                errors.at(&lit, format!("`{key}` cannot be empty"));
            }
        }
    }
    if let Some(lit) = args.str("restart_delay") {
        if parse_duration_ms(&lit.value()).is_none() {
            errors.at(
                &lit,
                "`restart_delay` expects a duration such as \"500ms\", \"5s\", \"2m\" or \"1h\"",
            );
        }
    }
    if let Some(lit) = args.int("max_restarts") {
        if lit.base10_parse::<u32>().is_err() {
            errors.at(
                &lit,
                "`max_restarts` expects a whole number from 0 to 4294967295",
            );
        }
    }
    let _ = method;
}

/// `"500ms"`, `"5s"`, `"2m"`, `"1h"` as milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A streaming RPC returns `impl Stream<...>` (or a boxed stream type).
pub fn returns_stream(output: &ReturnType) -> bool {
    let ReturnType::Type(_, ty) = output else {
        return false;
    };
    match &**ty {
        Type::ImplTrait(imp) => imp.bounds.iter().any(|bound| match bound {
            syn::TypeParamBound::Trait(t) => {
                t.path.segments.last().is_some_and(|s| s.ident == "Stream")
            }
            _ => false,
        }),
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "BoxStream"),
        _ => false,
    }
}
