//! What farine requires of your types, checked when the service compiles.
//!
//! A type returned by an `#[rpc::method]` must be [`RpcReturn`] (the typed client decodes it),
//! and the body of an `#[amqp::consume]` method a [`MessageBody`] (decoded from the message):
//! both are what `#[derive(Deserialize)]` gives. You never implement these traits; they exist
//! so that a type that falls short is one compile error, on the type you wrote, in words.
//!
//! ```
//! use farine::checks::{MessageBody, RpcReturn};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Total {
//!     pub cents: i64,
//! }
//!
//! fn returnable<T: RpcReturn>() {}
//! fn consumable<T: MessageBody>() {}
//! returnable::<Total>();
//! consumable::<Total>();
//! ```
//!
//! How: each requirement is a trait with an `#[diagnostic::on_unimplemented]` message and a
//! blanket impl marked `#[diagnostic::do_not_recommend]` (so rustc reports the requirement,
//! not the serde bound behind it). `#[farine::service]` asserts it once with the user's type
//! tokens, as `<Type as Requirement>::check`, which leaves no note pointing into farine. The
//! generated code that uses the type adds no error of its own: the typed client states the
//! bound as a higher-ranked where clause (not checked where it is written), and a consumer
//! picks its handler by autoref (`ConsumeBody`, in the macros' `farine::__private`).

use serde::de::DeserializeOwned;

/// What an `#[rpc::method]` returns (or a streaming one yields): the typed client decodes it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is returned by an #[rpc::method], so it must implement `Deserialize`: the service's typed client decodes it for callers",
    label = "returned to callers, who decode it: needs `Deserialize`",
    note = "derive both for a returned type: `#[derive(Serialize, Deserialize)]`"
)]
pub trait RpcReturn {
    #[doc(hidden)]
    fn check() {}
}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned> RpcReturn for T {}

/// What an `#[amqp::consume]` method takes: decoded from the message's JSON body.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is the body of an #[amqp::consume] message, so it must implement `Deserialize`: farine decodes it from the message's JSON",
    label = "decoded from each message: needs `Deserialize`",
    note = "derive it: `#[derive(Deserialize)]`; a body is also owned and `Send` (no borrowed data, no `Rc`)"
)]
pub trait MessageBody {
    #[doc(hidden)]
    fn check() {}
}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned + Send + 'static> MessageBody for T {}
