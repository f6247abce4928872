//! Every misuse of the attributes, as a `syn::Error` spanned on the offending token. All
//! errors of a service are reported together so the user fixes them in one pass.

use crate::ast::{EntryKind, Injected, Method, Service};
use proc_macro2::Span;
use quote::ToTokens;
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

    /// An error covering all of `tokens` (`new_spanned`: on stable Rust a joined `Span` would
    /// only cover the first token, e.g. the `#` of an attribute).
    fn at(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    fn at_span(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }
}

pub fn check(service: &Service) -> syn::Result<()> {
    let mut errors = Errors::default();
    let item = &service.item;
    let ty = &service.ty_ident;
    if let Some((_, path, _)) = &item.trait_ {
        errors.at(
            path,
            format!("#[farine::service] goes on an inherent impl, not a trait impl: move the entry points into `impl {ty} {{ ... }}`"),
        );
    }
    if !item.generics.params.is_empty() {
        errors.at(
            &item.generics,
            format!("a farine service cannot be generic: the runtime builds one instance of one type; write the impl for a concrete type, e.g. `impl {ty}<Concrete> {{ ... }}`"),
        );
    }
    let name_ok = !service.name.is_empty()
        && service
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if !name_ok {
        errors.at_span(
            service.name_span,
            format!(
                "service name {:?} may only hold lowercase letters, digits, `_`, `-` and `.`: write `#[farine::service(name = {:?})]`",
                service.name,
                suggested_name(&service.name)
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
                "`{name}` is already a #[{}] entry point and a method has only one: put #[{}] on a method of its own",
                method.entries[0].kind.shown(),
                extra.kind.shown()
            ),
        );
    }
    for (extra, _) in method.publishes.iter().skip(1) {
        errors.at(
            extra,
            format!("`{name}` already has #[amqp::publish] and a method has one publisher: publish to another destination from a method of its own"),
        );
    }

    // What the method is, for messages: its entry point, else its publisher.
    let shown = method
        .entry()
        .map(|e| e.kind.shown())
        .unwrap_or("amqp::publish");
    match sig.receiver() {
        Some(receiver) if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        Some(receiver) => errors.at(
            receiver,
            format!("#[{shown}] `{name}` must take `&self`, not `{}`: one instance of the service is shared by all its entry points", show(receiver)),
        ),
        None => errors.at(
            &sig.ident,
            format!(
                "#[{shown}] `{name}` must take `&self`: farine calls it on the service instance; write `{}fn {name}(&self, ...)`",
                if sig.asyncness.is_some() { "async " } else { "" }
            ),
        ),
    }
    if !sig.generics.params.is_empty() {
        errors.at(
            &sig.generics,
            format!("#[{shown}] `{name}` cannot be generic: farine must know the types it decodes; use concrete types (`serde_json::Value` accepts any JSON)"),
        );
    }
    let entry = method.entry();
    let needs_async = !matches!(entry.map(|e| e.kind), Some(EntryKind::Rpc));
    if needs_async && sig.asyncness.is_none() {
        errors.at(
            sig.fn_token,
            format!("#[{shown}] `{name}` must be an `async fn`: write `async fn {name}(...)`"),
        );
    }
    if let Some(entry) = entry {
        if entry.kind == EntryKind::Rpc && sig.asyncness.is_none() && !returns_stream(&sig.output) {
            errors.at(
                sig.fn_token,
                format!("#[rpc::method] `{name}` must be an `async fn` (write `async fn {name}(...)`), or a `fn` returning `impl Stream<Item = T> + Send + 'static` for a streaming method"),
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
                let value = lit.value();
                if value.contains(char::is_whitespace) {
                    errors.at(
                        &lit,
                        format!(
                            "`{key}` cannot contain whitespace: write e.g. {:?}",
                            value.split_whitespace().collect::<Vec<_>>().join("-")
                        ),
                    );
                }
            }
        }
    }
}

fn check_params(method: &Method, errors: &mut Errors) {
    let sig = &method.sig;
    let name = sig.ident.to_string();
    check_injected(method, errors);
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
                    format!("`{name}` takes a `Publisher` but has no #[amqp::publish]: add #[amqp::publish(exchange = \"...\", routing_key = \"...\")] to `{name}` to say where it publishes"),
                );
            }
        }
        (Some((attr, _)), 0) => errors.at(
            attr,
            format!(
                "#[amqp::publish] gives `{name}` a publisher: add a parameter `publish: Publisher`"
            ),
        ),
        (Some(_), _) => {
            for param in method
                .params
                .iter()
                .filter(|p| p.injected == Some(Injected::Publisher))
                .skip(1)
            {
                errors.at(
                    &param.ty,
                    format!("`{name}` takes one `Publisher` parameter, not {publishers}: remove this one"),
                );
            }
        }
    }

    for input in &sig.inputs {
        if let FnArg::Typed(typed) = input {
            if let Type::ImplTrait(_) = &*typed.ty {
                errors.at(
                    &typed.ty,
                    "`impl Trait` parameters are not supported: farine must know the type it decodes; write a concrete type, e.g. `order: Order` or `body: serde_json::Value`",
                );
            }
        }
    }

    let Some(entry) = method.entry() else { return };
    for param in method.message_params() {
        if let Type::Reference(reference) = &*param.ty {
            let owned = owned(&reference.elem);
            errors.at(
                reference,
                format!(
                    "`{}` is decoded from the message, so it cannot borrow: write `{}: {owned}`",
                    show(&param.pat),
                    show(&param.pat),
                ),
            );
        }
    }
    let message: Vec<_> = method.message_params().collect();
    match entry.kind {
        EntryKind::Consume | EntryKind::Stream => {
            if entry.kind == EntryKind::Stream {
                for param in &message {
                    let is_event = matches!(&*param.ty, Type::Path(path)
                        if path.path.segments.last().is_some_and(|s| s.ident == "Event"));
                    if !is_event {
                        errors.at(
                            &param.ty,
                            format!("#[stream::http] `{name}` receives an `Event`: write `Event` (raw data) or `Event<T>` (data decoded from JSON into T)"),
                        );
                    }
                }
            }
            let what = if entry.kind == EntryKind::Consume {
                "message body, e.g. `order: Order` (any serde::Deserialize type) or `body: serde_json::Value`"
            } else {
                "event, e.g. `event: Event<Price>` or `event: Event` for raw data"
            };
            match message.len() {
                1 => {}
                0 => errors.at_span(
                    sig.paren_token.span.join(),
                    format!("#[{}] `{name}` must take the {what}", entry.kind.shown()),
                ),
                _ => {
                    let first = show(&message[0].pat);
                    let what = if entry.kind == EntryKind::Consume {
                        "message body"
                    } else {
                        "event"
                    };
                    for extra in &message[1..] {
                        errors.at(
                            &extra.pat,
                            format!(
                                "#[{}] `{name}` already takes its {what} as `{first}`, and farine cannot supply `{}`: put everything the message carries in one type, e.g. `#[derive(Deserialize)] struct Body {{ ... }}`",
                                entry.kind.shown(),
                                show(&extra.pat),
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
                    format!("#[execute::method] `{name}` is started by the runtime with no arguments, so farine cannot supply `{}`: remove it and keep such settings in the service's fields", show(&extra.pat)),
                );
            }
        }
        EntryKind::Rpc => {
            for param in &message {
                if !matches!(&*param.pat, Pat::Ident(ident) if ident.by_ref.is_none() && ident.subpat.is_none())
                {
                    errors.at(
                        &param.pat,
                        format!("#[rpc::method] `{name}` takes plain named parameters (callers may pass them by name): write a name, e.g. `args: {}`, and destructure it in the body", show(&param.ty)),
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
            errors.at(
                &lit,
                "`concurrency` is how many messages are handled at once: expected a whole number from 1 to 65535, e.g. `concurrency = 10`",
            );
        }
    }
    if let Some(lit) = args.str("exchange_type") {
        if !["direct", "topic", "fanout", "headers"].contains(&lit.value().as_str()) {
            errors.at(
                &lit,
                format!("unknown `exchange_type` {:?}: write one of \"direct\", \"topic\", \"fanout\", \"headers\"", lit.value()),
            );
        }
    }
    for key in ["exchange", "routing_key", "queue", "broadcast"] {
        if let Some(lit) = args.str(key) {
            let value = lit.value();
            if value.contains(char::is_whitespace) {
                errors.at(
                    &lit,
                    format!(
                        "`{key}` cannot contain whitespace: write e.g. {:?}",
                        value.split_whitespace().collect::<Vec<_>>().join("-")
                    ),
                );
            } else if value.is_empty() && key != "routing_key" {
                errors.at(
                    &lit,
                    format!(
                        "`{key}` cannot be empty: name it, or leave `{key}` out for the default"
                    ),
                );
            }
        }
    }
    if let Some(lit) = args.str("restart_delay") {
        if parse_duration_ms(&lit.value()).is_none() {
            errors.at(
                &lit,
                format!(
                    "`restart_delay` {:?} is not a duration: expected {}",
                    lit.value(),
                    duration::EXPECTED
                ),
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

/// A valid service name close to `name`: lowercase, other characters replaced by `-`.
fn suggested_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c) {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "my-service".to_string()
    } else {
        out
    }
}

/// Source text of a type, pattern or receiver as a user would write it (`&mut self`, not the
/// token stream's `& mut self`).
fn show(tokens: impl ToTokens) -> String {
    let mut text = tokens.to_token_stream().to_string();
    for (from, to) in [
        (" ,", ","),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        ("& ", "&"),
        (" :: ", "::"),
        (":: ", "::"),
        (" : ", ": "),
        ("' ", "'"),
    ] {
        text = text.replace(from, to);
    }
    text
}

/// The owned type to decode instead of a borrowed one: `&str` -> `String`, `&[T]` ->
/// `Vec<T>`, `&T` -> `T`.
fn owned(elem: &Type) -> String {
    match elem {
        Type::Path(path) if path.path.is_ident("str") => "String".to_string(),
        Type::Slice(slice) => format!("Vec<{}>", show(&slice.elem)),
        Type::Reference(inner) => owned(&inner.elem),
        other => show(other),
    }
}

// The grammar of duration keys in farine.ini, so a macro argument accepts exactly what the
// configuration does; farine-macros cannot depend on farine, hence one file compiled by both.
#[allow(dead_code)]
#[path = "../../farine/src/config/duration.rs"]
mod duration;

/// A duration argument (`"500ms"`, `"5s"`, `"1h 30m"`, `"0.5"`: farine's one duration
/// grammar, at most 7 days) as whole milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    // At most 7 days: the milliseconds fit a u64.
    duration::parse_duration(text).and_then(|d| u64::try_from(d.as_millis()).ok())
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

/// Where each runtime-supplied parameter may appear, and how it must be taken.
fn check_injected(method: &Method, errors: &mut Errors) {
    let name = method.sig.ident.to_string();
    let kind = method.entry().map(|e| e.kind);
    let streaming = kind == Some(EntryKind::Rpc) && returns_stream(&method.sig.output);
    let mut databases = 0;
    for param in &method.params {
        let Some(injected) = param.injected else {
            continue;
        };
        match injected {
            Injected::Db | Injected::DbRef | Injected::Tx | Injected::TxByValue => {
                databases += 1;
                if databases == 2 {
                    errors.at(
                        &param.ty,
                        format!("`{name}` takes one database parameter (`db: Db` or `tx: &mut Tx`), not two"),
                    );
                }
                if kind.is_none() {
                    errors.at(
                        &param.ty,
                        "a database parameter is supplied by an entry point: add #[rpc::method], #[amqp::consume], #[stream::http] or #[execute::method]",
                    );
                }
            }
            _ => {}
        }
        match injected {
            Injected::TxByValue => errors.at(
                &param.ty,
                "take the transaction as `tx: &mut Tx`: farine commits it after the method returns Ok and rolls it back otherwise",
            ),
            Injected::Tx | Injected::DbRef if streaming => errors.at(
                &param.ty,
                "a streaming method outlives its call, so it cannot borrow the database: take `db: Db`, which the stream holds until it ends",
            ),
            Injected::Broadcast if kind != Some(EntryKind::Rpc) || streaming => errors.at(
                &param.ty,
                "`Broadcast` is for unary #[rpc::method(broadcast = \"exchange\")] methods",
            ),
            Injected::Broadcast => {
                let declared = method
                    .entry()
                    .is_some_and(|entry| entry.args.str("broadcast").is_some());
                if !declared {
                    errors.at(
                        &param.ty,
                        format!("a `Broadcast` parameter needs #[rpc::method(broadcast = \"exchange\")] on `{name}`, which names the fanout exchange"),
                    );
                }
            }
            Injected::Shutdown if kind != Some(EntryKind::Execute) => errors.at(
                &param.ty,
                "`Shutdown` is for #[execute::method] loops, which run until the service stops",
            ),
            Injected::Client if kind.is_none() => errors.at(
                &param.ty,
                "an injected client is supplied by an entry point: add #[rpc::method], #[amqp::consume], #[stream::http] or #[execute::method], or build the client yourself",
            ),
            _ => {}
        }
    }
}
