//! Settings of the whole process rather than of one service: read from `[DEFAULT]` only.

use std::net::SocketAddr;

use super::env::substitute_env;
use super::keys::keys;
use super::Config;
use crate::{Error, Result};

keys! {
    KEYS:
    /// The process's HTTP endpoint (`/metrics`, `/health/live`, `/health/ready`): a socket
    /// address such as `127.0.0.1:9464`; unset or empty, no endpoint and no metrics.
    HTTP_LISTEN = "http_listen",
    /// Where spans are exported over OTLP/HTTP (with the `otel` feature): a base URL such as
    /// `http://127.0.0.1:4318`, as `OTEL_EXPORTER_OTLP_ENDPOINT` (which wins) would be.
    OTLP_ENDPOINT = "otlp_endpoint",
}

impl Config {
    /// `http_listen` from `[DEFAULT]`: where the process serves `/metrics` and its health
    /// checks, or `None` (the default: a service opens no port nobody asked for). Set in a
    /// service's section, or not a socket address, it is an [`Error::Config`].
    ///
    /// ```
    /// let config = farine::config::Config::from_str(
    ///     "[DEFAULT]\namqp_uri = memory://\nhttp_listen = 127.0.0.1:9464\n",
    ///     "f.ini",
    /// )?;
    /// assert_eq!(config.http_listen()?, Some("127.0.0.1:9464".parse().unwrap()));
    ///
    /// let bad = farine::config::Config::from_str("[DEFAULT]\nhttp_listen = localhost\n", "f.ini")?;
    /// assert_eq!(
    ///     bad.http_listen().unwrap_err().to_string(),
    ///     "f.ini [DEFAULT] http_listen: expected an IP address and port such as 127.0.0.1:9464, got \"localhost\""
    /// );
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn http_listen(&self) -> Result<Option<SocketAddr>> {
        let key = HTTP_LISTEN.name();
        if let Some(section) = self
            .sections
            .values()
            .find(|section| section.values.contains_key(key))
        {
            return Err(self.http_listen_error(
                &section.name,
                "one endpoint per process: set it in [DEFAULT], not in a service's section",
            ));
        }
        let Some(raw) = self.defaults.values.get(key) else {
            return Ok(None);
        };
        let value = substitute_env(raw).map_err(|err| self.http_listen_error("DEFAULT", err))?;
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        value.parse().map(Some).map_err(|_| {
            self.http_listen_error(
                "DEFAULT",
                format!("expected an IP address and port such as 127.0.0.1:9464, got {value:?}"),
            )
        })
    }

    /// `otlp_endpoint` from `[DEFAULT]`: the base URL (`http://` or `https://`, with a host)
    /// of an OTLP/HTTP collector, without a trailing `/`, or `None` when unset or empty. Spans
    /// go to `<it>/v1/traces`, with the `otel` feature, unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (they win). Set in a service's section, or
    /// not such a URL, it is an [`Error::Config`].
    ///
    /// ```
    /// let config = farine::config::Config::from_str(
    ///     "[DEFAULT]\namqp_uri = memory://\notlp_endpoint = http://127.0.0.1:4318/\n",
    ///     "f.ini",
    /// )?;
    /// assert_eq!(config.otlp_endpoint()?.as_deref(), Some("http://127.0.0.1:4318"));
    ///
    /// let bad = farine::config::Config::from_str("[DEFAULT]\notlp_endpoint = 127.0.0.1:4318\n", "f.ini")?;
    /// assert_eq!(
    ///     bad.otlp_endpoint().unwrap_err().to_string(),
    ///     "f.ini [DEFAULT] otlp_endpoint: expected an http:// or https:// URL such as http://127.0.0.1:4318, got \"127.0.0.1:4318\""
    /// );
    /// # Ok::<(), farine::Error>(())
    /// ```
    pub fn otlp_endpoint(&self) -> Result<Option<String>> {
        let key = OTLP_ENDPOINT.name();
        let error = |section: &str, message: String| Error::Config {
            file: self.path.clone(),
            section: section.to_owned(),
            key: key.to_owned(),
            message,
        };
        if let Some(section) = self
            .sections
            .values()
            .find(|section| section.values.contains_key(key))
        {
            return Err(error(
                &section.name,
                "one exporter per process: set it in [DEFAULT], not in a service's section".into(),
            ));
        }
        let Some(raw) = self.defaults.values.get(key) else {
            return Ok(None);
        };
        let value = substitute_env(raw).map_err(|err| error("DEFAULT", err))?;
        let value = value.trim().trim_end_matches('/');
        if value.is_empty() {
            return Ok(None);
        }
        let host = value
            .strip_prefix("http://")
            .or_else(|| value.strip_prefix("https://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
        let printable = value.bytes().all(|b| b.is_ascii_graphic());
        match host {
            Some(host) if printable && !host.is_empty() && !host.starts_with(':') => {
                Ok(Some(value.to_owned()))
            }
            _ => Err(error(
                "DEFAULT",
                format!(
                    "expected an http:// or https:// URL such as http://127.0.0.1:4318, got {value:?}"
                ),
            )),
        }
    }

    /// An [`Error::Config`] about `http_listen` in `section`.
    pub(crate) fn http_listen_error(&self, section: &str, message: impl Into<String>) -> Error {
        Error::Config {
            file: self.path.clone(),
            section: section.to_owned(),
            key: HTTP_LISTEN.name().to_owned(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ini: &str) -> Result<Option<String>> {
        Config::from_str(ini, "f.ini").unwrap().otlp_endpoint()
    }

    #[test]
    fn otlp_endpoint_is_a_base_url_in_default() {
        assert_eq!(endpoint("[DEFAULT]\n").unwrap(), None);
        assert_eq!(endpoint("[DEFAULT]\notlp_endpoint =\n").unwrap(), None);
        assert_eq!(
            endpoint("[DEFAULT]\notlp_endpoint = https://otel.example:4318/base/\n").unwrap(),
            Some("https://otel.example:4318/base".into())
        );
        for bad in [
            "localhost:4318",
            "http://",
            "http://:4318",
            "ftp://x",
            "http://a b",
        ] {
            let err = endpoint(&format!("[DEFAULT]\notlp_endpoint = {bad}\n")).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("f.ini [DEFAULT] otlp_endpoint: expected an http"),
                "{bad}: {err}"
            );
        }
        let err = endpoint("[DEFAULT]\n[calc]\notlp_endpoint = http://127.0.0.1:4318\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.ini [calc] otlp_endpoint: one exporter per process"),
            "{err}"
        );
    }
}
