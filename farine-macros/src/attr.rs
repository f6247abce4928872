//! Parsing of attribute arguments: `key = literal, ...`. Unknown, duplicate and ill-typed
//! arguments are rejected here, each spanned on the offending token.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::{Lit, LitStr};

/// The literal type an argument expects.
#[derive(Clone, Copy)]
pub enum Kind {
    Str,
    Int,
    Bool,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string literal, e.g. \"orders\"",
            Kind::Int => "an integer literal, e.g. 10",
            Kind::Bool => "`true` or `false`",
        }
    }

    fn accepts(self, lit: &Lit) -> bool {
        matches!(
            (self, lit),
            (Kind::Str, Lit::Str(_)) | (Kind::Int, Lit::Int(_)) | (Kind::Bool, Lit::Bool(_))
        )
    }
}

/// One attribute's arguments, checked against the attribute's schema.
pub struct Args {
    values: Vec<(syn::Ident, Lit)>,
}

impl Args {
    /// Parses `tokens` as the arguments of `#[<what>(...)]`, allowing only `schema`'s keys.
    pub fn parse(what: &str, schema: &[(&str, Kind)], tokens: TokenStream) -> syn::Result<Args> {
        let mut values: Vec<(syn::Ident, Lit)> = Vec::new();
        let parser = syn::meta::parser(|meta| {
            let ident = meta
                .path
                .get_ident()
                .cloned()
                .ok_or_else(|| meta.error(format!("expected an argument name of #[{what}]")))?;
            let key = ident.to_string();
            let Some((_, kind)) = schema.iter().find(|(name, _)| *name == key) else {
                let known: Vec<&str> = schema.iter().map(|(name, _)| *name).collect();
                let expected = if known.is_empty() {
                    "it takes no arguments".to_string()
                } else {
                    format!("expected one of: {}", known.join(", "))
                };
                return Err(syn::Error::new(
                    ident.span(),
                    format!("unknown argument `{key}` of #[{what}]; {expected}"),
                ));
            };
            if values.iter().any(|(seen, _)| *seen == ident) {
                return Err(syn::Error::new(
                    ident.span(),
                    format!("duplicate argument `{key}` of #[{what}]"),
                ));
            }
            let lit: Lit = meta.value()?.parse().map_err(|err| {
                syn::Error::new(err.span(), format!("`{key}` expects {}", kind.describe()))
            })?;
            if !kind.accepts(&lit) {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("`{key}` expects {}", kind.describe()),
                ));
            }
            values.push((ident, lit));
            Ok(())
        });
        parser.parse2(tokens)?;
        Ok(Args { values })
    }

    /// Parses the arguments of a method attribute, `#[path]` or `#[path(...)]`.
    pub fn of_attribute(
        what: &str,
        schema: &[(&str, Kind)],
        attr: &syn::Attribute,
    ) -> syn::Result<Args> {
        match &attr.meta {
            syn::Meta::Path(_) => Ok(Args { values: Vec::new() }),
            syn::Meta::List(list) => Args::parse(what, schema, list.tokens.clone()),
            syn::Meta::NameValue(nv) => Err(syn::Error::new_spanned(
                &nv.value,
                format!("write #[{what}(key = value, ...)]"),
            )),
        }
    }

    fn get(&self, key: &str) -> Option<&Lit> {
        self.values
            .iter()
            .find(|(ident, _)| ident == key)
            .map(|(_, lit)| lit)
    }

    pub fn str(&self, key: &str) -> Option<LitStr> {
        match self.get(key) {
            Some(Lit::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<syn::LitInt> {
        match self.get(key) {
            Some(Lit::Int(i)) => Some(i.clone()),
            _ => None,
        }
    }

    #[allow(dead_code)] // read by #[execute::method] expansion
    pub fn bool(&self, key: &str) -> Option<(bool, Span)> {
        match self.get(key) {
            Some(Lit::Bool(b)) => Some((b.value, b.span)),
            _ => None,
        }
    }
}

pub const SERVICE: &[(&str, Kind)] = &[("name", Kind::Str)];
pub const CONSUME: &[(&str, Kind)] = &[
    ("exchange", Kind::Str),
    ("routing_key", Kind::Str),
    ("exchange_type", Kind::Str),
    ("queue", Kind::Str),
    ("concurrency", Kind::Int),
];
pub const PUBLISH: &[(&str, Kind)] = &[("exchange", Kind::Str), ("routing_key", Kind::Str)];
pub const RPC: &[(&str, Kind)] = &[("concurrency", Kind::Int), ("broadcast", Kind::Str)];
pub const STREAM: &[(&str, Kind)] = &[("endpoint", Kind::Str)];
pub const EXECUTE: &[(&str, Kind)] = &[
    ("restart", Kind::Bool),
    ("restart_delay", Kind::Str),
    ("max_restarts", Kind::Int),
];
