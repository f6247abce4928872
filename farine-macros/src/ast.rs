//! What `#[farine::service]` parsed: the impl block, its service name, and each method with
//! its farine attributes and parameters.

use crate::attr::{self, Args};
use proc_macro2::{Span, TokenStream};
use syn::{Attribute, FnArg, ImplItem, ItemImpl, Pat, Signature, Type};

pub struct Service {
    pub item: ItemImpl,
    pub ty_ident: syn::Ident,
    pub name: String,
    pub name_span: Span,
    pub methods: Vec<Method>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Consume,
    Rpc,
    Stream,
    Execute,
}

impl EntryKind {
    pub fn shown(self) -> &'static str {
        match self {
            EntryKind::Consume => "amqp::consume",
            EntryKind::Rpc => "rpc::method",
            EntryKind::Stream => "stream::http",
            EntryKind::Execute => "execute::method",
        }
    }
}

pub struct Entry {
    pub kind: EntryKind,
    pub attr: Attribute,
    pub args: Args,
}

/// A parameter the runtime supplies instead of the message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Injected {
    Publisher,
    /// `db: Db`: a pooled connection, owned by the call.
    Db,
    /// `db: &mut Db`.
    DbRef,
    /// `tx: &mut Tx`: committed or rolled back by the entry point.
    Tx,
    /// `tx: Tx` by value, which the entry point could not commit: rejected by `valid`.
    TxByValue,
    /// `events: Broadcast`: events published after the call succeeded.
    Broadcast,
    /// `shutdown: Shutdown`: tells a long-running method to stop.
    Shutdown,
    /// `farine::Client` or a generated `<Service>Client`: any type named `...Client`.
    Client,
}

pub struct Param {
    pub pat: Box<Pat>,
    pub ty: Box<Type>,
    pub injected: Option<Injected>,
}

pub struct Method {
    /// Position of the method among the impl's items.
    pub index: usize,
    pub sig: Signature,
    /// The method's other attributes, as written: its docs and `#[cfg]`s are carried over.
    pub attrs: Vec<Attribute>,
    pub entries: Vec<Entry>,
    pub publishes: Vec<(Attribute, Args)>,
    pub params: Vec<Param>,
}

impl Method {
    pub fn entry(&self) -> Option<&Entry> {
        self.entries.first()
    }

    /// Parameters that come from the message (everything the runtime does not inject).
    pub fn message_params(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.injected.is_none())
    }

    /// The method's `#[cfg(...)]`s: what is generated for it exists only when it does.
    pub fn cfgs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter().filter(|a| a.path().is_ident("cfg"))
    }

    /// The method's doc comments (`///` and `#[doc = ...]`).
    pub fn docs(&self) -> impl Iterator<Item = &Attribute> {
        self.attrs.iter().filter(|a| a.path().is_ident("doc"))
    }
}

enum FarineAttr {
    Entry(EntryKind),
    Publish,
}

/// Recognises `amqp::consume`, `farine::amqp::consume`, ... by their last two segments.
fn classify(attr: &Attribute) -> Option<FarineAttr> {
    let segments: Vec<String> = attr
        .path()
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let n = segments.len();
    if n < 2 {
        return None;
    }
    match (segments[n - 2].as_str(), segments[n - 1].as_str()) {
        ("amqp", "consume") => Some(FarineAttr::Entry(EntryKind::Consume)),
        ("amqp", "publish") => Some(FarineAttr::Publish),
        ("rpc", "method") => Some(FarineAttr::Entry(EntryKind::Rpc)),
        ("stream", "http") => Some(FarineAttr::Entry(EntryKind::Stream)),
        ("execute", "method") => Some(FarineAttr::Entry(EntryKind::Execute)),
        _ => None,
    }
}

pub fn injected(ty: &Type) -> Option<Injected> {
    let (by_mut_ref, ty) = match ty {
        Type::Reference(reference) if reference.mutability.is_some() => (true, &*reference.elem),
        other => (false, other),
    };
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    let name = last.ident.to_string();
    match (name.as_str(), by_mut_ref) {
        ("Publisher", false) => Some(Injected::Publisher),
        ("Db", false) => Some(Injected::Db),
        ("Db", true) => Some(Injected::DbRef),
        ("Tx", true) => Some(Injected::Tx),
        ("Tx", false) => Some(Injected::TxByValue),
        ("Broadcast", false) => Some(Injected::Broadcast),
        ("Shutdown", false) => Some(Injected::Shutdown),
        (_, false) if name.ends_with("Client") => Some(Injected::Client),
        _ => None,
    }
}

impl Service {
    pub fn parse(args: TokenStream, mut item: ItemImpl) -> syn::Result<Service> {
        let args = Args::parse("farine::service", attr::SERVICE, args)?;
        let ty_ident = match &*item.self_ty {
            Type::Path(path) if path.qself.is_none() => match path.path.segments.last() {
                Some(last) => last.ident.clone(),
                None => return Err(syn::Error::new_spanned(&item.self_ty, "expected a type")),
            },
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "#[farine::service] goes on `impl YourType { ... }` where YourType is a named struct",
                ))
            }
        };
        let (name, name_span) = match args.str("name") {
            Some(lit) => (lit.value(), lit.span()),
            None => (ty_ident.to_string().to_lowercase(), ty_ident.span()),
        };

        let mut errors: Option<syn::Error> = None;
        let mut methods = Vec::new();
        for (index, impl_item) in item.items.iter_mut().enumerate() {
            let ImplItem::Fn(func) = impl_item else {
                continue;
            };
            match parse_method(index, func) {
                Ok(Some(method)) => methods.push(method),
                Ok(None) => {}
                Err(err) => match &mut errors {
                    Some(all) => all.combine(err),
                    None => errors = Some(err),
                },
            }
        }
        if let Some(err) = errors {
            return Err(err);
        }
        Ok(Service {
            item,
            ty_ident,
            name,
            name_span,
            methods,
        })
    }
}

/// The impl block with every farine method attribute removed, the paths of those attributes
/// (so that the imports they used still count as used), and the positions of the methods that
/// had `#[amqp::publish]` (whose callers do not pass the publisher).
pub fn without_farine_attributes(mut item: ItemImpl) -> (ItemImpl, Vec<syn::Path>, Vec<usize>) {
    let mut paths = Vec::new();
    let mut publishing = Vec::new();
    for (index, impl_item) in item.items.iter_mut().enumerate() {
        if let ImplItem::Fn(func) = impl_item {
            let mut publishes = false;
            func.attrs.retain(|attr| {
                let kind = classify(attr);
                publishes |= matches!(kind, Some(FarineAttr::Publish));
                if kind.is_some() {
                    paths.push(attr.path().clone());
                }
                kind.is_none()
            });
            if publishes {
                publishing.push(index);
            }
        }
    }
    (item, paths, publishing)
}

/// Takes the farine attributes off `func` (so they are not expanded on their own) and records them.
fn parse_method(index: usize, func: &mut syn::ImplItemFn) -> syn::Result<Option<Method>> {
    let mut entries = Vec::new();
    let mut publishes = Vec::new();
    let mut kept = Vec::new();
    for attr in std::mem::take(&mut func.attrs) {
        match classify(&attr) {
            Some(FarineAttr::Entry(kind)) => {
                let schema = match kind {
                    EntryKind::Consume => attr::CONSUME,
                    EntryKind::Rpc => attr::RPC,
                    EntryKind::Stream => attr::STREAM,
                    EntryKind::Execute => attr::EXECUTE,
                };
                let args = Args::of_attribute(kind.shown(), schema, &attr)?;
                entries.push(Entry { kind, attr, args });
            }
            Some(FarineAttr::Publish) => {
                let args = Args::of_attribute("amqp::publish", attr::PUBLISH, &attr)?;
                publishes.push((attr, args));
            }
            None => kept.push(attr),
        }
    }
    func.attrs = kept.clone();
    if entries.is_empty() && publishes.is_empty() {
        return Ok(None);
    }
    let params = func
        .sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(typed) => Some(Param {
                pat: typed.pat.clone(),
                ty: typed.ty.clone(),
                injected: injected(&typed.ty),
            }),
            FnArg::Receiver(_) => None,
        })
        .collect();
    Ok(Some(Method {
        index,
        sig: func.sig.clone(),
        attrs: kept,
        entries,
        publishes,
        params,
    }))
}
