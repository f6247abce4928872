//! `farine check [--start MODULE ...]`: what a start would meet, changing nothing.
//!
//! Without a MODULE, the INI's sections are checked here (`farine::check::sections`). With
//! one, the crate is built and its binary run in check mode (`farine::check::CHECK_ENV`, set
//! to the crate's `migrations/` folder when it has one), so that the services' own entry
//! points, exchanges, queues and migrations are checked; the binary prints its report.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use crate::{start, Failure};

pub fn run(modules: &[String], release: bool) -> Result<ExitCode, Failure> {
    if modules.is_empty() {
        return sections();
    }
    let services = start::build_modules(modules, release)?;
    let mut failed = Vec::new();
    for service in services {
        let migrations = service.dir.join("migrations");
        let migrations = if migrations.is_dir() {
            migrations.into_os_string()
        } else {
            OsString::new()
        };
        let status = Command::new(&service.executable)
            .env(farine::check::CHECK_ENV, migrations)
            .status()
            .map_err(|e| {
                Failure::new(format!("cannot run {}: {e}", service.executable.display()))
            })?;
        if !status.success() {
            failed.push(service.name);
        }
    }
    match failed.as_slice() {
        [] => Ok(ExitCode::SUCCESS),
        // The binary said what is wrong.
        [_] if modules.len() == 1 => Ok(ExitCode::FAILURE),
        _ => Err(Failure::new(format!(
            "check failed for {}",
            failed.join(", ")
        ))),
    }
}

/// The INI alone: every section's settings, broker and database.
fn sections() -> Result<ExitCode, Failure> {
    let config = farine::Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::new(format!("cannot start the async runtime: {err}")))?;
    let report = runtime.block_on(farine::check::sections(&config));
    report.print()?;
    Ok(ExitCode::SUCCESS)
}
