//! Turning what a method returned into a reply frame. The generated code calls
//! `(&&&Returned(value)).frame()`; method resolution picks the first that applies:
//! 1. `Result<T, E>` with `E: Serialize + Display`: the error travels with its value, so a
//!    Rust caller can rebuild it as `E`;
//! 2. `Result<T, E>` with `E: Display`: the error travels as text;
//! 3. any `T: Serialize`: the value itself.
//!
//! (Autoref specialization: it works because the generated code names concrete types.)

use super::frame::{item, kind, ErrorInfo, Frame};
use serde::Serialize;
use std::fmt::Display;

/// What a method returned, waiting to become a frame.
pub struct Returned<T>(pub T);

pub trait ViaSerializableError {
    fn frame(&self) -> Frame;
}

impl<T: Serialize, E: Serialize + Display> ViaSerializableError for &&Returned<Result<T, E>> {
    fn frame(&self) -> Frame {
        match &self.0 {
            Ok(value) => item(value),
            Err(err) => Frame::Error(ErrorInfo {
                kind: kind::SERVICE.to_string(),
                message: err.to_string(),
                data: serde_json::to_value(err).ok(),
            }),
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
        assert_eq!(bytes((&&&Returned(ok)).frame()), Incoming::Item(json!(5)));
        let err: Result<i64, Oops> = Err(Oops::NotFound(3));
        let Incoming::Error(info) = bytes((&&&Returned(err)).frame()) else {
            panic!()
        };
        assert_eq!(info.data, Some(json!({"NotFound": 3})));
        let err: Result<i64, std::io::Error> = Err(std::io::Error::other("disk"));
        let Incoming::Error(info) = bytes((&&&Returned(err)).frame()) else {
            panic!()
        };
        assert_eq!((info.message.as_str(), info.data), ("disk", None));
        assert_eq!(bytes((&&&Returned(0u8)).frame()), Incoming::Item(json!(0)));
    }
}
