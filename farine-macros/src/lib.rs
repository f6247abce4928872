//! The attribute macros of farine. Laid out like thiserror's impl crate: `ast` holds what was
//! parsed, `attr` parses attribute arguments, `valid` turns every misuse into a `syn::Error`
//! spanned on the offending token, and `expand` generates the code.
//!
//! `#[farine::service]` on an `impl` block does the work: a method attribute cannot emit items
//! outside its `impl`, so the service macro reads the method attributes inside it. The method
//! attributes also exist on their own so that using one outside a service is a clear error.

mod ast;
mod attr;
mod expand;
#[cfg(test)]
mod snapshot;
mod valid;

use proc_macro::TokenStream;

/// Declares a farine service on an `impl` block. See the `farine` crate for the full tour.
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::service(args.into(), input.into()).into()
}

macro_rules! method_attribute {
    ($fn:ident, $shown:literal) => {
        #[doc = concat!("`#[", $shown, "]`: valid only on a method inside a `#[farine::service]` impl block.")]
        #[proc_macro_attribute]
        pub fn $fn(_args: TokenStream, _input: TokenStream) -> TokenStream {
            // Reached only when the attribute is not inside #[farine::service], which strips it.
            syn::Error::new(
                proc_macro2::Span::call_site(),
                concat!(
                    "#[", $shown, "] must be on a method inside an `impl` block marked #[farine::service]"
                ),
            )
            .into_compile_error()
            .into()
        }
    };
}

method_attribute!(amqp_publish, "amqp::publish");
method_attribute!(amqp_consume, "amqp::consume");
method_attribute!(rpc_method, "rpc::method");
method_attribute!(stream_http, "stream::http");
method_attribute!(execute_method, "execute::method");
