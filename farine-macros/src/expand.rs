//! Code generation: the impl block as written (farine attributes removed, publishers
//! injected), plus one link-time registration of the service and its entry points.

use crate::ast::{EntryKind, Injected, Method, Service};
use crate::valid;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{FnArg, ImplItem, ItemImpl};

pub fn service(args: TokenStream, input: TokenStream) -> syn::Result<TokenStream> {
    let item: ItemImpl = syn::parse2(input)?;
    let mut service = Service::parse(args, item)?;
    valid::check(&service)?;
    inject_publishers(&mut service);
    let registration = registration(&service);
    let item = &service.item;
    Ok(quote! {
        #item
        #registration
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
        let ImplItem::Fn(func) = &mut service.item.items[method.index] else {
            continue;
        };
        let mut binding = None;
        let mut binding_ty = None;
        func.sig.inputs = std::mem::take(&mut func.sig.inputs)
            .into_iter()
            .filter(|input| match input {
                FnArg::Typed(typed)
                    if method
                        .params
                        .iter()
                        .any(|p| p.injected == Some(Injected::Publisher) && p.pat == typed.pat) =>
                {
                    binding = Some(typed.pat.clone());
                    binding_ty = Some(typed.ty.clone());
                    false
                }
                _ => true,
            })
            .collect();
        if let (Some(pat), Some(ty)) = (binding, binding_ty) {
            let block = &func.block;
            func.block = syn::parse_quote!({
                let #pat: #ty = ::farine::Publisher::__declared(#name, #exchange, #routing_key);
                #block
            });
        }
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

fn entry_point(service: &Service, method: &Method) -> TokenStream {
    let ty = &service.item.self_ty;
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
    let args = &entry.args;
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
            let concurrency = match args.int("concurrency") {
                Some(lit) => quote!(::core::option::Option::Some(#lit)),
                None => quote!(::core::option::Option::None),
            };
            let body_ty = method
                .message_params()
                .next()
                .map(|p| p.ty.clone())
                .expect("validated: one body parameter");
            // Spanned on the method so that a non-Send future is reported there.
            let handler = quote_spanned! {span=>
                ::farine::__private::consume_handler(
                    ::std::sync::Arc::clone(&svc),
                    |svc: ::std::sync::Arc<#ty>, body: #body_ty| async move { svc.#ident(body).await },
                )
            };
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
        EntryKind::Rpc | EntryKind::Stream | EntryKind::Execute => {
            let kind = entry.kind.shown();
            out.extend(quote! {
                def.pending(#kind, #method_name);
            });
        }
    }
    out
}
