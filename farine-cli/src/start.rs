//! `farine --start`: find each service crate, build it with cargo, then run and supervise the
//! built binaries until they all exit.
//!
//! Rust has no runtime import, so a MODULE names a Cargo package whose binary is the service
//! (its `main.rs` is `farine::main!()`).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{self, BufRead, BufReader};
use std::path::{Component, Path, PathBuf};
use std::pin::pin;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::task::Poll;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};

use crate::Failure;

mod together;

/// Exit status when a MODULE names nothing that can be started.
const NOT_FOUND: u8 = 2;

pub fn run(modules: &[String], release: bool) -> Result<ExitCode, Failure> {
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::new(format!("cannot read the current directory: {e}")))?;
    // Read once: every name-based MODULE is looked up in the same workspace.
    let workspace = metadata(&cwd, None);

    let mut packages = Vec::with_capacity(modules.len());
    for module in modules {
        packages.push(resolve(module, &cwd, &workspace)?);
    }
    if packages.len() > 1 {
        if let Some(broker) = together::in_process_broker() {
            eprintln!(
                "farine: amqp_uri is {broker} (in-process): running {} in one process",
                modules.join(", ")
            );
            return supervise(vec![together::build_together(&packages, release)?]);
        }
    }
    // Build everything before running anything, so a build error starts nothing.
    let mut services = Vec::with_capacity(packages.len());
    for package in &packages {
        services.push(build(package, release)?);
    }
    supervise(services)
}

/// `farine migrate --start MODULE`: builds each module and runs its binary in migration mode
/// (`FARINE_MIGRATIONS` = the crate's `migrations/` folder): every service of the binary with
/// a database applies the sqlx migrations there, then the binary exits.
pub fn migrate(modules: &[String], release: bool) -> Result<ExitCode, Failure> {
    for service in build_modules(modules, release)? {
        let migrations = service.dir.join("migrations");
        if !migrations.is_dir() {
            return Err(Failure::new(format!(
                "{}: no migrations folder at {}",
                service.name,
                migrations.display()
            )));
        }
        let status = Command::new(&service.executable)
            .env(farine::runtime::MIGRATIONS_ENV, &migrations)
            .status()
            .map_err(|e| {
                Failure::new(format!("cannot run {}: {e}", service.executable.display()))
            })?;
        if !status.success() {
            return Err(Failure::new(format!(
                "migrations of {} failed ({})",
                service.name,
                describe(status)
            )));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Finds and builds each module, as `farine --start` does, for the commands that run the built
/// binary in a mode of its own (`migrate`, `check`, `describe`).
pub(crate) fn build_modules(modules: &[String], release: bool) -> Result<Vec<Service>, Failure> {
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::new(format!("cannot read the current directory: {e}")))?;
    let workspace = metadata(&cwd, None);
    let mut services = Vec::with_capacity(modules.len());
    for module in modules {
        let target = resolve(module, &cwd, &workspace)?;
        services.push(build(&target, release)?);
    }
    Ok(services)
}

/// A workspace package as `cargo metadata` describes it.
#[derive(Debug, Clone)]
struct Package {
    name: String,
    id: String,
    manifest_path: PathBuf,
    bins: Vec<String>,
    default_run: Option<String>,
    /// The crate name of its library target, if it has one.
    lib: Option<String>,
}

/// What `cargo metadata --no-deps` says about a workspace.
#[derive(Debug)]
struct Metadata {
    root: PathBuf,
    packages: Vec<Package>,
}

/// A package to build, and how to point cargo at it.
#[derive(Debug)]
struct Target {
    package: Package,
    /// Set for packages found by path, which may lie outside the current workspace.
    manifest: Option<PathBuf>,
    /// Where to build it, when not in its own workspace's target directory.
    target_dir: Option<PathBuf>,
}

/// A built service binary.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) executable: PathBuf,
    /// The package's directory, where its `migrations/` folder lives.
    pub(crate) dir: PathBuf,
    /// The package's id (`path+file:///...#calc@0.1.0`), which ends with its version.
    pub(crate) id: String,
}

fn cargo() -> OsString {
    // Under `cargo run` / `cargo test`, CARGO names the cargo that launched us: use the same one.
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs `cargo metadata` in `dir` (or on `manifest`); the error is cargo's own explanation.
fn metadata(dir: &Path, manifest: Option<&Path>) -> Result<Metadata, String> {
    let mut cmd = Command::new(cargo());
    cmd.args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(dir)
        .stdin(Stdio::null());
    if let Some(manifest) = manifest {
        cmd.arg("--manifest-path").arg(manifest);
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.trim();
        let reason = reason.strip_prefix("error: ").unwrap_or(reason);
        return Err(if reason.is_empty() {
            format!("cargo metadata failed ({})", output.status)
        } else {
            reason.to_string()
        });
    }
    let json: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata printed something that is not JSON: {e}"))?;
    parse_metadata(&json).ok_or_else(|| "cargo metadata output lacks expected fields".to_string())
}

fn parse_metadata(json: &Value) -> Option<Metadata> {
    let root = PathBuf::from(json.get("workspace_root")?.as_str()?);
    let packages = json
        .get("packages")?
        .as_array()?
        .iter()
        .map(parse_package)
        .collect::<Option<Vec<_>>>()?;
    Some(Metadata { root, packages })
}

fn parse_package(json: &Value) -> Option<Package> {
    let bins = json
        .get("targets")?
        .as_array()?
        .iter()
        .filter(|target| has_kind(target, "bin"))
        .filter_map(|target| Some(target.get("name")?.as_str()?.to_string()))
        .collect();
    let lib = json
        .get("targets")?
        .as_array()?
        .iter()
        .find(|target| has_kind(target, "lib") || has_kind(target, "rlib"))
        .and_then(|target| Some(target.get("name")?.as_str()?.replace('-', "_")));
    Some(Package {
        name: json.get("name")?.as_str()?.to_string(),
        id: json.get("id")?.as_str()?.to_string(),
        manifest_path: PathBuf::from(json.get("manifest_path")?.as_str()?),
        bins,
        default_run: json
            .get("default_run")
            .and_then(Value::as_str)
            .map(str::to_string),
        lib,
    })
}

fn has_kind(target: &Value, kind: &str) -> bool {
    target
        .get("kind")
        .and_then(Value::as_array)
        .is_some_and(|kinds| kinds.iter().any(|k| k.as_str() == Some(kind)))
}

/// Cargo treats `-` and `_` alike in package names given on the command line; so do we.
fn same_name(a: &str, b: &str) -> bool {
    a.replace('-', "_") == b.replace('-', "_")
}

/// Finds MODULE by package name in the current workspace, else as a path; failing both, says
/// everything that was tried.
fn resolve(
    module: &str,
    cwd: &Path,
    workspace: &Result<Metadata, String>,
) -> Result<Target, Failure> {
    if let Ok(ws) = workspace {
        if let Some(package) = ws.packages.iter().find(|p| same_name(&p.name, module)) {
            return Ok(Target {
                package: checked_has_bin(package.clone())?,
                manifest: None,
                target_dir: None,
            });
        }
    }

    // Drop `.` components so messages show /w/svc rather than /w/./svc.
    let path: PathBuf = cwd
        .join(module)
        .components()
        .filter(|part| *part != Component::CurDir)
        .collect();
    let manifest = if path.is_dir() && path.join("Cargo.toml").is_file() {
        Some(path.join("Cargo.toml"))
    } else if path.is_file() && path.file_name().is_some_and(|n| n == "Cargo.toml") {
        Some(path.clone())
    } else {
        None
    };
    if let Some(manifest) = manifest {
        return resolve_manifest(module, &manifest).map(|package| Target {
            package,
            manifest: Some(manifest),
            target_dir: None,
        });
    }

    let mut message = format!("cannot find a service crate `{module}`:\n");
    match workspace {
        Ok(ws) => {
            let mut names: Vec<&str> = ws.packages.iter().map(|p| p.name.as_str()).collect();
            names.sort_unstable();
            let _ = writeln!(
                message,
                "  - no package named `{module}` in the Cargo workspace at {} (its packages: {})",
                ws.root.display(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
        }
        Err(reason) => {
            let _ = writeln!(
                message,
                "  - no Cargo workspace to search from {}: {}",
                cwd.display(),
                indent(reason)
            );
        }
    }
    let what = if path.is_dir() {
        "is a directory without a Cargo.toml"
    } else if path.exists() {
        "is not a directory or a Cargo.toml"
    } else {
        "does not exist"
    };
    let _ = write!(message, "  - as a path: {} {what}", path.display());
    Err(Failure::with_code(NOT_FOUND, message))
}

/// The package whose manifest is `manifest`, which may be any member of its own workspace.
fn resolve_manifest(module: &str, manifest: &Path) -> Result<Package, Failure> {
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let meta = metadata(dir, Some(manifest)).map_err(|reason| {
        Failure::with_code(
            NOT_FOUND,
            format!(
                "cannot read the Cargo package at {} (from `{module}`): {}",
                manifest.display(),
                indent(&reason)
            ),
        )
    })?;
    // Compare canonical paths: cargo reports them absolute and with symlinks resolved.
    let wanted = manifest
        .canonicalize()
        .unwrap_or_else(|_| manifest.to_path_buf());
    let found = meta.packages.iter().find(|p| {
        p.manifest_path
            .canonicalize()
            .is_ok_and(|path| path == wanted)
    });
    match found {
        Some(package) => checked_has_bin(package.clone()),
        None => {
            let names: Vec<&str> = meta.packages.iter().map(|p| p.name.as_str()).collect();
            Err(Failure::with_code(
                NOT_FOUND,
                format!(
                    "{} is a workspace manifest without a package; start one of its packages \
                     instead: {}",
                    manifest.display(),
                    names.join(", ")
                ),
            ))
        }
    }
}

fn checked_has_bin(package: Package) -> Result<Package, Failure> {
    if package.bins.is_empty() {
        return Err(Failure::with_code(
            NOT_FOUND,
            format!(
                "package `{}` ({}) has no binary target: a service crate needs a src/main.rs \
                 containing `farine::main!();`",
                package.name,
                package.manifest_path.display()
            ),
        ));
    }
    Ok(package)
}

/// Which of the package's binaries is the service: the one named like the package, else its
/// `default-run`, else its only binary.
fn service_bin(package: &Package) -> Result<&str, Failure> {
    if let Some(bin) = package.bins.iter().find(|b| same_name(b, &package.name)) {
        return Ok(bin);
    }
    if let Some(bin) = package
        .default_run
        .as_deref()
        .and_then(|run| package.bins.iter().find(|b| *b == run))
    {
        return Ok(bin);
    }
    match package.bins.as_slice() {
        [only] => Ok(only),
        bins => Err(Failure::with_code(
            NOT_FOUND,
            format!(
                "package `{}` has several binaries ({}) and none is named `{}`; set \
                 `default-run` in {} to choose the service",
                package.name,
                bins.join(", "),
                package.name,
                package.manifest_path.display()
            ),
        )),
    }
}

/// Builds the package with cargo, letting cargo print its diagnostics to our stderr, and
/// returns the service executable named in cargo's JSON messages.
fn build(target: &Target, release: bool) -> Result<Service, Failure> {
    let package = &target.package;
    let bin = service_bin(package)?;
    let mut cmd = Command::new(cargo());
    cmd.args([
        "build",
        "-p",
        &package.name,
        "--bins",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    if let Some(manifest) = &target.manifest {
        cmd.arg("--manifest-path").arg(manifest);
    }
    if let Some(dir) = &target.target_dir {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::new(format!("cannot run cargo build: {e}")))?;

    let mut executable = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("farine: cannot read cargo's output: {e}");
                    break;
                }
            };
            match serde_json::from_str::<Value>(&line) {
                Ok(message) => {
                    if let Some(path) = bin_artifact(&message, &package.id, bin) {
                        executable = Some(path);
                    }
                }
                // Not a cargo message (something printed by a build step): show it as is.
                Err(_) => eprintln!("{line}"),
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| Failure::new(format!("cannot wait for cargo build: {e}")))?;
    if !status.success() {
        return Err(Failure::new(format!(
            "package `{}` failed to build (cargo build ended with {status})",
            package.name
        )));
    }
    let executable = executable.ok_or_else(|| {
        Failure::new(format!(
            "cargo built package `{}` but reported no executable for its binary `{bin}` (does \
             it have `required-features`?)",
            package.name
        ))
    })?;
    let dir = package
        .manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(Service {
        name: package.name.clone(),
        executable,
        dir,
        id: package.id.clone(),
    })
}

/// The executable of binary `bin` of package `id`, if `message` is its `compiler-artifact`.
fn bin_artifact(message: &Value, id: &str, bin: &str) -> Option<PathBuf> {
    if message.get("reason")?.as_str()? != "compiler-artifact"
        || message.get("package_id")?.as_str()? != id
    {
        return None;
    }
    let target = message.get("target")?;
    if !has_kind(target, "bin") || target.get("name")?.as_str()? != bin {
        return None;
    }
    Some(PathBuf::from(message.get("executable")?.as_str()?))
}

/// Indents continuation lines of a multi-line cargo error under our bullet points.
fn indent(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join("\n      ")
}

/// A running service process.
struct Running {
    name: String,
    child: tokio::process::Child,
    done: bool,
}

/// Runs the services until all have exited, passing SIGINT and SIGTERM on to them.
fn supervise(services: Vec<Service>) -> Result<ExitCode, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(supervise_all(services))
}

async fn supervise_all(services: Vec<Service>) -> Result<ExitCode, Failure> {
    // Listen before spawning, so a signal that arrives in between is still passed on.
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|e| Failure::new(format!("cannot listen for signals: {e}")))
    };
    let mut sigint = listen(SignalKind::interrupt())?;
    let mut sigterm = listen(SignalKind::terminate())?;

    let mut running = Vec::with_capacity(services.len());
    for service in services {
        match spawn(&service) {
            Ok(child) => {
                eprintln!(
                    "farine: started {} (pid {}): {}",
                    service.name,
                    child.id().unwrap_or_default(),
                    service.executable.display()
                );
                running.push(Running {
                    name: service.name,
                    child,
                    done: false,
                });
            }
            Err(e) => {
                // Do not leave the ones already started behind.
                forward(&running, Signal::SIGTERM);
                for started in &mut running {
                    let _ = started.child.wait().await;
                }
                return Err(Failure::new(format!(
                    "cannot run service {} ({}): {e}",
                    service.name,
                    service.executable.display()
                )));
            }
        }
    }

    let mut first_failure: Option<u8> = None;
    let mut left = running.len();
    while left > 0 {
        tokio::select! {
            Some(()) = sigint.recv() => forward(&running, Signal::SIGINT),
            Some(()) = sigterm.recv() => forward(&running, Signal::SIGTERM),
            (index, result) = wait_any(&mut running) => {
                let service = &mut running[index];
                service.done = true;
                left -= 1;
                let code = match result {
                    Ok(status) => {
                        let code = exit_code(status);
                        if code != 0 {
                            eprintln!(
                                "farine: service {} exited with {}",
                                service.name,
                                describe(status)
                            );
                        }
                        code
                    }
                    Err(e) => {
                        eprintln!("farine: cannot wait for service {}: {e}", service.name);
                        1
                    }
                };
                if code != 0 {
                    first_failure.get_or_insert(code);
                }
            }
        }
    }
    Ok(ExitCode::from(first_failure.unwrap_or(0)))
}

/// Starts a service with our stdin, stdout, stderr and environment (so FARINE_INI reaches it).
fn spawn(service: &Service) -> io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&service.executable);
    // Its own process group: a Ctrl-C at the terminal then reaches it once, through us, rather
    // than twice (from the terminal and from us), which it would take for a second Ctrl-C and
    // stop without draining. The cost: a service cannot read a terminal on stdin.
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the closure runs between fork and exec and only makes the prctl system
        // call, which is async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(|| {
                // Should we die without passing on a signal (SIGKILL), the service still gets
                // SIGTERM and shuts down gracefully instead of running on unattended.
                nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM)).map_err(io::Error::from)
            });
        }
    }
    cmd.spawn()
}

/// Passes `signal` on to every service still running.
fn forward(running: &[Running], signal: Signal) {
    let live: Vec<&Running> = running.iter().filter(|r| !r.done).collect();
    if live.is_empty() {
        return;
    }
    let mut names: Vec<&str> = live.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    eprintln!("farine: {signal}: passing it on to {}", names.join(", "));
    for service in live {
        // `id()` is None once the child has been reaped, so a reused pid is never signalled.
        let Some(pid) = service.child.id() else {
            continue;
        };
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => eprintln!("farine: cannot send {signal} to {}: {e}", service.name),
        }
    }
}

/// Waits until one of the services still running exits.
async fn wait_any(running: &mut [Running]) -> (usize, io::Result<ExitStatus>) {
    std::future::poll_fn(|cx| {
        for (index, service) in running.iter_mut().enumerate() {
            if service.done {
                continue;
            }
            // Recreating the wait future on every poll loses nothing: the child's reaping
            // state and waker registration live in the `Child`, not in the future.
            if let Poll::Ready(result) = pin!(service.child.wait()).poll(cx) {
                return Poll::Ready((index, result));
            }
        }
        Poll::Pending
    })
    .await
}

/// The shell's convention: the exit code, or 128 + N for a process killed by signal N.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(number)) => match Signal::try_from(number) {
            Ok(signal) => format!("signal {number} ({signal})"),
            Err(_) => format!("signal {number}"),
        },
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn package(name: &str, bins: &[&str], default_run: Option<&str>) -> Package {
        Package {
            name: name.to_string(),
            id: format!("path+file:///x/{name}#0.1.0"),
            manifest_path: PathBuf::from(format!("/x/{name}/Cargo.toml")),
            bins: bins.iter().map(|b| b.to_string()).collect(),
            default_run: default_run.map(str::to_string),
            lib: Some(name.to_string()),
        }
    }

    #[test]
    fn names_match_with_dashes_and_underscores_alike() {
        assert!(same_name("demo-svc", "demo_svc"));
        assert!(!same_name("demo", "demo_svc"));
    }

    #[test]
    fn service_bin_prefers_the_package_name_then_default_run_then_the_only_one() {
        let p = package("calc", &["tool", "calc"], None);
        assert_eq!(service_bin(&p).ok(), Some("calc"));
        let p = package("calc", &["tool", "server"], Some("server"));
        assert_eq!(service_bin(&p).ok(), Some("server"));
        let p = package("calc", &["server"], None);
        assert_eq!(service_bin(&p).ok(), Some("server"));
        let p = package("calc", &["a", "b"], None);
        let failure = service_bin(&p).err().map(|f| f.message).unwrap_or_default();
        assert!(failure.contains("a, b"), "{failure}");
    }

    #[test]
    fn picks_the_bin_artifact_of_the_package() {
        let id = "path+file:///x/calc#0.1.0";
        let message = json!({
            "reason": "compiler-artifact",
            "package_id": id,
            "target": {"kind": ["bin"], "name": "calc"},
            "executable": "/t/debug/calc",
        });
        assert_eq!(
            bin_artifact(&message, id, "calc"),
            Some(PathBuf::from("/t/debug/calc"))
        );
        assert_eq!(bin_artifact(&message, "other", "calc"), None);
        assert_eq!(bin_artifact(&message, id, "tool"), None);
        let lib = json!({
            "reason": "compiler-artifact",
            "package_id": id,
            "target": {"kind": ["lib"], "name": "calc"},
            "executable": null,
        });
        assert_eq!(bin_artifact(&lib, id, "calc"), None);
    }

    #[test]
    fn reads_packages_and_their_bins_from_metadata() {
        let json = json!({
            "workspace_root": "/w",
            "packages": [{
                "name": "calc",
                "id": "calc-id",
                "manifest_path": "/w/calc/Cargo.toml",
                "default_run": null,
                "targets": [
                    {"kind": ["lib"], "name": "calc"},
                    {"kind": ["bin"], "name": "calc"},
                ],
            }],
        });
        let meta = parse_metadata(&json).expect("valid metadata");
        assert_eq!(meta.root, PathBuf::from("/w"));
        assert_eq!(meta.packages[0].bins, vec!["calc".to_string()]);
        assert_eq!(meta.packages[0].default_run, None);
    }
}
