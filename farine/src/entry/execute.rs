//! The supervised loop behind `#[execute::method]`: its spec, its handler, and the
//! supervisor that restarts it. The user-facing names are in [`crate::execute`].

use super::EntryPoint;
use crate::backoff::Backoff;
use crate::context::ServiceContext;
use crate::outcome::{guard_outcome, HandlerResult, Outcome};
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A failing method is never restarted sooner than this, whatever `restart_delay` says (the
/// floor of every farine backoff).
pub const MIN_FAILURE_DELAY: Duration = crate::backoff::MIN_DELAY;

/// How one `#[execute::method]` entry point is supervised.
///
/// ```
/// use farine::execute::ExecuteSpec;
/// use std::time::Duration;
///
/// let spec = ExecuteSpec { max_restarts: Some(5), ..ExecuteSpec::new("shop.reconcile") };
/// assert!(spec.restart);
/// assert_eq!(spec.restart_delay, Duration::from_secs(1));
/// assert_eq!(spec.backoff_max, Duration::from_secs(60));
/// ```
#[derive(Clone, Debug)]
pub struct ExecuteSpec {
    /// `service.method`, for logs.
    pub label: String,
    /// Run the method again after it returns or fails (default `true`); `false` runs it once.
    pub restart: bool,
    /// The pause before running again after the method returned `Ok`, and the first
    /// backoff after a failure (default 1s).
    pub restart_delay: Duration,
    /// How many restarts after failures in a row are allowed before giving up (default
    /// `None`: no limit).
    pub max_restarts: Option<u32>,
    /// The cap on the backoff after failures (default 60s).
    pub backoff_max: Duration,
}

impl ExecuteSpec {
    /// The defaults: restart, 1s between runs, no limit on restarts, backoff up to 60s.
    pub fn new(label: impl Into<String>) -> Self {
        ExecuteSpec {
            label: label.into(),
            restart: true,
            restart_delay: Duration::from_secs(1),
            max_restarts: None,
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Tells a running `#[execute::method]` that the service is shutting down. Take it as a
/// parameter to stop cleanly (the method is cancelled anyway once `shutdown_grace` is over).
///
/// ```
/// use farine::execute::Shutdown;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // In a unit test of a method: a Shutdown that is never requested.
/// let shutdown = Shutdown::default();
/// assert!(!shutdown.is_requested());
/// assert!(shutdown.sleep(Duration::from_millis(1)).await);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A `Shutdown` requested when `token` is cancelled.
    pub fn from_token(token: CancellationToken) -> Self {
        Shutdown(token)
    }

    /// Completes when shutdown is requested (at once if it already was).
    ///
    /// ```
    /// # use farine::execute::Shutdown;
    /// async fn serve(shutdown: Shutdown) {
    ///     tokio::select! {
    ///         _ = shutdown.requested() => {}
    ///         _ = std::future::pending::<()>() => {} // the real work
    ///     }
    /// }
    /// ```
    pub async fn requested(&self) {
        self.0.cancelled().await;
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Sleeps for `duration` unless shutdown is requested first: `true` if the whole time
    /// passed, `false` if shutdown cut it short (or had already been requested). Made for
    /// `while shutdown.sleep(period).await { ... }`.
    pub async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.0.cancelled() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }
}

/// Runs an `#[execute::method]` once; built by [`execute_handler`].
pub type ExecuteHandler =
    Arc<dyn Fn(Arc<ServiceContext>, Shutdown) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Builds the handler of an `#[execute::method]`: calls the method and turns its result into
/// an [`Outcome`]; a panic becomes [`Outcome::Failed`] instead of a dead task.
///
/// ```
/// use farine::execute::{execute_handler, Shutdown};
/// use std::sync::Arc;
///
/// struct Shop;
/// impl Shop {
///     async fn poll(&self, shutdown: Shutdown) -> farine::Result<()> {
///         shutdown.requested().await;
///         Ok(())
///     }
/// }
///
/// let handler = execute_handler(Arc::new(Shop), |shop: Arc<Shop>, _context, shutdown| async move {
///     shop.poll(shutdown).await
/// });
/// # let _ = handler;
/// ```
pub fn execute_handler<S, F, Fut>(service: Arc<S>, method: F) -> ExecuteHandler
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Arc<ServiceContext>, Shutdown) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    let method = Arc::new(method);
    Arc::new(move |context: Arc<ServiceContext>, shutdown: Shutdown| {
        let service = service.clone();
        let method = method.clone();
        // Called inside the guarded future, so a panic before the first `.await` is caught too.
        guard_outcome(async move { method(service, context, shutdown).await }).boxed()
    })
}

/// One run of the method, with the context bound.
type Launch = Arc<dyn Fn(Shutdown) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// Runs an `#[execute::method]` under `spec` until it is done (see the module docs), or
/// until `shutdown`, after which the method gets `grace` to return before it is cancelled.
///
/// Returns `Ok` when the entry point ended normally (shutdown, `restart = false`), and `Err`
/// only when it gave up after `max_restarts` failures in a row.
pub(crate) async fn supervise(
    spec: ExecuteSpec,
    handler: ExecuteHandler,
    context: Arc<ServiceContext>,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<()> {
    let launch: Launch = Arc::new(move |stop| {
        crate::context::scope(context.clone(), handler(context.clone(), stop)).boxed()
    });
    supervise_launch(spec, launch, shutdown, grace).await
}

async fn supervise_launch(
    spec: ExecuteSpec,
    launch: Launch,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<()> {
    let label = spec.label.as_str();
    tracing::info!(
        entry_point = label,
        restart = spec.restart,
        "supervised method started"
    );
    // Failed runs in a row since the last healthy one.
    let mut backoff = Backoff::new(spec.restart_delay, spec.backoff_max).min(MIN_FAILURE_DELAY);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let started = Instant::now();
        let Some(outcome) = run_once(&launch, &shutdown, grace).await else {
            tracing::warn!(
                entry_point = label,
                grace = %humantime::format_duration(grace),
                "did not return within shutdown_grace after shutdown was requested: cancelled"
            );
            return Ok(());
        };
        let failure = match outcome {
            Outcome::Done => None,
            Outcome::Failed(reason) | Outcome::Poison(reason) => Some(reason),
        };
        if shutdown.is_cancelled() {
            match failure {
                None => tracing::info!(entry_point = label, "supervised method stopped"),
                Some(reason) => tracing::warn!(
                    entry_point = label,
                    "supervised method failed while stopping: {reason}"
                ),
            }
            return Ok(());
        }
        if !spec.restart {
            match failure {
                None => tracing::info!(entry_point = label, "method finished (restart = false)"),
                Some(reason) => tracing::error!(
                    entry_point = label,
                    "method failed (restart = false, not run again): {reason}"
                ),
            }
            return Ok(());
        }
        let delay = match failure {
            None => {
                backoff.reset();
                tracing::debug!(entry_point = label, "method returned: running it again");
                spec.restart_delay
            }
            Some(reason) => {
                if started.elapsed() >= spec.backoff_max {
                    backoff.reset();
                }
                let delay = backoff.next();
                let failures = backoff.failures();
                if let Some(max) = spec.max_restarts {
                    if failures > max {
                        let message = format!(
                            "#[execute::method] {label} failed {failures} times in a row, giving \
                             up (max_restarts = {max}): {reason}"
                        );
                        tracing::error!(entry_point = label, "{message}");
                        return Err(Error::Runtime(message));
                    }
                }
                tracing::warn!(
                    entry_point = label,
                    failures,
                    restart_in = %humantime::format_duration(delay),
                    "method failed, restarting: {reason}"
                );
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!(entry_point = label, "supervised method stopped");
                return Ok(());
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs the method once: its outcome, or `None` if it was cancelled after `grace`.
async fn run_once(
    launch: &Launch,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Option<Outcome> {
    let launch = launch.clone();
    let stop = Shutdown(shutdown.clone());
    // Guarded here too, for handlers not built by `execute_handler`.
    let call = guard_outcome(async move { launch(stop).await });
    tokio::pin!(call);
    tokio::select! {
        outcome = &mut call => Some(outcome),
        _ = shutdown.cancelled() => tokio::time::timeout(grace, &mut call).await.ok(),
    }
}

/// The delay before restart number `failures` (1-based) of a failing method.
#[cfg(test)]
fn backoff(restart_delay: Duration, backoff_max: Duration, failures: u32) -> Duration {
    Backoff::new(restart_delay, backoff_max)
        .min(MIN_FAILURE_DELAY)
        .delay(failures)
}

/// `#[execute::method(...)]` as written; what is not given comes from [`ExecuteSpec::new`].
#[derive(Clone, Debug)]
pub struct ExecuteAttr {
    pub method: &'static str,
    pub restart: Option<bool>,
    pub restart_delay_ms: Option<u64>,
    pub max_restarts: Option<u32>,
}

impl ExecuteAttr {
    pub fn spec(&self, service: &str) -> ExecuteSpec {
        let mut spec = ExecuteSpec::new(format!("{service}.{}", self.method));
        if let Some(restart) = self.restart {
            spec.restart = restart;
        }
        if let Some(ms) = self.restart_delay_ms {
            spec.restart_delay = std::time::Duration::from_millis(ms);
        }
        spec.max_restarts = self.max_restarts;
        spec
    }
}

/// A supervised loop, its spec resolved, ready to run.
pub(crate) struct Loop {
    spec: ExecuteSpec,
    handler: ExecuteHandler,
    context: Arc<ServiceContext>,
}

pub(crate) fn attach(
    service: &'static str,
    attr: ExecuteAttr,
    handler: ExecuteHandler,
    context: Arc<ServiceContext>,
) -> Loop {
    Loop {
        spec: attr.spec(service),
        handler,
        context,
    }
}

impl EntryPoint for Loop {
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> BoxFuture<'static, Result<()>> {
        let Loop {
            spec,
            handler,
            context,
        } = *self;
        supervise(spec, handler, context, shutdown, grace).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    const SEC: Duration = Duration::from_secs(1);

    fn spec() -> ExecuteSpec {
        ExecuteSpec {
            restart_delay: SEC,
            backoff_max: Duration::from_secs(60),
            ..ExecuteSpec::new("shop.loop")
        }
    }

    /// A method that counts its runs and ends as `outcome(run)` says (run numbers from 1).
    fn counting(
        outcome: impl Fn(u32) -> Outcome + Send + Sync + 'static,
    ) -> (Launch, Arc<AtomicU32>) {
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let outcome = Arc::new(outcome);
        let launch: Launch = Arc::new(move |_stop| {
            let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let outcome = outcome.clone();
            async move { outcome(run) }.boxed()
        });
        (launch, runs)
    }

    /// Runs the supervisor for `time` (virtual: these tests run with paused time), then
    /// shuts it down; returns what `supervise` returned, or `None` if it still ran.
    async fn run_for(spec: ExecuteSpec, launch: Launch, time: Duration) -> Option<Result<()>> {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(supervise_launch(spec, launch, shutdown.clone(), SEC));
        tokio::time::sleep(time).await;
        if task.is_finished() {
            return Some(task.await.unwrap());
        }
        shutdown.cancel();
        task.await.unwrap().unwrap();
        None
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let delays: Vec<u64> = (1..=8)
            .map(|n| backoff(SEC, Duration::from_secs(30), n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            backoff(Duration::ZERO, Duration::ZERO, 5),
            MIN_FAILURE_DELAY
        );
        assert_eq!(backoff(SEC, SEC, u32::MAX), SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn a_returning_method_runs_again_after_restart_delay() {
        let (launch, runs) = counting(|_| Outcome::Done);
        // Runs at 0s, 1s, ..., 10s.
        let ended = run_for(spec(), launch, Duration::from_millis(10_500)).await;
        assert!(ended.is_none(), "it keeps running");
        assert_eq!(runs.load(Ordering::SeqCst), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_method_backs_off() {
        let (launch, runs) = counting(|run| Outcome::Failed(format!("run {run} failed")));
        // Runs at 0, then after 1, 2, 4, 8, 16, 32 seconds: at 0, 1, 3, 7, 15, 31, 63.
        let ended = run_for(spec(), launch, Duration::from_secs(62)).await;
        assert!(ended.is_none(), "no max_restarts: restarted forever");
        assert_eq!(runs.load(Ordering::SeqCst), 6);
        // The same minute of a method that returns Ok: far more runs.
        let (launch, healthy) = counting(|_| Outcome::Done);
        run_for(spec(), launch, Duration::from_secs(62)).await;
        assert!(healthy.load(Ordering::SeqCst) > 10 * runs.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_is_capped() {
        let (launch, runs) = counting(|_| Outcome::Failed("always".into()));
        let spec = ExecuteSpec {
            backoff_max: Duration::from_secs(4),
            ..spec()
        };
        // At 0, 1, 3, 7, then every 4s: 11, 15, 19, 23, 27 (and 31 is past the end).
        run_for(spec, launch, Duration::from_secs(30)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_backoff() {
        // Fails, fails, fails, succeeds, then fails forever.
        let (launch, runs) = counting(|run| {
            if run == 4 {
                Outcome::Done
            } else {
                Outcome::Failed("flaky".into())
            }
        });
        // Runs at 0, 1 (+1), 3 (+2), 7 (+4) succeeds, 8 (+1 restart_delay), then fails:
        // 9 (+1 again, not +8), 11 (+2), 15 (+4), 23 (+8).
        run_for(spec(), launch, Duration::from_secs(16)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_method_is_restarted() {
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let launch: Launch = Arc::new(move |_stop| {
            let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if run < 3 {
                    panic!("boom {run}");
                }
                Outcome::Done
            }
            .boxed()
        });
        // Panics at 0 and 1, returns at 3, then returns every second.
        run_for(spec(), launch, Duration::from_millis(5_500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 5);
        // Even a panic while starting (not inside the future) is a failure, not a dead task.
        let launch: Launch = Arc::new(|_stop| panic!("synchronous panic"));
        let spec = ExecuteSpec {
            max_restarts: Some(1),
            ..spec()
        };
        let ended = run_for(spec, launch, Duration::from_secs(10)).await;
        let err = ended.expect("gave up").unwrap_err().to_string();
        assert!(err.contains("handler panicked: synchronous panic"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn max_restarts_gives_up_with_an_error() {
        let (launch, runs) = counting(|run| Outcome::Failed(format!("run {run} failed")));
        let spec = ExecuteSpec {
            max_restarts: Some(3),
            ..spec()
        };
        let ended = run_for(spec, launch, Duration::from_secs(60)).await;
        let err = ended.expect("gave up by itself").unwrap_err();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "the first run and 3 restarts"
        );
        assert_eq!(
            err.to_string(),
            "#[execute::method] shop.loop failed 4 times in a row, giving up (max_restarts = 3): \
             run 4 failed"
        );
        // max_restarts = 0: the first failure is the last.
        let (launch, runs) = counting(|_| Outcome::Failed("no".into()));
        let spec = ExecuteSpec {
            max_restarts: Some(0),
            ..self::spec()
        };
        assert!(run_for(spec, launch, Duration::from_secs(5))
            .await
            .unwrap()
            .is_err());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn max_restarts_counts_failures_in_a_row_only() {
        // Fails twice, succeeds, fails twice, succeeds...: never 3 failures in a row.
        let (launch, runs) = counting(|run| {
            if run % 3 == 0 {
                Outcome::Done
            } else {
                Outcome::Failed("flaky".into())
            }
        });
        let spec = ExecuteSpec {
            max_restarts: Some(2),
            ..spec()
        };
        assert!(run_for(spec, launch, Duration::from_secs(60))
            .await
            .is_none());
        assert!(runs.load(Ordering::SeqCst) > 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_run_before_a_failure_counts_as_healthy() {
        // Each run works for 2 minutes (over backoff_max) and then fails.
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let launch: Launch = Arc::new(move |_stop| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(120)).await;
                Outcome::Failed("lost the connection".into())
            }
            .boxed()
        });
        let spec = ExecuteSpec {
            max_restarts: Some(1),
            ..spec()
        };
        assert!(run_for(spec, launch, Duration::from_secs(600))
            .await
            .is_none());
        assert_eq!(
            runs.load(Ordering::SeqCst),
            5,
            "restarted after 1s each time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn restart_false_runs_once() {
        for outcome in [Outcome::Done, Outcome::Failed("broken".into())] {
            let failed = matches!(outcome, Outcome::Failed(_));
            let outcome = std::sync::Mutex::new(Some(outcome));
            let (launch, runs) = counting(move |_| outcome.lock().unwrap().take().unwrap());
            let spec = ExecuteSpec {
                restart: false,
                ..spec()
            };
            let ended = run_for(spec, launch, Duration::from_secs(60)).await;
            assert!(
                matches!(ended, Some(Ok(()))),
                "ends by itself, Ok even when the run failed ({failed})"
            );
            assert_eq!(runs.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_a_method_that_watches_it() {
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        let (launch_count, runs) = counting(|_| Outcome::Done);
        let launch: Launch = Arc::new(move |stop: Shutdown| {
            let flag = flag.clone();
            let started = launch_count(stop.clone());
            async move {
                started.await;
                while stop.sleep(Duration::from_secs(1)).await {}
                flag.store(true, Ordering::SeqCst);
                Outcome::Done
            }
            .boxed()
        });
        let shutdown = CancellationToken::new();
        let grace = Duration::from_secs(30);
        let task = tokio::spawn(supervise_launch(spec(), launch, shutdown.clone(), grace));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let asked = Instant::now();
        shutdown.cancel();
        task.await.unwrap().unwrap();
        assert!(
            asked.elapsed() < Duration::from_millis(1),
            "returned at once"
        );
        assert!(
            stopped.load(Ordering::SeqCst),
            "the method saw the shutdown"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "not restarted");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_a_method_that_ignores_it_after_grace() {
        struct DropFlag(Arc<AtomicBool>);
        impl Drop for DropFlag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let launch: Launch = Arc::new(move |_ignored| {
            let guard = DropFlag(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Outcome::Done
            }
            .boxed()
        });
        let shutdown = CancellationToken::new();
        let grace = Duration::from_secs(5);
        let task = tokio::spawn(supervise_launch(spec(), launch, shutdown.clone(), grace));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!dropped.load(Ordering::SeqCst));
        let asked = Instant::now();
        shutdown.cancel();
        task.await.unwrap().unwrap();
        let took = asked.elapsed();
        assert!(
            took >= grace && took < grace + SEC,
            "cancelled after grace: {took:?}"
        );
        assert!(
            dropped.load(Ordering::SeqCst),
            "the method's future was dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_restart_after_shutdown() {
        // Shutdown while waiting for the next run, and while backing off.
        for failed in [false, true] {
            let (launch, runs) = counting(move |_| {
                if failed {
                    Outcome::Failed("x".into())
                } else {
                    Outcome::Done
                }
            });
            let spec = ExecuteSpec {
                restart_delay: Duration::from_secs(100),
                ..spec()
            };
            assert!(run_for(spec, launch, Duration::from_secs(50))
                .await
                .is_none());
            assert_eq!(runs.load(Ordering::SeqCst), 1, "failed: {failed}");
        }
        // A method that returns after being told to stop is not run again.
        let (count, runs) = counting(|_| Outcome::Done);
        let launch: Launch = Arc::new(move |stop: Shutdown| {
            let counted = count(stop.clone());
            async move {
                counted.await;
                stop.requested().await;
                Outcome::Failed("interrupted".into())
            }
            .boxed()
        });
        assert!(run_for(spec(), launch, Duration::from_secs(5))
            .await
            .is_none());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sleep_and_requested() {
        let token = CancellationToken::new();
        let shutdown = Shutdown::from_token(token.clone());
        assert!(shutdown.sleep(SEC).await);
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.sleep(Duration::from_secs(3600)).await }
        });
        tokio::time::sleep(SEC).await;
        token.cancel();
        assert!(!waiter.await.unwrap());
        assert!(shutdown.is_requested());
        shutdown.requested().await;
        assert!(!shutdown.sleep(SEC).await);
    }
}
