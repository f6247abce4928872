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
            Kind::Str => "a string literal",
            Kind::Int => "an integer literal",
            Kind::Bool => "`true` or `false`",
        }
    }

    fn accepts(self, lit: &Lit) -> bool {
        match (self, lit) {
            (Kind::Str, Lit::Str(_)) | (Kind::Bool, Lit::Bool(_)) => true,
            // A suffix (`10u8`) would change the literal's type in the generated code.
            (Kind::Int, Lit::Int(int)) => int.suffix().is_empty(),
            _ => false,
        }
    }
}

/// A typical value of `key`, as written in an attribute, for "write ..." hints.
fn example(key: &str, kind: Kind) -> &'static str {
    match key {
        "name" => "\"shop\"",
        "exchange" => "\"orders\"",
        "routing_key" => "\"created\"",
        "exchange_type" => "\"topic\"",
        "queue" => "\"shop.orders\"",
        "endpoint" => "\"https://example.com/events\"",
        "restart_delay" => "\"5s\"",
        "concurrency" => "10",
        "max_restarts" => "3",
        _ => match kind {
            Kind::Str => "\"...\"",
            Kind::Int => "1",
            Kind::Bool => "true",
        },
    }
}

/// What to write instead of `lit` for `key`: the same value with the right literal type
/// when there is one (`routing_key = 5` -> `routing_key = "5"`), else a typical value.
fn correction(key: &str, kind: Kind, lit: &Lit) -> String {
    let same = match (kind, lit) {
        (Kind::Str, Lit::Int(int)) => Some(format!("{:?}", int.base10_digits())),
        (Kind::Str, Lit::Float(float)) => Some(format!("{:?}", float.base10_digits())),
        (Kind::Str, Lit::Bool(b)) => Some(format!("\"{}\"", b.value)),
        (Kind::Int, Lit::Int(int)) => Some(int.base10_digits().to_string()),
        (Kind::Int, Lit::Str(s)) => s.value().trim().parse::<u64>().ok().map(|n| n.to_string()),
        (Kind::Bool, Lit::Str(s)) => match s.value().trim() {
            "true" => Some("true".to_string()),
            "false" => Some("false".to_string()),
            _ => None,
        },
        _ => None,
    };
    format!(
        "{key} = {}",
        same.unwrap_or_else(|| example(key, kind).to_string())
    )
}

/// The schema key closest to a misspelled `key`, if one is close enough to be a typo.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 1.max(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edits (insert, delete, substitute, swap two neighbours) turning `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// One attribute's arguments, checked against the attribute's schema.
pub struct Args {
    values: Vec<(syn::Ident, Lit)>,
}

impl Args {
    /// Parses `tokens` as the arguments of `#[<what>(...)]`, allowing only `schema`'s keys.
    pub fn parse(what: &str, schema: &[(&str, Kind)], tokens: TokenStream) -> syn::Result<Args> {
        let known: Vec<&str> = schema.iter().map(|(name, _)| *name).collect();
        let takes = if known.is_empty() {
            format!("#[{what}] takes no arguments")
        } else {
            format!("#[{what}] takes: {}", known.join(", "))
        };
        // `#[amqp::consume("orders")]`: syn's own message ("expected ident") says nothing useful.
        if let Some(proc_macro2::TokenTree::Literal(first)) = tokens.clone().into_iter().next() {
            let hint = match schema.first() {
                Some((key, kind)) => format!(
                    "name each argument: write #[{what}({key} = {}, ...)]; {takes}",
                    example(key, *kind)
                ),
                None => takes.clone(),
            };
            return Err(syn::Error::new(first.span(), hint));
        }
        let mut values: Vec<(syn::Ident, Lit)> = Vec::new();
        let parser = syn::meta::parser(|meta| {
            let Some(ident) = meta.path.get_ident().cloned() else {
                return Err(syn::Error::new_spanned(
                    &meta.path,
                    format!(
                        "expected an argument name such as `{}`; {takes}",
                        known.first().unwrap_or(&"name")
                    ),
                ));
            };
            let key = ident.to_string();
            let Some((_, kind)) = schema.iter().find(|(name, _)| *name == key) else {
                let message = match closest(&key, &known) {
                    Some(guess) => format!(
                        "unknown argument `{key}` of #[{what}]: did you mean `{guess}`? {takes}"
                    ),
                    None => format!("unknown argument `{key}` of #[{what}]; {takes}"),
                };
                return Err(syn::Error::new(ident.span(), message));
            };
            if values.iter().any(|(seen, _)| *seen == ident) {
                return Err(syn::Error::new(
                    ident.span(),
                    format!("`{key}` is given twice in #[{what}]: keep one"),
                ));
            }
            if !meta.input.peek(syn::Token![=]) {
                return Err(syn::Error::new(
                    ident.span(),
                    format!(
                        "`{key}` needs a value: write `{key} = {}`",
                        example(&key, *kind)
                    ),
                ));
            }
            let value = meta.value()?;
            let lit: Lit = match value.parse() {
                Ok(lit) => lit,
                Err(_) => {
                    // A constant or an expression: only literals can be read by the macro.
                    let expr: syn::Expr = value.parse()?;
                    return Err(syn::Error::new_spanned(
                        expr,
                        format!(
                            "`{key}` expects {}, not an expression: write `{key} = {}`",
                            kind.describe(),
                            example(&key, *kind)
                        ),
                    ));
                }
            };
            if !kind.accepts(&lit) {
                let unsuffixed = matches!((kind, &lit), (Kind::Int, Lit::Int(_)));
                let message = if unsuffixed {
                    format!(
                        "`{key}` expects an integer literal without a type suffix: write `{}`",
                        correction(&key, *kind, &lit)
                    )
                } else {
                    format!(
                        "`{key}` expects {}: write `{}`",
                        kind.describe(),
                        correction(&key, *kind, &lit)
                    )
                };
                return Err(syn::Error::new(lit.span(), message));
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
            syn::Meta::NameValue(nv) => {
                let eq = &nv.eq_token;
                let value = &nv.value;
                let example = match schema.first() {
                    Some((key, kind)) => format!("#[{what}({key} = {}, ...)]", example(key, *kind)),
                    None => format!("#[{what}]"),
                };
                Err(syn::Error::new_spanned(
                    quote::quote!(#eq #value),
                    format!(
                        "#[{what}] takes named arguments in parentheses: write {example}, or #[{what}] for the defaults"
                    ),
                ))
            }
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
