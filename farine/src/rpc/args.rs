//! Binding a request's `{"args": [...], "kwargs": {...}}` to a method's parameters:
//! positional first, then by name. Every mismatch is an error that names the parameter.

use super::frame::{kind, ErrorInfo};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The arguments of one request, consumed parameter by parameter.
#[derive(Debug)]
pub struct Args {
    call: String,
    positional: Vec<Option<Value>>,
    kwargs: Map<String, Value>,
}

fn bad(message: String) -> ErrorInfo {
    ErrorInfo::new(kind::BAD_ARGUMENTS, message)
}

impl Args {
    /// Parses a request body for `service.method`.
    pub fn parse(body: &[u8], service: &str, method: &str) -> Result<Args, ErrorInfo> {
        let call = format!("{service}.{method}");
        let request: Value = serde_json::from_slice(body)
            .map_err(|err| bad(format!("{call}: the request is not JSON: {err}")))?;
        let Value::Object(mut request) = request else {
            return Err(bad(format!(
                "{call}: expected a request {{\"args\": [...], \"kwargs\": {{...}}}}, got {request}"
            )));
        };
        let positional = match request.remove("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.into_iter().map(Some).collect(),
            Some(other) => {
                return Err(bad(format!(
                    "{call}: \"args\" must be an array, got {other}"
                )))
            }
        };
        let kwargs = match request.remove("kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(mut map)) => {
                // Python farine's stream switch; 0.19 strips it, older clients may not.
                map.remove("__stream__");
                map
            }
            Some(other) => {
                return Err(bad(format!(
                    "{call}: \"kwargs\" must be an object, got {other}"
                )))
            }
        };
        Ok(Args {
            call,
            positional,
            kwargs,
        })
    }

    /// The parameter at `index` named `name`. A missing argument is `null`, so an `Option`
    /// parameter may be left out.
    pub fn take<T: DeserializeOwned>(&mut self, index: usize, name: &str) -> Result<T, ErrorInfo> {
        let by_position = self.positional.get_mut(index).and_then(Option::take);
        let by_name = self.kwargs.remove(name);
        let value = match (by_position, by_name) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "{}: argument `{name}` given both by position and by name",
                    self.call
                )))
            }
            (Some(value), None) | (None, Some(value)) => value,
            (None, None) => {
                return serde_json::from_value(Value::Null).map_err(|_| {
                    bad(format!(
                        "{}: missing argument `{name}` (parameter {} of type {})",
                        self.call,
                        index + 1,
                        std::any::type_name::<T>()
                    ))
                })
            }
        };
        serde_json::from_value(value).map_err(|err| {
            bad(format!(
                "{}: argument `{name}` expects {}: {err}",
                self.call,
                std::any::type_name::<T>()
            ))
        })
    }

    /// Checks that nothing is left over once `count` parameters were bound.
    pub fn finish(self, count: usize) -> Result<(), ErrorInfo> {
        if self.positional.len() > count {
            return Err(bad(format!(
                "{} takes {count} argument{}, got {}",
                self.call,
                if count == 1 { "" } else { "s" },
                self.positional.len()
            )));
        }
        if let Some(name) = self.kwargs.keys().next() {
            return Err(bad(format!(
                "{} has no parameter named `{name}`",
                self.call
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(body: &str) -> Args {
        Args::parse(body.as_bytes(), "calc", "add").unwrap()
    }

    #[test]
    fn positional_then_by_name() {
        let mut a = args(r#"{"args": [2], "kwargs": {"b": 3}}"#);
        assert_eq!(a.take::<i64>(0, "a").unwrap(), 2);
        assert_eq!(a.take::<i64>(1, "b").unwrap(), 3);
        a.finish(2).unwrap();
    }

    #[test]
    fn mismatches_name_the_parameter() {
        let mut a = args(r#"{"args": ["x"]}"#);
        let err = a.take::<i64>(0, "a").unwrap_err();
        assert_eq!(err.kind, kind::BAD_ARGUMENTS);
        assert!(
            err.message.contains("calc.add: argument `a` expects i64"),
            "{}",
            err.message
        );
        let err = a.take::<i64>(1, "b").unwrap_err();
        assert!(
            err.message.contains("missing argument `b`"),
            "{}",
            err.message
        );
        let err = args(r#"{"args": [1, 2, 3]}"#).finish(2).unwrap_err();
        assert!(
            err.message.contains("takes 2 arguments, got 3"),
            "{}",
            err.message
        );
        let err = args(r#"{"kwargs": {"c": 1}}"#).finish(2).unwrap_err();
        assert!(
            err.message.contains("no parameter named `c`"),
            "{}",
            err.message
        );
        let mut a = args(r#"{"args": [1], "kwargs": {"a": 1}}"#);
        assert!(a.take::<i64>(0, "a").unwrap_err().message.contains("both"));
    }

    #[test]
    fn optional_parameters_may_be_left_out() {
        let mut a = args(r#"{"args": []}"#);
        assert_eq!(a.take::<Option<i64>>(0, "a").unwrap(), None);
    }
}
