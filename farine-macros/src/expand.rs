//! Code generation: the impl block as written (farine attributes removed, publishers
//! injected), plus one link-time registration of the service and its entry points.

use crate::ast::{injected, EntryKind, Injected, Method, Service};
use crate::valid;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ImplItemFn, ItemImpl};

/// On a misuse, the errors come with the impl block as written (farine attributes removed),
/// so the user sees only the real error, not follow-on ones about missing methods.
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(err) => {
            let err = err.into_compile_error();
            return quote!(#err #input);
        }
    };
    match expand(args, item.clone()) {
        Ok(tokens) => tokens,
        Err(err) => {
            let err = err.into_compile_error();
            // Only the real error: no follow-on warnings about what the error left unused, and
            // no follow-on errors where the service calls its own publishers (their callers
            // do not pass the `Publisher`, so it is still taken off). The destination is
            // never used: with the error, nothing runs.
            let (mut item, paths, publishing) = crate::ast::without_farine_attributes(item);
            for index in publishing {
                if let ImplItem::Fn(func) = &mut item.items[index] {
                    inject_publisher(func, "", "", "");
                }
            }
            quote! {
                #err
                #[allow(unused)]
                #item
                const _: () = { #(#[allow(unused_imports)] use #paths as _;)* };
            }
        }
    }
}

fn expand(args: TokenStream, item: ItemImpl) -> syn::Result<TokenStream> {
    let mut service = Service::parse(args, item)?;
    valid::check(&service)?;
    inject_publishers(&mut service);
    let registration = registration(&service);
    let client = client(&service);
    let item = &service.item;
    Ok(quote! {
        #item
        #registration
        #client
    })
}

fn opt_str(value: Option<String>) -> TokenStream {
    match value {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    }
}

/// `#[amqp::publish]` methods lose their `Publisher` parameter (callers never pass one) and
/// get it bound at the top of their body instead.
fn inject_publishers(service: &mut Service) {
    let name = service.name.clone();
    for method in &service.methods {
        let Some((_, args)) = method.publishes.first() else {
            continue;
        };
        let exchange = args.str("exchange").map_or(name.clone(), |l| l.value());
        let routing_key = args.str("routing_key").map_or(name.clone(), |l| l.value());
        if let ImplItem::Fn(func) = &mut service.item.items[method.index] {
            inject_publisher(func, &name, &exchange, &routing_key);
        }
    }
}

/// Takes every `Publisher` parameter off `func` and binds it at the top of its body.
fn inject_publisher(func: &mut ImplItemFn, service: &str, exchange: &str, routing_key: &str) {
    let mut bindings = Vec::new();
    func.sig.inputs = std::mem::take(&mut func.sig.inputs)
        .into_iter()
        .filter(|input| match input {
            FnArg::Typed(typed) if injected(&typed.ty) == Some(Injected::Publisher) => {
                let (pat, ty) = (&typed.pat, &typed.ty);
                bindings.push(quote! {
                    let #pat: #ty = ::farine::Publisher::__declared(#service, #exchange, #routing_key);
                });
                false
            }
            _ => true,
        })
        .collect();
    if !bindings.is_empty() {
        let block = &func.block;
        func.block = syn::parse_quote!({
            #(#bindings)*
            #block
        });
    }
}

fn registration(service: &Service) -> TokenStream {
    let name = &service.name;
    let ty = &service.item.self_ty;
    let entries = service.methods.iter().map(|m| entry_point(service, m));
    let build = format_ident!(
        "__farine_build_{}",
        service.ty_ident.to_string().to_lowercase()
    );
    // The farine attributes were removed from the impl; naming their paths here keeps the
    // user's `use farine::prelude::*` (which brings `amqp`, `rpc`, ...) counted as used.
    let paths = service.methods.iter().flat_map(|m| {
        m.entries
            .iter()
            .map(|e| e.attr.path())
            .chain(m.publishes.iter().map(|(attr, _)| attr.path()))
    });
    quote! {
        const _: () = {
            #(#[allow(unused_imports)] use #paths as _;)*
            fn #build() -> ::farine::__private::ServiceDef {
                let svc: ::std::sync::Arc<#ty> =
                    ::std::sync::Arc::new(<#ty as ::core::default::Default>::default());
                let mut def = ::farine::__private::ServiceDef::new(#name);
                #(#entries)*
                let _ = svc;
                def
            }
            ::farine::__private::inventory::submit! {
                ::farine::__private::ServiceRegistration { name: #name, build: #build }
            }
        };
    }
}

/// How the user's method is called: its arguments in declaration order, the statements that
/// inject the runtime-supplied ones (inside an async block, with `__ctx` in scope), and the
/// transaction and broadcast variables the entry point settles afterwards.
struct Invocation {
    arguments: Vec<TokenStream>,
    injections: TokenStream,
    tx: Option<syn::Ident>,
    broadcast: Option<syn::Ident>,
}

/// `on_error` turns a `farine::Error` (no database, no client) into the block's early return.
fn invocation(method: &Method, on_error: &TokenStream) -> Invocation {
    let mut call = Invocation {
        arguments: Vec::new(),
        injections: TokenStream::new(),
        tx: None,
        broadcast: None,
    };
    let mut message_index = 0usize;
    for (position, param) in method.params.iter().enumerate() {
        let name = format_ident!("__farine_injected_{}", position);
        let ty = &param.ty;
        match param.injected {
            Some(Injected::Publisher) => {}
            Some(Injected::Client) => {
                call.injections.extend(quote! {
                    let #name: #ty = match ::farine::__private::inject_client::<#ty>(&__ctx).await {
                        ::core::result::Result::Ok(client) => client,
                        ::core::result::Result::Err(err) => return #on_error,
                    };
                });
                call.arguments.push(quote!(#name));
            }
            Some(Injected::Db) | Some(Injected::DbRef) => {
                call.injections.extend(quote! {
                    #[allow(unused_mut)]
                    let mut #name = match ::farine::__private::acquire_db(&__ctx).await {
                        ::core::result::Result::Ok(db) => db,
                        ::core::result::Result::Err(err) => return #on_error,
                    };
                });
                call.arguments
                    .push(if param.injected == Some(Injected::Db) {
                        quote!(#name)
                    } else {
                        quote!(&mut #name)
                    });
            }
            Some(Injected::Tx) | Some(Injected::TxByValue) => {
                call.injections.extend(quote! {
                    let mut #name = match ::farine::__private::begin_tx(&__ctx).await {
                        ::core::result::Result::Ok(tx) => tx,
                        ::core::result::Result::Err(err) => return #on_error,
                    };
                });
                call.arguments.push(quote!(&mut #name));
                call.tx = Some(name);
            }
            Some(Injected::Broadcast) => {
                call.injections.extend(quote! {
                    let #name = ::farine::rpc::Broadcast::default();
                });
                call.arguments
                    .push(quote!(::core::clone::Clone::clone(&#name)));
                call.broadcast = Some(name);
            }
            Some(Injected::Shutdown) => {
                call.arguments
                    .push(quote!(::core::clone::Clone::clone(&__shutdown)));
            }
            None => {
                let name = format_ident!("__farine_arg_{}", message_index);
                message_index += 1;
                call.arguments.push(quote!(#name));
            }
        }
    }
    call
}

fn entry_point(service: &Service, method: &Method) -> TokenStream {
    let ident = &method.sig.ident;
    let method_name = ident.to_string();
    let span = ident.span();
    let mut out = TokenStream::new();
    for (_, args) in method.publishes.iter().take(1) {
        let exchange = args
            .str("exchange")
            .map_or(service.name.clone(), |l| l.value());
        let routing_key = args
            .str("routing_key")
            .map_or(service.name.clone(), |l| l.value());
        out.extend(quote! {
            def.publish(::farine::__private::PublishSpec {
                method: #method_name,
                exchange: #exchange,
                routing_key: #routing_key,
            });
        });
    }
    let Some(entry) = method.entry() else {
        return out;
    };
    if method.params.iter().any(|p| {
        matches!(
            p.injected,
            Some(Injected::Db | Injected::DbRef | Injected::Tx | Injected::TxByValue)
        )
    }) {
        out.extend(quote!(def.uses_db(#method_name);));
    }
    let args = &entry.args;
    let concurrency = match args.int("concurrency") {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    let awaited = if method.sig.asyncness.is_some() {
        quote!(.await)
    } else {
        quote!()
    };
    match entry.kind {
        EntryKind::Consume => {
            let exchange = args
                .str("exchange")
                .map_or(service.name.clone(), |l| l.value());
            let routing_key = args
                .str("routing_key")
                .map_or(service.name.clone(), |l| l.value());
            let exchange_type = opt_str(args.str("exchange_type").map(|l| l.value()));
            let queue = opt_str(args.str("queue").map(|l| l.value()));
            let body_ty = method
                .message_params()
                .next()
                .map(|p| p.ty.clone())
                .expect("validated: one body parameter");
            // The body type is checked once, on the user's token, in plain words; the
            // handler is then picked by autoref so that it adds no error of its own.
            let check = quote_spanned! {body_ty.span()=>
                const _: fn() = <#body_ty as ::farine::__private::MessageBody>::check;
            };
            let handler = outcome_handler(
                service,
                method,
                quote_spanned!(span=> (&&::farine::__private::ConsumeBody::<#body_ty>::new()).handler),
                quote!(__farine_arg_0: #body_ty),
            );
            let handler = quote! {{
                #check
                #[allow(unused_imports, clippy::needless_borrow)]
                use ::farine::__private::{ViaMessageBody as _, ViaUndecodable as _};
                #handler
            }};
            out.extend(quote! {
                def.consume(
                    ::farine::__private::ConsumeSpec {
                        method: #method_name,
                        exchange: #exchange,
                        routing_key: #routing_key,
                        exchange_type: #exchange_type,
                        queue: #queue,
                        concurrency: #concurrency,
                    },
                    #handler,
                );
            });
        }
        EntryKind::Rpc => {
            let broadcast = opt_str(args.str("broadcast").map(|l| l.value()));
            let streaming = valid::returns_stream(&method.sig.output);
            let message: Vec<_> = method.message_params().collect();
            let count = message.len();
            let bindings = message.iter().enumerate().map(|(index, param)| {
                let name = format_ident!("__farine_arg_{}", index);
                let ty = &param.ty;
                let param_name = match &*param.pat {
                    syn::Pat::Ident(pat) => pat.ident.to_string(),
                    _ => format!("arg{index}"),
                };
                quote! {
                    let #name: #ty = match __args.take(#index, #param_name) {
                        ::core::result::Result::Ok(value) => value,
                        ::core::result::Result::Err(info) => return ::farine::__private::Call::Rejected(info),
                    };
                }
            });
            let frame_of = quote! {{
                #[allow(unused_imports, clippy::needless_borrow)]
                use ::farine::__private::{ViaDisplayError as _, ViaSerializableError as _, ViaSerializeOnlyError as _, ViaValue as _};
                (&&&&::farine::__private::Returned(__out)).frame()
            }};
            let body = if streaming {
                let on_error = quote!(::farine::__private::error_stream(err));
                let Invocation {
                    arguments,
                    injections,
                    ..
                } = invocation(method, &on_error);
                quote_spanned! {span=>
                    ::farine::__private::streaming(async move {
                        #injections
                        let __stream = svc.#ident(#(#arguments),*)#awaited;
                        ::farine::__private::frames(__stream, |__out| #frame_of)
                    })
                }
            } else {
                let on_error = quote!(::farine::__private::error_frame(err));
                let Invocation {
                    arguments,
                    injections,
                    tx,
                    broadcast,
                } = invocation(method, &on_error);
                let settle = match &tx {
                    Some(tx) => quote!(::farine::__private::settle_tx_frame(#tx, __frame).await),
                    None => quote!(__frame),
                };
                let events = match &broadcast {
                    Some(events) => quote!(::core::option::Option::Some(&#events)),
                    None => quote!(::core::option::Option::None),
                };
                quote_spanned! {span=>
                    ::farine::__private::unary(async move {
                        #injections
                        let __out = svc.#ident(#(#arguments),*)#awaited;
                        let __frame = #frame_of;
                        let __frame = #settle;
                        ::farine::__private::reply(__frame, #events)
                    })
                }
            };
            out.extend(quote! {
                def.rpc(
                    ::farine::__private::RpcSpec {
                        method: #method_name,
                        concurrency: #concurrency,
                        broadcast: #broadcast,
                    },
                    {
                        let svc = ::std::sync::Arc::clone(&svc);
                        ::std::sync::Arc::new(
                            move |__ctx: ::std::sync::Arc<::farine::context::ServiceContext>,
                                  mut __args: ::farine::__private::Args|
                                  -> ::farine::__private::Call {
                                #(#bindings)*
                                if let ::core::result::Result::Err(info) = __args.finish(#count) {
                                    return ::farine::__private::Call::Rejected(info);
                                }
                                let svc = ::std::sync::Arc::clone(&svc);
                                #body
                            },
                        )
                    },
                );
            });
        }
        EntryKind::Stream => {
            let endpoint = opt_str(args.str("endpoint").map(|l| l.value()));
            let event_ty = method
                .message_params()
                .next()
                .map(|p| p.ty.clone())
                .expect("validated: one event parameter");
            let handler = outcome_handler(
                service,
                method,
                quote_spanned!(span=> ::farine::__private::event_handler),
                quote!(__farine_arg_0: #event_ty),
            );
            out.extend(quote! {
                def.listen(
                    ::farine::__private::ListenAttr { method: #method_name, endpoint: #endpoint },
                    #handler,
                );
            });
        }
        EntryKind::Execute => {
            let restart = match args.bool("restart") {
                Some((value, _)) => quote!(::core::option::Option::Some(#value)),
                None => quote!(::core::option::Option::None),
            };
            let restart_delay = match args
                .str("restart_delay")
                .and_then(|l| valid::parse_duration_ms(&l.value()))
            {
                Some(ms) => quote!(::core::option::Option::Some(#ms)),
                None => quote!(::core::option::Option::None),
            };
            let max_restarts = match args.int("max_restarts") {
                Some(lit) => quote!(::core::option::Option::Some(#lit)),
                None => quote!(::core::option::Option::None),
            };
            let handler = outcome_handler(
                service,
                method,
                quote_spanned!(span=> ::farine::__private::execute_handler),
                quote!(__shutdown: ::farine::execute::Shutdown),
            );
            out.extend(quote! {
                def.execute(
                    ::farine::__private::ExecuteAttr {
                        method: #method_name,
                        restart: #restart,
                        restart_delay_ms: #restart_delay,
                        max_restarts: #max_restarts,
                    },
                    #handler,
                );
            });
        }
    }
    out
}

/// The handler of an entry point whose method's result becomes an `Outcome` (consumers,
/// listeners, loops): `builder(service, |svc, __ctx, <input>| ...)`, with the runtime's
/// parameters injected and the transaction settled before the outcome is returned. Spanned
/// on the method (and so must `builder` be) so that a non-Send future is reported there.
fn outcome_handler(
    service: &Service,
    method: &Method,
    builder: TokenStream,
    input: TokenStream,
) -> TokenStream {
    let ty = &service.item.self_ty;
    let ident = &method.sig.ident;
    let on_error = quote!(::farine::__private::Outcome::Failed(err.to_string()));
    let Invocation {
        arguments,
        injections,
        tx,
        ..
    } = invocation(method, &on_error);
    let settle = match &tx {
        Some(tx) => quote!(::farine::__private::settle_tx_outcome(#tx, __outcome).await),
        None => quote!(__outcome),
    };
    quote_spanned! {ident.span()=>
        #builder(
            ::std::sync::Arc::clone(&svc),
            |svc: ::std::sync::Arc<#ty>, __ctx: ::std::sync::Arc<::farine::context::ServiceContext>, #input| async move {
                #injections
                let __outcome = ::farine::__private::HandlerResult::into_outcome(svc.#ident(#(#arguments),*).await);
                #settle
            },
        )
    }
}

/// What a caller decodes a returned borrowed type into: `&str` -> `String`, `&[T]` ->
/// `Vec<T>`, `&T` -> `T`.
fn owned(ty: syn::Type) -> syn::Type {
    match ty {
        syn::Type::Reference(reference) => match *reference.elem {
            syn::Type::Path(path) if path.path.is_ident("str") => {
                syn::parse_quote!(::std::string::String)
            }
            syn::Type::Slice(slice) => {
                let elem = owned(*slice.elem);
                syn::parse_quote!(::std::vec::Vec<#elem>)
            }
            other => owned(other),
        },
        other => other,
    }
}

/// The value type a caller receives: `T` of `Result<T, E>` (any path ending in `Result`),
/// else the type itself, made owned.
fn ok_type(ty: &syn::Type) -> syn::Type {
    owned(ok_type_inner(ty))
}

fn ok_type_inner(ty: &syn::Type) -> syn::Type {
    if let syn::Type::Path(path) = ty {
        if let Some(last) = path.path.segments.last() {
            if last.ident == "Result" {
                if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
                    if let Some(syn::GenericArgument::Type(ok)) = args.args.first() {
                        return ok.clone();
                    }
                }
            }
        }
    }
    ty.clone()
}

/// The item type of `impl Stream<Item = X>` or `BoxStream<'_, X>`.
fn stream_item(output: &syn::ReturnType) -> Option<syn::Type> {
    let syn::ReturnType::Type(_, ty) = output else {
        return None;
    };
    match &**ty {
        syn::Type::ImplTrait(imp) => imp.bounds.iter().find_map(|bound| {
            let syn::TypeParamBound::Trait(t) = bound else {
                return None;
            };
            let last = t.path.segments.last()?;
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            args.args.iter().find_map(|arg| match arg {
                syn::GenericArgument::AssocType(assoc) if assoc.ident == "Item" => {
                    Some(assoc.ty.clone())
                }
                _ => None,
            })
        }),
        syn::Type::Path(path) => {
            let last = path.path.segments.last()?;
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            args.args.iter().find_map(|arg| match arg {
                syn::GenericArgument::Type(ty) => Some(ty.clone()),
                _ => None,
            })
        }
        _ => None,
    }
}

/// `<Type>Client`: a typed client with one method per `#[rpc::method]`.
pub fn client(service: &Service) -> TokenStream {
    let rpcs: Vec<&Method> = service
        .methods
        .iter()
        .filter(|m| m.entry().is_some_and(|e| e.kind == EntryKind::Rpc))
        .collect();
    if rpcs.is_empty() {
        return TokenStream::new();
    }
    let name = &service.name;
    let client = format_ident!("{}Client", service.ty_ident);
    let doc = format!("A typed client of service `{name}`: one method per `#[rpc::method]`.");
    let methods = rpcs.iter().map(|method| {
        let ident = &method.sig.ident;
        let method_name = ident.to_string();
        let call = format!("{name}.{method_name}");
        let params: Vec<_> = method.message_params().collect();
        let names: Vec<syn::Ident> = params
            .iter()
            .enumerate()
            .map(|(i, p)| match &*p.pat {
                syn::Pat::Ident(pat) => pat.ident.clone(),
                _ => format_ident!("arg{}", i),
            })
            .collect();
        let types = params.iter().map(|p| &p.ty);
        let name_strings = names.iter().map(|n| n.to_string());
        let method_doc = format!("Calls `{call}`.");
        let encode = quote! {
            let __args = ::std::vec![#(::farine::rpc::encode_arg(#call, #name_strings, &#names)?),*];
        };
        // What the caller decodes must be `Deserialize`: checked once, on the user's return
        // type, in plain words. The method states it as a where clause, which the compiler
        // does not check at the definition (it is higher-ranked) but lets the body rely on, so
        // that the client adds no errors of its own about `DeserializeOwned`.
        let returned = match &method.sig.output {
            syn::ReturnType::Default => ident.span(),
            syn::ReturnType::Type(_, ty) => ty.span(),
        };
        let decodes = |decoded: &syn::Type| {
            let check = quote_spanned! {returned=>
                const _: fn() = <#decoded as ::farine::__private::RpcReturn>::check;
            };
            let bound = quote!(for<'de> #decoded: ::farine::serde::Deserialize<'de>);
            (check, bound)
        };
        if valid::returns_stream(&method.sig.output) {
            let item = stream_item(&method.sig.output)
                .map(|t| ok_type(&t))
                .unwrap_or_else(|| syn::parse_quote!(::farine::serde_json::Value));
            let (check, bound) = decodes(&item);
            let method = quote! {
                #[doc = #method_doc]
                pub async fn #ident(&self, #(#names: #types),*) -> ::farine::Result<::farine::rpc::RpcStream<#item>>
                where
                    #bound
                {
                    #encode
                    self.client.call_stream_typed::<#item>(#name, #method_name, __args, self.options).await
                }
            };
            (check, method)
        } else {
            let output = match &method.sig.output {
                syn::ReturnType::Default => syn::parse_quote!(()),
                syn::ReturnType::Type(_, ty) => ok_type(ty),
            };
            let (check, bound) = decodes(&output);
            let method = quote! {
                #[doc = #method_doc]
                pub async fn #ident(&self, #(#names: #types),*) -> ::farine::Result<#output>
                where
                    #bound
                {
                    #encode
                    self.client.call_typed::<#output>(#name, #method_name, __args, self.options).await
                }
            };
            (check, method)
        }
    });
    let (checks, methods): (Vec<_>, Vec<_>) = methods.unzip();
    quote! {
        #(#checks)*

        #[doc = #doc]
        #[derive(Clone)]
        pub struct #client {
            client: ::farine::Client,
            options: ::farine::rpc::CallOptions,
        }

        #[allow(dead_code, private_interfaces, clippy::too_many_arguments)]
        impl #client {
            /// The service this client calls.
            pub const SERVICE: &'static str = #name;

            /// Connects with the `[DEFAULT]` settings of `config`.
            pub async fn connect(config: &::farine::Config) -> ::farine::Result<Self> {
                ::core::result::Result::Ok(Self::new(::farine::Client::connect(config).await?))
            }

            /// Wraps an existing client (sharing its connection and reply queue).
            pub fn new(client: ::farine::Client) -> Self {
                Self { client, options: ::core::default::Default::default() }
            }

            /// The same client with another deadline for each call (default: `rpc_timeout`).
            pub fn timeout(mut self, timeout: ::std::time::Duration) -> Self {
                self.options.timeout = ::core::option::Option::Some(timeout);
                self
            }

            /// The same client with another longest wait between two stream items.
            pub fn idle_timeout(mut self, timeout: ::std::time::Duration) -> Self {
                self.options.idle_timeout = ::core::option::Option::Some(timeout);
                self
            }

            #(#methods)*
        }

        impl ::farine::rpc::FromClient for #client {
            fn from_client(client: ::farine::Client) -> Self {
                Self::new(client)
            }
        }
    }
}
