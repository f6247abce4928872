//! A client for code without an async runtime: each call blocks, and a stream is an
//! `Iterator`. It runs its own small runtime so the connection stays alive between calls.
//!
//! ```no_run
//! let config = farine::Config::from_env()?;
//! let calc = farine::rpc::blocking::Client::connect(&config)?;
//! let sum: i64 = calc.call_typed("calc", "add", serde_json::json!([2, 3]))?;
//! for n in calc.call_stream("calc", "count", serde_json::json!([5]))? {
//!     println!("{}", n?);
//! }
//! # Ok::<(), farine::Error>(())
//! ```

use super::client::{CallOptions, RpcStream};
use crate::config::Config;
use crate::{Error, Result};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

/// The blocking twin of [`crate::Client`].
pub struct Client {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: super::Client,
}

impl Client {
    pub fn connect(config: &Config) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("farine-blocking")
            .enable_all()
            .build()
            .map_err(|err| Error::Runtime(format!("cannot start the client's runtime: {err}")))?;
        let inner = runtime.block_on(super::Client::connect(config))?;
        Ok(Client {
            runtime: Arc::new(runtime),
            inner,
        })
    }

    /// See [`crate::Client::call`].
    pub fn call(&self, service: &str, method: &str, args: Value) -> Result<Value> {
        self.runtime
            .block_on(self.inner.call(service, method, args))
    }

    /// A unary call whose result is decoded as `T`.
    pub fn call_typed<T: DeserializeOwned>(
        &self,
        service: &str,
        method: &str,
        args: Value,
    ) -> Result<T> {
        let value = self.call(service, method, args)?;
        serde_json::from_value(value).map_err(Error::json(format!(
            "decoding the result of {service}.{method}"
        )))
    }

    /// A streaming call: items arrive through the iterator as the service produces them.
    pub fn call_stream(&self, service: &str, method: &str, args: Value) -> Result<Iter<Value>> {
        self.call_stream_typed(service, method, args)
    }

    /// A streaming call whose items are decoded as `T`.
    pub fn call_stream_typed<T: DeserializeOwned>(
        &self,
        service: &str,
        method: &str,
        args: Value,
    ) -> Result<Iter<T>> {
        let (args, kwargs) = super::split_args(args);
        let replies = self.runtime.block_on(self.inner.request(
            service,
            method,
            args,
            kwargs,
            CallOptions::default(),
        ))?;
        Ok(Iter {
            runtime: self.runtime.clone(),
            stream: Some(replies.stream()),
        })
    }
}

/// The items of a blocking streaming call. Dropping it stops the server's stream.
pub struct Iter<T: DeserializeOwned> {
    runtime: Arc<tokio::runtime::Runtime>,
    stream: Option<RpcStream<T>>,
}

impl<T: DeserializeOwned> Iterator for Iter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = self.stream.as_mut()?;
        self.runtime.block_on(stream.next())
    }
}

impl<T: DeserializeOwned> Drop for Iter<T> {
    fn drop(&mut self) {
        // Dropping a stream may send a cancel, which needs the runtime's context.
        let _context = self.runtime.enter();
        self.stream.take();
    }
}
