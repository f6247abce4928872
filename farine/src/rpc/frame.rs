//! The reply frames of PROTOCOL.md, compatible with Python farine 0.19:
//! item `{"body": v, "__end__": false}`, end `{"__end__": true}`, error `{"__except__": text}`
//! plus our `__error__` extension `{"kind", "message", "data"}` for typed errors, and the
//! single-frame unary reply `{"body": v, "__end__": true}` for callers that ask for it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Error kinds carried in `__error__.kind`. Stable: callers match on them.
pub mod kind {
    /// The method returned its own error (`data` holds it when it is serializable).
    pub const SERVICE: &str = "service";
    /// Missing, surplus or ill-typed arguments.
    pub const BAD_ARGUMENTS: &str = "bad_arguments";
    /// The service has no such method.
    pub const UNKNOWN_METHOD: &str = "unknown_method";
    /// The call ran out of time.
    pub const TIMEOUT: &str = "timeout";
    /// Anything else on the server: a panic, a result that does not serialize.
    pub const INTERNAL: &str = "internal";
    /// A peer that does not send `__error__` (Python farine): only the text is known.
    pub const REMOTE: &str = "remote";
}

/// The `__error__` extension of an error frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorInfo {
    /// An error of `kind`; the message is clipped (it may quote what a caller sent).
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        ErrorInfo {
            kind: kind.to_string(),
            message: crate::clip::clip_owned(message.into()),
            data: None,
        }
    }
}

/// What a server sends for one step of a call, already encoded.
#[derive(Debug)]
pub enum Frame {
    /// An item frame's bytes.
    Item(Vec<u8>),
    /// A terminal error.
    Error(ErrorInfo),
}

#[derive(Serialize)]
struct ItemOut<'a, T: ?Sized> {
    body: &'a T,
    __end__: bool,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    __except__: &'a str,
    __error__: &'a ErrorInfo,
}

/// Encodes `value` as an item frame; a value that does not serialize is an internal error.
pub fn item<T: Serialize + ?Sized>(value: &T) -> Frame {
    match serde_json::to_vec(&ItemOut {
        body: value,
        __end__: false,
    }) {
        Ok(bytes) => Frame::Item(bytes),
        Err(err) => Frame::Error(ErrorInfo::new(
            kind::INTERNAL,
            format!("the result does not serialize to JSON: {err}"),
        )),
    }
}

pub const END: &[u8] = br#"{"__end__": true}"#;

/// The request header by which a caller says it reads a unary result as one frame
/// `{"body": v, "__end__": true}` (an extension: Python callers never send it, and get the two
/// frames of PROTOCOL.md).
pub const SINGLE_FRAME_HEADER: &str = "x-farine-single-frame";

/// Turns an item frame made by [`item`] into the last frame of the call, in place; false when
/// `bytes` is not such a frame (then it is left alone).
pub fn into_last(bytes: &mut Vec<u8>) -> bool {
    const TAIL: &[u8] = br#","__end__":false}"#;
    if !bytes.ends_with(TAIL) {
        return false;
    }
    bytes.truncate(bytes.len() - b"false}".len());
    bytes.extend_from_slice(b"true}");
    true
}

/// Encodes an error frame; its text is clipped however the [`ErrorInfo`] was made.
pub fn error_bytes(info: &ErrorInfo) -> Vec<u8> {
    let clipped;
    let info = match crate::clip::clip(&info.message) {
        std::borrow::Cow::Borrowed(_) => info,
        std::borrow::Cow::Owned(message) => {
            clipped = ErrorInfo {
                message,
                ..info.clone()
            };
            &clipped
        }
    };
    serde_json::to_vec(&ErrorOut {
        __except__: &info.message,
        __error__: info,
    })
    .unwrap_or_else(|_| br#"{"__except__": "unencodable error"}"#.to_vec())
}

/// A frame as a client reads it.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Item(Value),
    /// An item that is also the end (the single-frame unary reply).
    Last(Value),
    End,
    Error(ErrorInfo),
}

#[derive(Deserialize)]
struct AnyFrame {
    /// `Some(Null)` for `"body": null`, `None` for no `body` at all (an end frame).
    #[serde(default, deserialize_with = "present")]
    body: Option<Value>,
    #[serde(default, rename = "__end__")]
    end: Option<bool>,
    #[serde(default, rename = "__except__")]
    except: Option<Value>,
    #[serde(default, rename = "__error__")]
    error: Option<ErrorInfo>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Decodes a reply frame. Unlike Python farine, a falsy body (`0`, `""`, `null`, ...) is an
/// item like any other: what matters is `__end__: false`.
pub fn decode(bytes: &[u8]) -> Result<Incoming, String> {
    let frame: AnyFrame =
        serde_json::from_slice(bytes).map_err(|err| format!("reply is not a JSON frame: {err}"))?;
    if frame.except.is_some() || frame.error.is_some() {
        let info = frame.error.unwrap_or_else(|| {
            let text = match frame.except {
                Some(Value::String(text)) => text,
                Some(other) => other.to_string(),
                None => String::new(),
            };
            ErrorInfo::new(kind::REMOTE, text)
        });
        return Ok(Incoming::Error(info));
    }
    match frame.end {
        Some(true) => Ok(match frame.body {
            Some(value) => Incoming::Last(value),
            None => Incoming::End,
        }),
        Some(false) => Ok(Incoming::Item(frame.body.unwrap_or(Value::Null))),
        None => Err("reply frame has neither __end__ nor __except__".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn falsy_items_are_items() {
        for value in [
            json!(0),
            json!(""),
            json!(false),
            json!([]),
            json!(null),
            json!({}),
        ] {
            let Frame::Item(bytes) = item(&value) else {
                panic!("encodes")
            };
            assert_eq!(decode(&bytes), Ok(Incoming::Item(value)));
        }
    }

    #[test]
    fn python_frames_decode() {
        assert_eq!(decode(br#"{"__end__": true}"#), Ok(Incoming::End));
        assert_eq!(
            decode(br#"{"body": 3, "__end__": false}"#),
            Ok(Incoming::Item(json!(3)))
        );
        assert_eq!(
            decode(br#"{"__except__": "Traceback ... NameError"}"#),
            Ok(Incoming::Error(ErrorInfo::new(
                kind::REMOTE,
                "Traceback ... NameError"
            )))
        );
    }

    #[test]
    fn a_unary_result_fits_in_one_frame() {
        for value in [json!(5), json!(null), json!({"a": [1, 2]}), json!("x")] {
            let Frame::Item(mut bytes) = item(&value) else {
                panic!("encodes")
            };
            assert!(into_last(&mut bytes));
            assert_eq!(decode(&bytes), Ok(Incoming::Last(value)));
        }
        let mut other = br#"{"__end__": true}"#.to_vec();
        assert!(!into_last(&mut other));
        assert_eq!(other, br#"{"__end__": true}"#);
        // An end frame without a body stays an end, as Python sends it.
        assert_eq!(decode(br#"{"__end__":true}"#), Ok(Incoming::End));
    }

    #[test]
    fn error_frames_carry_both_forms() {
        let mut info = ErrorInfo::new(kind::SERVICE, "no such todo");
        info.data = Some(json!({"NotFound": 3}));
        let bytes = error_bytes(&info);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["__except__"], json!("no such todo"));
        assert_eq!(decode(&bytes), Ok(Incoming::Error(info)));
    }
}
