//! `farine check`: what a start would meet, found without starting and without changing
//! anything. It reads every service's settings, connects to the broker and to each database
//! (each attempt bounded by [`WAIT`]), compares the exchanges and queues the service would
//! declare with what the broker has (never creating one: see
//! [`Inspector`](crate::transport::amqp::Inspector)), and compares the crate's `migrations/`
//! with what its database recorded. Every problem is listed, each naming the file, section
//! and key to look at; a check never stops at the first.
//!
//! Two ways in:
//!
//! - [`sections`]: the INI alone (`farine check`): every section's settings parse, and its
//!   broker and database answer.
//! - [`services`]: the services compiled into a binary (`farine check --start MODULE` builds
//!   the crate and runs its binary with [`CHECK_ENV`] set): the same, plus each entry point
//!   with its queue and binding, the topology, and pending migrations.
//!
//! ```no_run
//! # async fn demo() -> farine::Result<()> {
//! let config = farine::Config::from_env()?;
//! let report = farine::check::sections(&config).await;
//! for problem in &report.problems {
//!     eprintln!("{problem}");
//! }
//! # Ok(()) }
//! ```

mod database;
mod topology;

use crate::config::{Config, ServiceConfig};
use crate::db::DbSettings;
use crate::registry::{self, ServiceRegistration};
use crate::transport::amqp::Inspector;
use crate::transport::memory;
use crate::{Error, Result};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

/// The environment variable that puts a service binary in check mode: when set, `run` checks
/// the binary's services instead of starting them, prints what it found, and exits non-zero
/// if anything is wrong. Its value is the crate's `migrations/` folder to compare with each
/// database, or empty when the crate has none. `farine check --start MODULE` sets it.
///
/// ```no_run
/// // What `farine check` does for each service binary.
/// std::process::Command::new("target/debug/todo")
///     .env(farine::check::CHECK_ENV, "examples/todo/migrations")
///     .status()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub const CHECK_ENV: &str = "FARINE_CHECK";

/// The longest a check waits for any one answer: a connection to the broker or a database,
/// or the broker's reply about one exchange or queue.
pub const WAIT: Duration = Duration::from_secs(5);

/// What a check found: what it looked at, one line each, and every problem.
#[derive(Debug, Default)]
pub struct Report {
    /// What was checked and how it stands, in order: per service its entry points (each with
    /// its queue and binding), its broker, its exchanges and queues, its database.
    pub lines: Vec<String>,
    /// Every problem found, each once. A problem with a setting is an [`Error::Config`],
    /// whose text names the file, the section and the key.
    pub problems: Vec<Error>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    fn line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }

    /// Records a problem, unless the same one is already recorded (services sharing a
    /// `[DEFAULT]` broker share its problems).
    fn problem(&mut self, problem: Error) {
        let text = problem.to_string();
        if !self.problems.iter().any(|known| known.to_string() == text) {
            self.problems.push(problem);
        }
    }

    /// Prints the lines on stdout and the problems on stderr; an error saying how many
    /// problems there are when there are any.
    pub fn print(&self) -> Result<()> {
        for line in &self.lines {
            println!("{line}");
        }
        if self.passed() {
            println!("check passed");
            return Ok(());
        }
        for problem in &self.problems {
            eprintln!("{problem}");
        }
        let count = self.problems.len();
        Err(Error::Runtime(format!(
            "check found {count} problem{} (listed above)",
            if count == 1 { "" } else { "s" }
        )))
    }
}

/// Checks every section of `config` without knowing the services: each section's settings
/// parse (its database keys too), and its broker and database accept a connection. A file
/// without service sections has its `[DEFAULT]` checked alone.
pub async fn sections(config: &Config) -> Report {
    let mut report = Report::default();
    let mut brokers = Brokers::default();
    let mut names = config.sections();
    report.line(format!(
        "{}: {}",
        config.path().display(),
        if names.is_empty() {
            "no service section, checking [DEFAULT]".to_string()
        } else {
            format!("sections {}", names.join(", "))
        }
    ));
    if names.is_empty() {
        names.push("DEFAULT".to_string());
    }
    for name in names {
        let Some(settings) = settings_of(&mut report, config, &name) else {
            continue;
        };
        if name == "gateway" {
            // `farine gateway`'s own keys: exposed methods, subscriptions, auth, limits.
            if let Err(err) = crate::config::GatewaySettings::from_settings(&settings) {
                report.problem(err);
                continue;
            }
        }
        report.line(format!("[{name}]: settings parse"));
        brokers.connect(&mut report, &settings).await;
        match DbSettings::from_settings(&settings) {
            Err(err) => report.problem(err),
            Ok(None) => report.line(format!("[{name}]: no database")),
            Ok(Some(db)) => database::check(&mut report, &settings, &db, None).await,
        }
    }
    brokers.close().await;
    report
}

/// Checks the services compiled into this binary (those of `crates`, when given, as
/// `farine::main!` selects them): their settings, their entry points' exchanges and queues
/// on the broker, their databases, and the migrations in `migrations` against each database.
pub async fn services(
    config: &Config,
    crates: Option<&[String]>,
    migrations: Option<&Path>,
) -> Report {
    let mut report = Report::default();
    let mut registrations = registry::services();
    if let Some(crates) = crates {
        registrations.retain(|r| crates.iter().any(|c| c == r.krate()));
    }
    if registrations.is_empty() {
        report.problem(Error::Runtime(
            "no #[farine::service] is compiled into this binary: nothing to check".into(),
        ));
        return report;
    }
    let mut brokers = Brokers::default();
    for registration in registrations {
        service(&mut report, &mut brokers, config, registration, migrations).await;
    }
    brokers.close().await;
    report
}

/// Check mode (`FARINE_CHECK`): checks this binary's services, prints the report, and fails
/// when a problem was found. `migrations` is the variable's value: the crate's `migrations/`
/// folder, or empty.
pub(crate) async fn run(
    config: &Config,
    crates: Option<&[String]>,
    migrations: &OsStr,
) -> Result<()> {
    let migrations = (!migrations.is_empty()).then(|| Path::new(migrations));
    services(config, crates, migrations).await.print()
}

/// A service's settings, or its problem.
fn settings_of(report: &mut Report, config: &Config, name: &str) -> Option<ServiceConfig> {
    match config.service(name) {
        Ok(settings) if !settings.enabled => {
            report.line(format!(
                "[{name}]: enabled = false, not started: nothing more to check"
            ));
            None
        }
        Ok(settings) => Some(settings),
        Err(err) => {
            report.problem(err);
            None
        }
    }
}

async fn service(
    report: &mut Report,
    brokers: &mut Brokers,
    config: &Config,
    registration: &'static ServiceRegistration,
    migrations: Option<&Path>,
) {
    let name = registration.name;
    report.line(format!(
        "service {name} (crate {}), section [{name}] of {}",
        registration.krate(),
        config.path().display()
    ));
    let Some(settings) = settings_of(report, config, name) else {
        return;
    };
    let def = (registration.build)();
    let needs = topology::entry_points(report, &def, &settings);
    if let Some(inspector) = brokers.connect(report, &settings).await {
        topology::compare(report, inspector, &settings, &needs).await;
    }
    match DbSettings::from_settings(&settings) {
        Err(err) => report.problem(err),
        Ok(Some(db)) => {
            let migrations = migrations.map(|dir| (dir, registration.krate()));
            database::check(report, &settings, &db, migrations).await;
        }
        Ok(None) if !def.db_methods.is_empty() => report.problem(settings.error(
            "db_connector",
            format!(
                "{name}.{} takes a database parameter, but the section sets no db_connector = postgres",
                def.db_methods[0]
            ),
        )),
        Ok(None) => report.line(format!("  [{name}] database: none")),
    }
}

/// One connection per broker, shared by the services that use it; a failed one is reported
/// for each service (once per section the `amqp_uri` comes from).
#[derive(Default)]
struct Brokers {
    connected: HashMap<String, std::result::Result<Inspector, String>>,
}

impl Brokers {
    /// The broker of `settings`, connected; `None` after reporting why not (or for an
    /// in-process broker, which only exists inside the process that runs the services).
    async fn connect(
        &mut self,
        report: &mut Report,
        settings: &ServiceConfig,
    ) -> Option<&Inspector> {
        let uri = &settings.amqp_uri;
        let section = &settings.name;
        if memory::broker_name(uri.expose()).is_some() {
            report.line(format!(
                "  [{section}] broker {uri}: in-process, created empty by the process that runs \
                 the services: nothing to check"
            ));
            return None;
        }
        let ca = match settings.amqp_ca_file.as_deref() {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(pem) => Some(pem),
                Err(err) => {
                    report.problem(settings.error(
                        "amqp_ca_file",
                        format!(
                            "expected a readable PEM file of CA certificates, cannot read {path:?}: {err}"
                        ),
                    ));
                    return None;
                }
            },
            None => None,
        };
        let key = format!(
            "{}\n{}",
            uri.expose(),
            settings
                .amqp_ca_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        if !self.connected.contains_key(&key) {
            let connected = Inspector::connect(uri, ca, WAIT)
                .await
                .map_err(|err| err.to_string());
            self.connected.insert(key.clone(), connected);
        }
        match self.connected.get(&key) {
            Some(Ok(inspector)) => {
                report.line(format!("  [{section}] broker {uri}: connected"));
                Some(inspector)
            }
            Some(Err(message)) => {
                report.problem(settings.error("amqp_uri", message.clone()));
                None
            }
            None => None,
        }
    }

    async fn close(self) {
        for inspector in self.connected.into_values().flatten() {
            inspector.close().await;
        }
    }
}
