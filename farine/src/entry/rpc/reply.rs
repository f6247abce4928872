//! Turning what a method returned into a reply frame. The generated code calls
//! `(&&&&Returned(value)).frame()`; method resolution picks the first that applies:
//! 1. `Result<T, E>` with `E: Serialize + Display`: the error travels with its value, so a
//!    Rust caller can rebuild it as `E`, and its text;
//! 2. `Result<T, E>` with `E: Serialize`: the same, its text being its JSON;
//! 3. `Result<T, E>` with `E: Display`: the error travels as text;
//! 4. any `T: Serialize`: the value itself.
//!
//! A `Result` is always a result: an `Err` is an error frame whatever `E` implements.
//!
//! (Autoref specialization: it works because the generated code names concrete types.)

use crate::rpc::frame::{item, kind, ErrorInfo, Frame};
use serde::Serialize;
use std::fmt::Display;

/// What a method returned, waiting to become a frame.
pub struct Returned<T>(pub T);

pub trait ViaSerializableError {
    fn frame(&self) -> Frame;
}

impl<T: Serialize, E: Serialize + Display> ViaSerializableError for &&&Returned<Result<T, E>> {
    fn frame(&self) -> Frame {
        match &self.0 {
            Ok(value) => item(value),
            Err(err) => {
                let mut info = ErrorInfo::new(kind::SERVICE, err.to_string());
                info.data = serde_json::to_value(err).ok();
                Frame::Error(info)
            }
        }
    }
}

pub trait ViaSerializeOnlyError {
    fn frame(&self) -> Frame;
}

impl<T: Serialize, E: Serialize> ViaSerializeOnlyError for &&Returned<Result<T, E>> {
    fn frame(&self) -> Frame {
        match &self.0 {
            Ok(value) => item(value),
            Err(err) => {
                let data = serde_json::to_value(err).ok();
                // No `Display`: the JSON of the value is the closest thing to a message.
                let message = match &data {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(value) => value.to_string(),
                    None => "the service's error does not serialize to JSON".to_string(),
                };
                let mut info = ErrorInfo::new(kind::SERVICE, message);
                info.data = data;
                Frame::Error(info)
            }
        }
    }
}

pub trait ViaDisplayError {
    fn frame(&self) -> Frame;
}

impl<T: Serialize, E: Display> ViaDisplayError for &Returned<Result<T, E>> {
    fn frame(&self) -> Frame {
        match &self.0 {
            Ok(value) => item(value),
            Err(err) => Frame::Error(ErrorInfo::new(kind::SERVICE, err.to_string())),
        }
    }
}

pub trait ViaValue {
    fn frame(&self) -> Frame;
}

impl<T: Serialize> ViaValue for Returned<T> {
    fn frame(&self) -> Frame {
        item(&self.0)
    }
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // the borrows are the point: they pick the impl
mod tests {
    use super::*;
    use crate::rpc::frame::{decode, Incoming};
    use serde_json::json;

    #[derive(Serialize, Debug)]
    enum Oops {
        NotFound(i64),
    }
    impl Display for Oops {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "not found")
        }
    }

    fn bytes(frame: Frame) -> Incoming {
        match frame {
            Frame::Item(bytes) => decode(&bytes).unwrap(),
            Frame::Error(info) => Incoming::Error(info),
        }
    }

    #[test]
    fn picks_the_richest_conversion() {
        let ok: Result<i64, Oops> = Ok(5);
        assert_eq!(bytes((&&&&Returned(ok)).frame()), Incoming::Item(json!(5)));
        let err: Result<i64, Oops> = Err(Oops::NotFound(3));
        let Incoming::Error(info) = bytes((&&&&Returned(err)).frame()) else {
            panic!()
        };
        assert_eq!(info.data, Some(json!({"NotFound": 3})));
        let err: Result<i64, std::io::Error> = Err(std::io::Error::other("disk"));
        let Incoming::Error(info) = bytes((&&&&Returned(err)).frame()) else {
            panic!()
        };
        assert_eq!((info.message.as_str(), info.data), ("disk", None));
        assert_eq!(bytes((&&&&Returned(0u8)).frame()), Incoming::Item(json!(0)));
        // Serialize without Display: still an error, never `{"Err": ...}` as a value.
        #[derive(Serialize)]
        enum MathError {
            DivideByZero,
        }
        let err: Result<u32, MathError> = Err(MathError::DivideByZero);
        let Incoming::Error(info) = bytes((&&&&Returned(err)).frame()) else {
            panic!("an Err of a Serialize-only type must be an error frame")
        };
        assert_eq!(info.kind, kind::SERVICE);
        assert_eq!(info.message, "DivideByZero");
        assert_eq!(info.data, Some(json!("DivideByZero")));
        let ok: Result<u32, MathError> = Ok(3);
        assert_eq!(bytes((&&&&Returned(ok)).frame()), Incoming::Item(json!(3)));
    }
}
