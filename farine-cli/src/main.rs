//! The `farine` command: builds and runs service crates (`--start`), calls services
//! (`farine call`), publishes a message (`farine publish`), inspects dead letters
//! (`farine dlq`), checks a configuration and its services (`farine check`), describes
//! services as AsyncAPI (`farine describe`), and scaffolds new crates (`farine new`).

mod call;
mod check;
mod describe;
mod dlq;
mod publish;
mod scaffold;
mod start;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// `--start` is an option rather than a subcommand so that `farine --start MODULE` reads as it
/// did in Python farine.
#[derive(Debug, Parser)]
#[command(
    name = "farine",
    version,
    about = "Build and run farine services, or scaffold a new one",
    args_conflicts_with_subcommands = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Cargo package holding a service binary: a package name in the current workspace, or a
    /// path to its directory or Cargo.toml. Repeat to run several services side by side.
    #[arg(short = 's', long = "start", value_name = "MODULE")]
    start: Vec<String>,

    /// Build the services with the release profile.
    #[arg(long, requires = "start")]
    release: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Call SERVICE.METHOD (Rust or Python farine) and print each result as a JSON line.
    Call {
        /// The method to call, e.g. calc.add.
        #[arg(value_name = "SERVICE.METHOD")]
        target: String,

        /// Arguments as JSON: an array (positional), an object (by name), or one value.
        #[arg(value_name = "JSON-ARGS")]
        args: Option<String>,

        /// Deadline for the call, and longest wait between two items of a stream
        /// (default: the service's rpc_timeout, 30s).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Publish one JSON message (persistent, confirmed by the broker), e.g. to try a consumer.
    Publish {
        /// The exchange, e.g. calc.
        exchange: String,
        /// The routing key, e.g. operations.
        routing_key: String,
        /// The message, as JSON.
        #[arg(value_name = "JSON")]
        body: String,
        /// Succeed even when no queue is bound for it (the broker then drops it).
        #[arg(long)]
        may_drop: bool,
    },
    /// Inspect or replay the dead-letter queue QUEUE.dlq of a consumer queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Apply the sqlx migrations in each crate's `migrations/` folder to its services' databases.
    Migrate {
        /// Cargo package holding the service binary (as for `farine --start`).
        #[arg(short = 's', long = "start", value_name = "MODULE", required = true)]
        start: Vec<String>,

        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Check, changing nothing, what a start would meet: settings, broker login, exchanges and
    /// queues, databases, pending migrations. Lists every problem; exit status 1 if any.
    Check {
        /// Cargo package holding the service binary (as for `farine --start`); without one,
        /// only the INI's sections are checked (settings, broker and databases reachable).
        #[arg(short = 's', long = "start", value_name = "MODULE")]
        start: Vec<String>,

        /// Build with the release profile.
        #[arg(long, requires = "start")]
        release: bool,
    },
    /// Print an AsyncAPI 3.0 document (JSON) of the services in each crate, from their code.
    Describe {
        /// Cargo package holding the service binary (as for `farine --start`).
        #[arg(short = 's', long = "start", value_name = "MODULE", required = true)]
        start: Vec<String>,

        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Serve the methods and broadcasts that FARINE_INI's [gateway] section exposes to
    /// browsers: POST /rpc/SERVICE/METHOD, GET /events/EXCHANGE (Server-Sent Events), GET /ws.
    Gateway,
    /// Create a service crate that builds and runs as generated.
    New {
        /// Crate and service name: lowercase letters, digits, `_` or `-`, starting with a letter.
        name: String,

        /// Directory to create NAME in (default: the current directory).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// One line per parked message: when, attempts, where from, why, the body's start.
    List {
        /// The consumer queue (or its `.dlq`).
        queue: String,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Every parked message in full, one JSON object per line.
    Show {
        queue: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move the messages parked when it starts back into QUEUE (only there), each once.
    Replay {
        queue: String,
        #[arg(long, default_value_t = usize::MAX)]
        limit: usize,
    },
}

/// A failure reported as `farine: <message>`, with the exit status it calls for.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// A general failure (exit status 1).
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code(1, message)
    }

    pub fn with_code(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<farine::Error> for Failure {
    fn from(err: farine::Error) -> Self {
        Failure::new(err.to_string())
    }
}

/// What the commands that talk to the broker themselves (`publish`, `dlq`) start from: the
/// `[DEFAULT]` settings of `FARINE_INI` and a runtime for one thread.
pub fn broker_settings() -> Result<(farine::config::ServiceConfig, tokio::runtime::Runtime), Failure>
{
    let settings = farine::Config::from_env()?.service("farine-cli")?;
    network_broker(&settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::new(format!("cannot start the async runtime: {err}")))?;
    Ok((settings, runtime))
}

/// The commands run in a process of their own: an in-process broker (`memory://`) lives only
/// inside the `farine --start` process, so they refuse it rather than talk to an empty one.
pub fn network_broker(settings: &farine::config::ServiceConfig) -> Result<(), Failure> {
    let uri = settings.amqp_uri.expose();
    if farine::transport::memory::broker_name(uri).is_none() {
        return Ok(());
    }
    let command = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "this command".into());
    Err(Failure::new(
        settings
            .error(
                "amqp_uri",
                format!(
                    "`farine {command}` needs a network broker (amqp:// or amqps://), but this is \
                     {uri}: an in-process broker lives inside the `farine --start` process only. \
                     Run the services on RabbitMQ to reach them from another process, or use the \
                     test kit (farine::testing) to call and publish in process"
                ),
            )
            .to_string(),
    ))
}

/// `farine gateway`: on a network broker only (the services it fronts run in other processes).
fn gateway() -> Result<ExitCode, Failure> {
    let config = farine::Config::from_env().map_err(|err| Failure::new(err.to_string()))?;
    network_broker(&config.service(farine::gateway::SECTION)?)?;
    Ok(farine::gateway::run())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(Command::Call {
            target,
            args,
            timeout,
        }) => call::run(&target, args.as_deref(), timeout.as_deref()),
        Some(Command::Publish {
            exchange,
            routing_key,
            body,
            may_drop,
        }) => publish::run(&exchange, &routing_key, &body, may_drop),
        Some(Command::Dlq { action }) => match action {
            DlqAction::List { queue, limit } => dlq::run(dlq::Action::List, &queue, limit),
            DlqAction::Show { queue, limit } => dlq::run(dlq::Action::Show, &queue, limit),
            DlqAction::Replay { queue, limit } => dlq::run(dlq::Action::Replay, &queue, limit),
        },
        Some(Command::Migrate { start, release }) => start::migrate(&start, release),
        Some(Command::Check { start, release }) => check::run(&start, release),
        Some(Command::Describe { start, release }) => describe::run(&start, release),
        Some(Command::Gateway) => gateway(),
        Some(Command::New { name, path }) => {
            scaffold::run(&name, path.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        None if !cli.start.is_empty() => start::run(&cli.start, cli.release),
        None => {
            // Unreachable through clap (`arg_required_else_help`), kept so no input panics.
            let _ = Cli::command().print_help();
            Ok(ExitCode::from(2))
        }
    };
    match outcome {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("farine: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
