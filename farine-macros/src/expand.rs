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
                    inject_publisher(func, "", None, None);
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

/// An argument as written, for the runtime to resolve: `Some("...")` or `None`.
fn opt_str(value: Option<syn::LitStr>) -> TokenStream {
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
        let (exchange, routing_key) = (args.str("exchange"), args.str("routing_key"));
        if let ImplItem::Fn(func) = &mut service.item.items[method.index] {
            inject_publisher(func, &name, exchange, routing_key);
        }
    }
}

/// Takes every `Publisher` parameter off `func` and binds it at the top of its body.
fn inject_publisher(
    func: &mut ImplItemFn,
    service: &str,
    exchange: Option<syn::LitStr>,
    routing_key: Option<syn::LitStr>,
) {
    let (exchange, routing_key) = (opt_str(exchange), opt_str(routing_key));
    let mut bindings = Vec::new();
    func.sig.inputs = std::mem::take(&mut func.sig.inputs)
        .into_iter()
        .filter(|input| match input {
            FnArg::Typed(typed) if injected(&typed.ty) == Some(Injected::Publisher) => {
                let (pat, ty) = (&typed.pat, &typed.ty);
                bindings.push(quote! {
                    let #pat: #ty = ::farine::__private::publisher(#service, #exchange, #routing_key);
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
    let entries = service.methods.iter().map(|m| {
        let entry = entry_point(service, m);
        let cfgs = m.cfgs();
        // A method compiled out takes its entry point with it.
        quote!(#(#cfgs)* { #entry })
    });
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
                ::farine::__private::ServiceRegistration {
                    name: #name,
                    module: ::core::module_path!(),
                    build: #build,
                }
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
                    let #name = ::farine::__private::Broadcast::default();
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
        let exchange = opt_str(args.str("exchange"));
        let routing_key = opt_str(args.str("routing_key"));
        out.extend(quote! {
            def.publish(::farine::__private::PublishAttr {
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
            let exchange = opt_str(args.str("exchange"));
            let routing_key = opt_str(args.str("routing_key"));
            let exchange_type = opt_str(args.str("exchange_type"));
            let queue = opt_str(args.str("queue"));
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
                    ::farine::__private::ConsumeAttr {
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
            out.extend(schemas(method, None));
        }
        EntryKind::Rpc => {
            let broadcast = opt_str(args.str("broadcast"));
            let streaming = valid::returns_stream(&method.sig.output);
            let schemas = schemas(method, Some(result_type(method, streaming)));
            let message: Vec<_> = method.message_params().collect();
            let count = message.len();
            let bindings = message.iter().enumerate().map(|(index, param)| {
                let name = format_ident!("__farine_arg_{}", index);
                let ty = &param.ty;
                let param_name = param_name(param, index);
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
                    ::farine::__private::RpcAttr {
                        method: #method_name,
                        concurrency: #concurrency,
                        broadcast: #broadcast,
                    },
                    {
                        let svc = ::std::sync::Arc::clone(&svc);
                        ::std::sync::Arc::new(
                            move |__ctx: ::std::sync::Arc<::farine::__private::ServiceContext>,
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
            out.extend(schemas);
        }
        EntryKind::Stream => {
            let endpoint = opt_str(args.str("endpoint"));
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
                quote!(__shutdown: ::farine::__private::Shutdown),
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

/// `def.schemas(...)`: the schema of each message parameter, by the name a caller gives it, and
/// of the result (`returns`: what a caller decodes), each picked by autoref so that a type
/// without a schema compiles (see `farine::__private::SchemaOf`).
fn schemas(method: &Method, returns: Option<TokenStream>) -> TokenStream {
    let method_name = method.sig.ident.to_string();
    let schema_of =
        |ty: &dyn quote::ToTokens| quote!((&&::farine::__private::SchemaOf::<#ty>::new()).schema());
    let params = method.message_params().enumerate().map(|(index, param)| {
        let name = param_name(param, index);
        let schema = schema_of(&param.ty);
        quote!((#name, #schema))
    });
    let returns = match returns {
        Some(ty) => {
            let schema = schema_of(&ty);
            quote!(::core::option::Option::Some(#schema))
        }
        None => quote!(::core::option::Option::None),
    };
    quote! {{
        #[allow(unused_imports)]
        use ::farine::__private::{ViaJsonSchema as _, ViaNoSchema as _};
        def.schemas(#method_name, ::std::vec![#(#params),*], #returns);
    }}
}

/// The name a caller gives a message parameter (in `kwargs`, and in errors).
fn param_name(param: &crate::ast::Param, index: usize) -> String {
    match &*param.pat {
        syn::Pat::Ident(pat) => pat.ident.to_string(),
        _ => format!("arg{index}"),
    }
}

/// What a caller of an RPC method decodes: its result, or the item of its stream (as the
/// typed client does).
fn result_type(method: &Method, streaming: bool) -> TokenStream {
    if streaming {
        match stream_item(&method.sig.output) {
            Some(item) => client_type(&item).0,
            None => quote!(::farine::__private::Value),
        }
    } else {
        match &method.sig.output {
            syn::ReturnType::Default => quote!(()),
            syn::ReturnType::Type(_, ty) => client_type(ty).0,
        }
    }
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
            |svc: ::std::sync::Arc<#ty>, __ctx: ::std::sync::Arc<::farine::__private::ServiceContext>, #input| async move {
                #injections
                let __outcome = ::farine::__private::HandlerResult::into_outcome(svc.#ident(#(#arguments),*).await);
                #settle
            },
        )
    }
}

/// What a caller receives for a declared type `ty`: `<ty as RpcOutput<Shape>>::Ok`, the
/// shape read from the tokens (see `farine::__private::RpcOutput`, which says why), and, for
/// a type taken as plain, the assertion that it is no `Result` (which the trait could not
/// tell at run time). Both spanned on the user's type; the span returned is that of the
/// type a caller decodes, where an error about it belongs (`T` of `farine::Result<T>`).
fn client_type(ty: &syn::Type) -> (TokenStream, TokenStream, proc_macro2::Span) {
    let span = ty.span();
    let projection = |shape: &str, blame: proc_macro2::Span| {
        let shape = format_ident!("{}", shape);
        quote_spanned!(blame=> <#ty as ::farine::__private::RpcOutput<::farine::__private::#shape>>::Ok)
    };
    match ty {
        syn::Type::Paren(inner) => client_type(&inner.elem),
        syn::Type::Group(inner) => client_type(&inner.elem),
        syn::Type::Reference(_) => (projection("Borrowed", span), TokenStream::new(), span),
        syn::Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return (quote!(#ty), TokenStream::new(), span);
            };
            if last.ident.to_string().ends_with("Result") {
                let ok = match &last.arguments {
                    syn::PathArguments::AngleBracketed(args) => match args.args.first() {
                        Some(syn::GenericArgument::Type(ok)) => Some(ok),
                        _ => None,
                    },
                    _ => None,
                };
                let borrowed = matches!(ok, Some(syn::Type::Reference(_)));
                let shape = if borrowed {
                    "FallibleBorrowed"
                } else {
                    "Fallible"
                };
                let blame = ok.map_or(span, |ok| ok.span());
                (projection(shape, blame), TokenStream::new(), blame)
            } else {
                let check = quote_spanned! {span=>
                    const _: fn() = <#ty as ::farine::__private::NotAResult<_>>::check;
                };
                (quote!(#ty), check, span)
            }
        }
        // A tuple, an array, `!`, ...: never a `Result`.
        other => (quote!(#other), TokenStream::new(), span),
    }
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

/// `<Type>Client`: a typed client with one method per `#[rpc::method]`, each with the docs
/// and the `#[cfg]`s of the method it calls.
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
        let docs: Vec<_> = method.docs().collect();
        let cfgs: Vec<_> = method.cfgs().collect();
        // The user's docs first; the line saying what is called after a blank line.
        let method_doc = format!(" Calls `{call}` over AMQP.");
        let separator = if docs.is_empty() {
            quote!()
        } else {
            quote!(#[doc = ""])
        };
        let encode = quote! {
            let __args = ::std::vec![#(::farine::__private::encode_arg(#call, #name_strings, &#names)?),*];
        };
        // What the caller decodes must be `Deserialize`: checked once, on the user's return
        // type, in plain words. The method states it as a where clause, which the compiler
        // does not check at the definition (it is higher-ranked) but lets the body rely on, so
        // that the client adds no errors of its own about `DeserializeOwned`.
        let decodes = |decoded: &TokenStream, shape_check: TokenStream, returned: proc_macro2::Span| {
            let check = quote_spanned! {returned=>
                #(#cfgs)*
                const _: () = {
                    #shape_check
                    const _: fn() = <#decoded as ::farine::__private::RpcReturn>::check;
                };
            };
            let bound = quote!(for<'de> #decoded: ::farine::__private::Deserialize<'de>);
            (check, bound)
        };
        if valid::returns_stream(&method.sig.output) {
            let (item, shape_check, blame) = match stream_item(&method.sig.output) {
                Some(item) => client_type(&item),
                None => (
                    quote!(::farine::__private::Value),
                    TokenStream::new(),
                    ident.span(),
                ),
            };
            let (check, bound) = decodes(&item, shape_check, blame);
            let method = quote! {
                #(#docs)*
                #separator
                #[doc = #method_doc]
                #(#cfgs)*
                pub async fn #ident(&self, #(#names: #types),*) -> ::farine::__private::Result<::farine::__private::RpcStream<#item>>
                where
                    #bound
                {
                    #encode
                    ::farine::__private::call_stream::<#item>(&self.client, #name, #method_name, __args, self.options).await
                }
            };
            (check, method)
        } else {
            let (output, shape_check, blame) = match &method.sig.output {
                syn::ReturnType::Default => (quote!(()), TokenStream::new(), ident.span()),
                syn::ReturnType::Type(_, ty) => client_type(ty),
            };
            let (check, bound) = decodes(&output, shape_check, blame);
            let method = quote! {
                #(#docs)*
                #separator
                #[doc = #method_doc]
                #(#cfgs)*
                pub async fn #ident(&self, #(#names: #types),*) -> ::farine::__private::Result<#output>
                where
                    #bound
                {
                    #encode
                    ::farine::__private::call::<#output>(&self.client, #name, #method_name, __args, self.options).await
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
            client: ::farine::__private::Client,
            options: ::farine::__private::CallOptions,
        }

        #[allow(dead_code, private_interfaces, clippy::too_many_arguments)]
        impl #client {
            /// The service this client calls.
            pub const SERVICE: &'static str = #name;

            /// Connects with the `[DEFAULT]` settings of `config`.
            pub async fn connect(config: &::farine::__private::Config) -> ::farine::__private::Result<Self> {
                ::core::result::Result::Ok(Self::new(::farine::__private::Client::connect(config).await?))
            }

            /// Wraps an existing client (sharing its connection and reply queue).
            pub fn new(client: ::farine::__private::Client) -> Self {
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

        impl ::farine::__private::FromClient for #client {
            fn from_client(client: ::farine::__private::Client) -> Self {
                Self::new(client)
            }
        }
    }
}
