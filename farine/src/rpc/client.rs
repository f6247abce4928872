//! Calling services: one reply queue and one reply consumer per [`Client`], shared by every
//! call; replies are routed to their caller by `correlation_id` (others are ignored).
//!
//! The reply queue is exclusive to the client, and bound to the exchange of each service it
//! calls with its own name as routing key: a Rust server replies through the default
//! exchange, a Python farine server through the service exchange, and both reach it.

use super::frame::{self, kind, ErrorInfo, Incoming};
use super::names::queue_name;
use crate::broker::Broker;
use crate::config::{Config, ServiceConfig};
use crate::trace::Outgoing;
use crate::transport::{Binder, Next, Properties, Subscription};
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

type Pending = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Incoming>>>>;

/// An RPC client for any service: untyped calls here, typed ones through the
/// `<Service>Client` that `#[farine::service]` generates. Cheap to clone; clones share the
/// connection and the reply queue.
///
/// ```no_run
/// # async fn demo() -> farine::Result<()> {
/// use farine::prelude::*;
/// use serde_json::json;
///
/// let client = farine::Client::connect(&farine::Config::from_env()?).await?;
/// let sum = client.call("calc", "add", json!([2, 3])).await?;
/// assert_eq!(sum, json!(5));
/// let mut items = client.call_stream("calc", "count", json!([3])).await?;
/// while let Some(item) = items.next().await {
///     println!("{}", item?);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<Broker>,
    config: Arc<Config>,
    reply_queue: String,
    /// Binds the reply queue to service exchanges (replayed on recovery).
    binder: Arc<dyn Binder>,
    pending: Pending,
    /// Services whose exchange the reply queue is bound to.
    bound: tokio::sync::Mutex<HashSet<String>>,
    settings: Mutex<HashMap<String, Arc<ServiceConfig>>>,
    dispatcher: tokio::task::JoinHandle<()>,
    /// A service's client when metrics are on: where its calls are counted, and the service.
    metrics: Option<(crate::metrics::Metrics, String)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

/// Per-call options: deadline and idle timeout between stream items.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallOptions {
    /// Time for the whole unary call, or until a stream's first item. Default: the target
    /// service's `rpc_timeout`.
    pub timeout: Option<Duration>,
    /// Longest wait between two frames of a stream. Default: the timeout.
    pub idle_timeout: Option<Duration>,
}

impl Client {
    /// Connects with the `[DEFAULT]` settings of `config` (its own connections).
    pub async fn connect(config: &Config) -> Result<Client> {
        let settings = config.service("farine-client")?;
        let broker = Arc::new(Broker::for_service(&settings).await?);
        Client::with_broker(broker, Arc::new(config.clone()), None).await
    }

    /// A client on an existing broker connection (a service's own).
    pub(crate) async fn with_broker(
        broker: Arc<Broker>,
        config: Arc<Config>,
        metrics: Option<(crate::metrics::Metrics, String)>,
    ) -> Result<Client> {
        let reply_queue = format!(
            "{}{}",
            super::names::REPLY_QUEUE_PREFIX,
            uuid::Uuid::new_v4().simple()
        );
        let replies = broker
            .private_queue("replies".to_string(), &reply_queue, None)
            .await?;
        let binder = replies.binder();
        let pending: Pending = Arc::default();
        let dispatcher = tokio::spawn(dispatch(replies, broker.losses(), pending.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                broker,
                config,
                reply_queue,
                binder,
                pending,
                bound: Default::default(),
                settings: Default::default(),
                dispatcher,
                metrics,
            }),
        })
    }

    /// Calls `service.method` with `args`: a JSON array is the positional arguments, an
    /// object the arguments by name, anything else the single argument.
    pub async fn call(&self, service: &str, method: &str, args: Value) -> Result<Value> {
        let (args, kwargs) = split_args(args);
        self.request_unary(service, method, args, kwargs, CallOptions::default())
            .await?
            .unary()
            .await
    }

    /// Calls a streaming method; the items arrive as they are produced.
    pub async fn call_stream(
        &self,
        service: &str,
        method: &str,
        args: Value,
    ) -> Result<RpcStream<Value>> {
        let (args, kwargs) = split_args(args);
        Ok(self
            .request(service, method, args, kwargs, CallOptions::default())
            .await?
            .stream())
    }

    /// Sends a request and returns its replies; the building block of every call. A method
    /// that does not exist is an error here, before any reply is awaited.
    pub async fn request(
        &self,
        service: &str,
        method: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: CallOptions,
    ) -> Result<Replies> {
        let mut replies = self
            .request_unary(service, method, args, kwargs, options)
            .await?;
        if let Some(confirm) = replies.confirm.take() {
            if let Err(err) = confirm.await {
                let err = unknown_method(err, service, method);
                replies.failed(&err);
                return Err(err);
            }
        }
        Ok(replies)
    }

    /// Sends a request without waiting for the broker's confirm: a call whose one result is
    /// awaited at once learns of a missing method from its replies (as soon as the broker
    /// returns the request), and saves a wake-up per call.
    pub(crate) async fn request_unary(
        &self,
        service: &str,
        method: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: CallOptions,
    ) -> Result<Replies> {
        let settings = self.settings(service)?;
        self.bind(service).await?;
        let call = format!("{service}.{method}");
        let timeout = options.timeout.unwrap_or(settings.rpc_timeout);
        let idle_timeout = options.idle_timeout.unwrap_or(timeout);
        let correlation_id = uuid::Uuid::new_v4().simple().to_string();
        // Made while handling a delivery: the call's own span, a child of the delivery's.
        let outgoing = Outgoing::call(service, method, &correlation_id);
        let body = serde_json::to_vec(&serde_json::json!({ "args": args, "kwargs": kwargs }))
            .map_err(Error::json(format!("encoding the arguments of {call}")))?;
        let (sender, receiver) = mpsc::unbounded_channel();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(correlation_id.clone(), sender);
        let guard = CallGuard {
            client: self.clone(),
            service: service.to_string(),
            correlation_id: correlation_id.clone(),
            finished: false,
        };
        // Transient: a request outlives neither its deadline (the expiration below) nor its
        // reply queue (exclusive: gone with a broker restart), so writing it to disk would
        // protect nothing.
        let properties = Properties::json()
            .with_delivery_mode(1)
            .with_headers(request_headers(outgoing.as_ref()))
            .with_correlation_id(correlation_id.as_str())
            .with_reply_to(self.inner.reply_queue.as_str())
            // A request nobody took before the caller gave up is dropped by the broker.
            .with_expiration(timeout.as_millis().max(1).to_string());
        let routing_key = queue_name(service, method);
        let confirm = match self
            .inner
            .broker
            .publish_pending(service, &routing_key, &body, properties, true)
            .instrument(Outgoing::span(outgoing.as_ref()))
            .await
        {
            Ok(confirm) => confirm,
            Err(err) => {
                let err = unknown_method(err, service, method);
                if let Some(outgoing) = &outgoing {
                    outgoing.fail(&err);
                }
                return Err(err);
            }
        };
        let (service, method) = (service.to_string(), method.to_string());
        let confirm = async move {
            confirm
                .await
                .map_err(|err| unknown_method(err, &service, &method))
        }
        .boxed();
        Ok(Replies {
            outgoing,
            started: std::time::Instant::now(),
            metrics: self.inner.metrics.clone(),
            confirm: Some(confirm),
            call,
            receiver,
            guard,
            idle_timeout,
            // The deadline counts from the request; each frame moves it by `idle_timeout`.
            timer: Box::pin(tokio::time::sleep(timeout)),
            waiting: timeout,
            done: false,
            read: 0,
            granted: STREAM_WINDOW,
        })
    }

    fn settings(&self, service: &str) -> Result<Arc<ServiceConfig>> {
        let mut cache = self
            .inner
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(settings) = cache.get(service) {
            return Ok(settings.clone());
        }
        let settings = Arc::new(self.inner.config.service(service)?);
        cache.insert(service.to_string(), settings.clone());
        Ok(settings)
    }

    /// Binds the reply queue to `service`'s exchange once, after checking the exchange
    /// exists: a missing exchange means no such service.
    async fn bind(&self, service: &str) -> Result<()> {
        let mut bound = self.inner.bound.lock().await;
        if bound.contains(service) {
            return Ok(());
        }
        if !self.inner.broker.exchange_exists(service).await? {
            return Err(Error::UnknownService {
                service: service.to_string(),
            });
        }
        self.inner
            .binder
            .bind(service, &self.inner.reply_queue)
            .await?;
        bound.insert(service.to_string());
        Ok(())
    }
}

/// A request the broker could not route: no queue is bound for the method.
fn unknown_method(err: Error, service: &str, method: &str) -> Error {
    match err {
        Error::Unroutable { .. } => Error::UnknownMethod {
            service: service.to_string(),
            method: method.to_string(),
        },
        err => err,
    }
}

/// How many items of a stream the server may send ahead of what the caller has read: the
/// most a slow reader makes this process (and the broker) hold per stream.
pub(crate) const STREAM_WINDOW: u64 = 1024;

/// What every request says about the caller (extensions; Python servers ignore them): it
/// reads a unary result in one frame, and grants a stream [`STREAM_WINDOW`] items at first.
fn request_headers(outgoing: Option<&Outgoing>) -> crate::transport::Headers {
    use crate::transport::HeaderValue;
    let mut headers = crate::transport::Headers::new();
    headers.insert(frame::SINGLE_FRAME_HEADER.into(), HeaderValue::Bool(true));
    headers.insert(
        super::names::CREDIT_HEADER.into(),
        HeaderValue::Int(STREAM_WINDOW as i64),
    );
    // Made while handling a delivery: the request continues its trace, from the call's span.
    if let Some(outgoing) = outgoing {
        outgoing.inject(&mut headers);
    }
    headers
}

/// Routes every reply frame to the call waiting for its correlation id.
async fn dispatch(
    mut replies: Box<dyn Subscription>,
    mut losses: tokio::sync::watch::Receiver<u64>,
    pending: Pending,
) {
    // Every waiting call learns of a lost connection at once (Error::Disconnected), not at
    // its deadline; the transport re-attaches the reply queue when the broker is back.
    let fail_waiting = || pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    loop {
        let delivery = tokio::select! {
            changed = losses.changed() => {
                if changed.is_err() {
                    break;
                }
                fail_waiting();
                continue;
            }
            next = replies.next() => match next {
                Next::Delivery(delivery) => delivery,
                Next::Lost(_) => {
                    fail_waiting();
                    match replies.recover().await {
                        Ok(()) => continue,
                        Err(_) => break,
                    }
                }
                Next::Cancelled => break,
            },
        };
        let reply = delivery.message;
        let Some(id) = reply.properties.correlation_id.as_deref() else {
            tracing::debug!("reply without correlation_id ignored");
            continue;
        };
        let frame = match frame::decode(&reply.body) {
            Ok(frame) => frame,
            Err(message) => Incoming::Error(ErrorInfo::new(kind::INTERNAL, message)),
        };
        let last = !matches!(frame, Incoming::Item(_));
        let sender = {
            let mut calls = pending.lock().unwrap_or_else(|p| p.into_inner());
            if last {
                calls.remove(id)
            } else {
                calls.get(id).cloned()
            }
        };
        let Some(sender) = sender else {
            tracing::debug!(correlation_id = id, "reply for no waiting call ignored");
            continue;
        };
        // Sent with the lock released: the caller it wakes takes the lock at once to forget
        // its call, and would otherwise sleep on it.
        let _ = sender.send(frame);
    }
    // The connection is gone: every waiting call learns it now, not at its timeout.
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Splits the JSON arguments of a call into positional arguments and arguments by name, as
/// every client sends them (`{"args": [...], "kwargs": {...}}`): an array is the positional
/// arguments, an object the arguments by name, `null` no arguments, and any other value the
/// single positional argument.
///
/// ```
/// use farine::rpc::split_args;
/// use serde_json::json;
///
/// let (args, kwargs) = split_args(json!([1, 2]));
/// assert_eq!((args, kwargs.len()), (vec![json!(1), json!(2)], 0));
///
/// let (args, kwargs) = split_args(json!({"a": 1}));
/// assert!(args.is_empty());
/// assert_eq!(kwargs["a"], 1);
///
/// assert_eq!(split_args(json!("x")).0, [json!("x")]);
/// assert!(split_args(serde_json::Value::Null).0.is_empty());
/// ```
pub fn split_args(args: Value) -> (Vec<Value>, Map<String, Value>) {
    match args {
        Value::Array(items) => (items, Map::new()),
        Value::Object(map) => (Vec::new(), map),
        Value::Null => (Vec::new(), Map::new()),
        other => (vec![other], Map::new()),
    }
}

/// Forgets a call when its replies are dropped, and asks the server to stop a stream the
/// caller no longer reads.
struct CallGuard {
    client: Client,
    service: String,
    correlation_id: String,
    finished: bool,
}

impl CallGuard {
    /// Lets the server send `items` more items of this stream (on the service exchange,
    /// routing key `<service>.__credit__`; fire and forget: credits add up in any order).
    fn grant(&self, items: u64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let credit = super::names::Credit {
            correlation_id: self.correlation_id.clone(),
            reply_to: self.client.inner.reply_queue.clone(),
            items,
        };
        let Ok(body) = serde_json::to_vec(&credit) else {
            return;
        };
        let broker = self.client.inner.broker.clone();
        let exchange = self.service.clone();
        handle.spawn(async move {
            let routing_key = super::names::credit_key(&exchange);
            if let Err(err) = broker
                .publish(&exchange, &routing_key, &body, Properties::json(), false)
                .await
            {
                tracing::debug!("could not grant stream credit: {err}");
            }
        });
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.client
            .inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.correlation_id);
        if self.finished {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let broker = self.client.inner.broker.clone();
        let exchange = std::mem::take(&mut self.service);
        let cancel = super::names::Cancel {
            correlation_id: std::mem::take(&mut self.correlation_id),
            reply_to: self.client.inner.reply_queue.clone(),
        };
        let Ok(body) = serde_json::to_string(&cancel) else {
            return;
        };
        handle.spawn(async move {
            let routing_key = super::names::cancel_key(&exchange);
            let properties = Properties::json();
            if let Err(err) = broker
                .publish(&exchange, &routing_key, body.as_bytes(), properties, false)
                .await
            {
                tracing::debug!("could not cancel a stream: {err}");
            }
        });
    }
}

/// The frames of one call, with its deadlines.
pub struct Replies {
    call: String,
    /// The call's span, when it was made in a trace: ended when the replies are dropped.
    outgoing: Option<Outgoing>,
    /// When the request was sent, and where a unary call's result is counted.
    started: std::time::Instant,
    metrics: Option<(crate::metrics::Metrics, String)>,
    /// The broker's confirm of the request, while it has not come (see `request_unary`).
    confirm: Option<BoxFuture<'static, Result<()>>>,
    receiver: mpsc::UnboundedReceiver<Incoming>,
    guard: CallGuard,
    idle_timeout: Duration,
    /// Deadline of the next frame: the call's timeout for the first, then `idle_timeout`.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// What the running timer waits for, to say so when it expires.
    waiting: Duration,
    done: bool,
    /// Items handed to the reader, and items the server was allowed to send in all.
    read: u64,
    granted: u64,
}

impl Replies {
    /// The single result of a unary call.
    pub async fn unary(mut self) -> Result<Value> {
        let span = Outgoing::span(self.outgoing.as_ref());
        let result = self.unary_result().instrument(span).await;
        if let Err(err) = &result {
            self.failed(err);
        }
        if let Some((metrics, service)) = &self.metrics {
            let seconds = self.started.elapsed().as_secs_f64();
            metrics.rpc_call(service, &self.call, &result, seconds);
        }
        result
    }

    async fn unary_result(&mut self) -> Result<Value> {
        match self.next().await {
            Some(result) => {
                self.guard.finished = true;
                result
            }
            None => Err(Error::Remote {
                call: self.call.clone(),
                kind: kind::INTERNAL.into(),
                message: "the call ended without a result".into(),
                data: None,
            }),
        }
    }

    /// Whether the call is over: its last frame has been read.
    #[cfg(feature = "gateway")]
    pub(crate) fn finished(&self) -> bool {
        self.done
    }

    /// The items of a streaming call.
    pub fn stream<T: DeserializeOwned>(self) -> RpcStream<T> {
        RpcStream {
            replies: self,
            item: PhantomData,
        }
    }

    /// Records on the call's span that it failed.
    fn failed(&self, err: &Error) {
        if let Some(outgoing) = &self.outgoing {
            outgoing.fail(err);
        }
    }

    fn error(&self, info: ErrorInfo) -> Error {
        Error::Remote {
            call: self.call.clone(),
            kind: info.kind,
            message: info.message,
            data: info.data,
        }
    }
}

impl Stream for Replies {
    type Item = Result<Value>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Err(err))) = &polled {
            self.failed(err);
        }
        polled
    }
}

impl Replies {
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Value>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(confirm) = self.confirm.as_mut() {
            match confirm.poll_unpin(cx) {
                Poll::Ready(Ok(())) => self.confirm = None,
                Poll::Ready(Err(err)) => {
                    self.done = true;
                    self.guard.finished = true;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Pending => {}
            }
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                let idle = self.idle_timeout;
                self.waiting = idle;
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + idle);
                match frame {
                    Incoming::Item(value) => {
                        self.read += 1;
                        // Half the window read: grant that half again, so the server never
                        // waits for a reader that keeps up, and never runs a window ahead.
                        if self.granted - self.read <= STREAM_WINDOW / 2 {
                            let more = STREAM_WINDOW - (self.granted - self.read);
                            self.granted += more;
                            self.guard.grant(more);
                        }
                        Poll::Ready(Some(Ok(value)))
                    }
                    Incoming::Last(value) => {
                        self.done = true;
                        self.guard.finished = true;
                        Poll::Ready(Some(Ok(value)))
                    }
                    Incoming::End => {
                        self.done = true;
                        self.guard.finished = true;
                        Poll::Ready(None)
                    }
                    Incoming::Error(info) => {
                        self.done = true;
                        self.guard.finished = true;
                        Poll::Ready(Some(Err(self.error(info))))
                    }
                }
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(Error::Disconnected {
                    call: self.call.clone(),
                })))
            }
            Poll::Pending => {
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.done = true;
                    let after = self.waiting;
                    Poll::Ready(Some(Err(Error::Timeout {
                        call: self.call.clone(),
                        after,
                    })))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

/// The items of a streaming call, decoded as `T`. Dropping it stops the server's stream.
pub struct RpcStream<T> {
    replies: Replies,
    item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Stream for RpcStream<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.replies).poll_next(cx);
        // The call's name is copied only for an item that does not decode.
        polled.map(|item| {
            item.map(|result| {
                result.and_then(|value| {
                    serde_json::from_value(value).map_err(|source| Error::Json {
                        context: format!("decoding an item of {}", self.replies.call),
                        source,
                    })
                })
            })
        })
    }
}
