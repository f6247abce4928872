//! End-to-end tests of the `farine` binary: module lookup errors, `farine new`, and starting
//! real (tiny, farine-free) packages, including signal forwarding.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Building a tiny package can take a while on a loaded machine; a hang must still fail.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn farine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_farine"))
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// A fresh directory of its own for each test, removed when the test ends.
fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("farine-cli-test-")
        .tempdir()
        .expect("create a temporary directory")
}

fn workspace_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the workspace root exists")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run farine")
}

/// Writes a standalone package (its own `[workspace]`, no dependencies) with this `main.rs`.
fn write_package(dir: &Path, name: &str, main_rs: &str) {
    std::fs::create_dir_all(dir.join("src")).expect("create package dir");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [workspace]\n"
        ),
    )
    .expect("write Cargo.toml");
    std::fs::write(dir.join("src/main.rs"), main_rs).expect("write main.rs");
}

const EXIT_3: &str = r#"fn main() {
    println!("started");
    std::process::exit(3);
}
"#;

/// Prints "ready", runs until SIGTERM, then prints "stopping" and exits 0.
const UNTIL_SIGTERM: &str = r#"use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

fn main() {
    unsafe {
        signal(15, on_term);
    }
    println!("ready");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    println!("stopping");
}
"#;

/// A running `farine` whose stdout and stderr lines are collected as they come.
struct Watched {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn farine");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, source) in [
            ("out", Box::new(stdout) as Box<dyn Read + Send>),
            ("err", Box::new(stderr)),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(source).lines().map_while(Result::ok) {
                    if tx.send(format!("{stream}: {line}")).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line equal to `wanted` (as `out: ...` or `err: ...`).
    fn wait_for(&mut self, wanted: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|line| line == wanted) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no line {wanted:?} in time; got:\n{}", self.seen.join("\n"));
                }
            }
        }
    }

    /// Waits for a line containing `wanted`.
    fn wait_for_part(&mut self, wanted: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|line| line.contains(wanted)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {wanted:?} in time; got:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        kill(Pid::from_raw(pid), signal).expect("signal farine");
    }

    /// Waits for farine to exit, then returns its status and everything it printed.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for farine") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("farine did not exit; got:\n{}", self.seen.join("\n"));
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader threads end when the pipes close.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        (status, self.seen.join("\n"))
    }
}

#[test]
fn start_unknown_module_lists_what_was_searched() {
    let root = workspace_root();
    let output = run(farine()
        .args(["--start", "nosuchservice"])
        .current_dir(&root));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.starts_with("farine: "), "{stderr}");
    assert!(stderr.contains("nosuchservice"), "{stderr}");
    assert!(
        stderr.contains(&root.display().to_string()),
        "workspace root missing: {stderr}"
    );
    for package in ["calc", "farine", "farine-cli"] {
        assert!(
            stderr.contains(package),
            "package {package} missing: {stderr}"
        );
    }
    assert!(
        stderr.contains(&root.join("nosuchservice").display().to_string()),
        "path tried missing: {stderr}"
    );
}

#[test]
fn start_directory_without_cargo_toml_is_refused() {
    let tmp = temp_dir();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("create dir");
    let output = run(farine().arg("--start").arg(&empty).current_dir(tmp.path()));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&empty.display().to_string()),
        "path missing: {stderr}"
    );
    assert!(stderr.contains("without a Cargo.toml"), "{stderr}");
    // Outside any workspace, the message says so rather than listing packages.
    assert!(stderr.contains("no Cargo workspace"), "{stderr}");
}

#[test]
fn new_rejects_bad_names() {
    let tmp = temp_dir();
    for bad in ["Bad", "1svc", "my svc", "fn"] {
        let output = run(farine().args(["new", bad, "--path"]).arg(tmp.path()));
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{bad:?} accepted");
        assert!(stderr.starts_with("farine: "), "{stderr}");
        assert!(stderr.contains(bad), "{stderr}");
        assert!(!tmp.path().join(bad).exists(), "{bad:?} created");
    }
}

#[test]
fn new_refuses_a_non_empty_directory() {
    let tmp = temp_dir();
    let existing = tmp.path().join("demo");
    std::fs::create_dir(&existing).expect("create dir");
    std::fs::write(existing.join("keep.txt"), "mine").expect("write file");
    let output = run(farine().args(["new", "demo", "--path"]).arg(tmp.path()));
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not empty"), "{stderr}");
    assert!(!existing.join("Cargo.toml").exists());
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).ok(),
        Some("mine".to_string())
    );
}

#[test]
fn new_creates_the_service_files() {
    let tmp = temp_dir();
    // An empty directory is fine.
    std::fs::create_dir(tmp.path().join("demo_svc")).expect("create dir");
    let output = run(farine().args(["new", "demo_svc", "--path"]).arg(tmp.path()));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("farine --start"), "{stdout}");

    let dir = tmp.path().join("demo_svc");
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect(file);
    let cargo_toml = read("Cargo.toml");
    assert!(cargo_toml.contains("name = \"demo_svc\""), "{cargo_toml}");
    assert!(cargo_toml.contains("\n[workspace]\n"), "{cargo_toml}");
    assert!(cargo_toml.contains("edition = \"2021\""), "{cargo_toml}");
    let farine_lib = workspace_root().join("farine");
    assert!(
        cargo_toml.contains(&format!(
            "farine = {{ path = \"{}\" }}",
            farine_lib.display()
        )),
        "{cargo_toml}"
    );
    assert!(cargo_toml.contains("serde = { version = \"1\", features = [\"derive\"] }"));

    // The service in the library (so that other crates get its typed client), run by main.rs.
    let lib_rs = read("src/lib.rs");
    assert!(lib_rs.contains("pub struct DemoSvc;"), "{lib_rs}");
    assert!(lib_rs.contains("#[farine::service(name = \"demo_svc\")]"));
    assert!(lib_rs.contains("#[rpc::method]"), "{lib_rs}");
    assert!(lib_rs.contains("#[amqp::consume(routing_key = \"greet\")]"));
    let main_rs = read("src/main.rs");
    assert!(main_rs.contains("farine::main!(demo_svc);"), "{main_rs}");

    let ini = read("farine.ini");
    assert!(ini.contains("[DEFAULT]"), "{ini}");
    assert!(ini.contains("amqp_uri = ${AMQP_URI:amqp://guest:guest@127.0.0.1:5672/%2f}"));
    assert!(ini.contains("\n[demo_svc]\n"), "{ini}");

    let readme = read("README.md");
    assert!(
        readme.contains("FARINE_INI=farine.ini farine --start ."),
        "{readme}"
    );
    assert!(
        readme.contains("demo_svc = { path = \"../demo_svc\" }"),
        "{readme}"
    );
    assert!(
        readme.contains("demo_svc::DemoSvcClient::connect"),
        "{readme}"
    );
}

/// Where the crates these tests generate are built: one directory for all of them and for
/// every run, so farine and its dependencies are compiled once rather than per test. (Not the
/// workspace's own: its crates are built there with other features, and its lock is busy.)
fn generated_target() -> PathBuf {
    workspace_root().join("target").join("generated-crates")
}

/// `farine new NAME` in `parent`, pinned to the versions the workspace resolved (its
/// `Cargo.lock`), so that nothing is resolved anew and the build reuses earlier ones.
fn new_service(parent: &Path, name: &str) -> PathBuf {
    let output = run(farine().args(["new", name, "--path"]).arg(parent));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let dir = parent.join(name);
    pin_versions(&dir);
    dir
}

fn pin_versions(dir: &Path) {
    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock"))
        .expect("copy the workspace's Cargo.lock");
}

/// `cargo build` of the crate in `dir`, into [`generated_target`]; fails the test with cargo's
/// diagnostics, else returns them (one line each).
fn build(dir: &Path) -> String {
    let build = run(cargo()
        .args(["build", "--message-format=short"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", generated_target()));
    let diagnostics = text(&build.stderr);
    assert!(
        build.status.success(),
        "{} does not build:\n{diagnostics}",
        dir.display()
    );
    diagnostics
}

/// The code blocks of README.md fenced as ```LANG, each with the `## ` section it is in.
fn readme_blocks(lang: &str) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match &mut block {
            Some(code) if line.trim_end() == "```" => {
                blocks.push((section.clone(), std::mem::take(code)));
                block = None;
            }
            Some(code) => {
                code.push_str(line);
                code.push('\n');
            }
            None if line.trim_end() == format!("```{lang}") => block = Some(String::new()),
            None => {
                if let Some(title) = line.strip_prefix("## ") {
                    section = title.trim().to_string();
                }
            }
        }
    }
    blocks
}

/// Every ```rust block of README.md, pasted into a crate made by `farine new`, builds there
/// without a warning: a block with `#[farine::service]` as a module named after its service
/// (so that `calc::CalcClient` in a later block is found), any other as the body of an async
/// function. Whole programs (`fn main`) are the other crate's, built and run below.
#[test]
fn readme_examples_build_in_a_new_service_crate() {
    let tmp = temp_dir();
    let dir = new_service(tmp.path(), "readme_examples");
    let lib_path = dir.join("src/lib.rs");
    let mut lib = std::fs::read_to_string(&lib_path).expect("generated lib.rs");
    let (mut services, mut snippets) = (Vec::new(), 0);
    for (index, (section, code)) in readme_blocks("rust").into_iter().enumerate() {
        if code.contains("fn main") {
            continue;
        }
        if code
            .lines()
            .any(|line| line.starts_with("#[farine::service]"))
        {
            let ty = code
                .split("\nimpl ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no `impl Type` in a README block of {section:?}"));
            let module = ty.to_lowercase();
            // A module's `main` (from `farine::main!()`) and such are not used here.
            let file = format!("// README.md, {section}\n#![allow(dead_code)]\n{code}");
            std::fs::write(dir.join(format!("src/{module}.rs")), file).expect("write module");
            lib.push_str(&format!("\npub mod {module};\n"));
            services.push(module);
        } else {
            lib.push_str(&format!(
                "\n// README.md, {section}\n#[allow(dead_code, unused_variables)]\n\
                 async fn readme_block_{index}() -> Result<(), Box<dyn std::error::Error>> {{\n\
                 {code}Ok(())\n}}\n"
            ));
            snippets += 1;
        }
    }
    assert!(
        services.len() >= 2 && snippets >= 1,
        "README blocks: services {services:?}, {snippets} snippets"
    );
    std::fs::write(&lib_path, lib).expect("write lib.rs");

    let diagnostics = build(&dir);
    let warnings: Vec<&str> = diagnostics
        .lines()
        .filter(|line| line.starts_with("src/") && line.contains("warning"))
        .collect();
    assert!(
        warnings.is_empty(),
        "README code warns:\n{}",
        warnings.join("\n")
    );
}

/// A service stopped (SIGTERM, then SIGKILL) when the test ends, even when it fails.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if farine_test_support::wait_exit(&mut self.0, Duration::from_secs(10)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// README.md's "Calling a service from another crate", as written there: a crate made by
/// `farine new greeter`, and a program depending on it (the README's `[dependencies]` and
/// `main.rs`) that calls it through `GreeterClient`, against the real broker.
#[test]
fn another_crate_calls_a_new_service_through_its_typed_client() {
    let section = "Calling a service from another crate";
    let pick = |lang: &str| {
        let mut blocks = readme_blocks(lang)
            .into_iter()
            .filter(|(s, _)| s == section);
        let (_, code) = blocks
            .next()
            .unwrap_or_else(|| panic!("no ```{lang} block in README.md's {section:?}"));
        code
    };
    let (dependencies, main_rs) = (pick("toml"), pick("rust"));

    let tmp = temp_dir();
    let service = new_service(tmp.path(), "greeter");
    let caller = tmp.path().join("caller");
    std::fs::create_dir_all(caller.join("src")).expect("create the caller crate");
    // farine by path, as `farine new` writes it (the README shows a version).
    let farine_path = workspace_root().join("farine");
    let dependencies: String = dependencies
        .lines()
        .map(|line| match line.starts_with("farine =") {
            true => format!(
                "farine = {{ path = {:?} }}\n",
                farine_path.display().to_string()
            ),
            false => format!("{line}\n"),
        })
        .collect();
    std::fs::write(
        caller.join("Cargo.toml"),
        format!(
            "[package]\nname = \"caller\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [workspace]\n\n{dependencies}"
        ),
    )
    .expect("write the caller's Cargo.toml");
    std::fs::write(caller.join("src/main.rs"), main_rs).expect("write the caller's main.rs");
    pin_versions(&caller);
    build(&service);
    build(&caller);

    let ini = tmp.path().join("farine.ini");
    std::fs::write(&ini, farine_test_support::ini_defaults()).expect("write farine.ini");
    let binary = |name: &str| generated_target().join("debug").join(name);
    let _service = Service(
        Command::new(binary("greeter"))
            .env("FARINE_INI", &ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the greeter service"),
    );
    // Until the service has declared its queues, the call fails at once (unknown service).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let call = run(Command::new(binary("caller")).env("FARINE_INI", &ini));
        if call.status.success() {
            assert_eq!(text(&call.stdout), "Hello, newcomer!\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the caller never got a reply:\n{}",
            text(&call.stderr)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn start_by_path_builds_runs_and_returns_the_exit_code() {
    let tmp = temp_dir();
    let package = tmp.path().join("exit3");
    write_package(&package, "exit3", EXIT_3);
    let output = run(farine()
        .arg("--start")
        .arg(&package)
        .current_dir(tmp.path())
        .env("CARGO_TARGET_DIR", tmp.path().join("target")));
    let stderr = text(&output.stderr);
    assert_eq!(text(&output.stdout), "started\n", "stderr: {stderr}");
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains("farine: service exit3 exited with status 3"),
        "{stderr}"
    );
}

#[test]
fn start_by_name_finds_the_package_in_the_current_workspace() {
    let tmp = temp_dir();
    std::fs::write(
        tmp.path().join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"svc\"]\n",
    )
    .expect("write workspace");
    let package = tmp.path().join("svc");
    std::fs::create_dir_all(package.join("src")).expect("create package");
    std::fs::write(
        package.join("Cargo.toml"),
        "[package]\nname = \"named-svc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .expect("write Cargo.toml");
    std::fs::write(package.join("src/main.rs"), EXIT_3).expect("write main.rs");

    // `_` for `-`, as cargo allows.
    let output = run(farine()
        .args(["--start", "named_svc"])
        .current_dir(tmp.path())
        .env("CARGO_TARGET_DIR", tmp.path().join("target")));
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "started\n");
}

#[test]
fn start_build_failure_names_the_package() {
    let tmp = temp_dir();
    let package = tmp.path().join("broken");
    write_package(&package, "broken", "fn main() { this is not rust }\n");
    let output = run(farine()
        .arg("--start")
        .arg(&package)
        .current_dir(tmp.path())
        .env("CARGO_TARGET_DIR", tmp.path().join("target")));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("farine: package `broken` failed to build"),
        "{stderr}"
    );
    // Cargo's own diagnostic is passed through.
    assert!(stderr.contains("error"), "{stderr}");
}

#[test]
fn start_forwards_sigterm_to_the_service() {
    let tmp = temp_dir();
    let package = tmp.path().join("sleeper");
    write_package(&package, "sleeper", UNTIL_SIGTERM);
    let mut farine = Watched::spawn(
        farine()
            .arg("--start")
            .arg(&package)
            .current_dir(tmp.path())
            .env("CARGO_TARGET_DIR", tmp.path().join("target")),
    );
    farine.wait_for("out: ready", BUILD_TIMEOUT);
    farine.signal(Signal::SIGTERM);
    let (status, printed) = farine.finish();
    assert!(printed.contains("out: stopping"), "{printed}");
    assert_eq!(status.code(), Some(0), "{printed}");
}

#[test]
fn start_keeps_the_others_running_when_one_fails() {
    let tmp = temp_dir();
    let failing = tmp.path().join("exit3");
    let sleeper = tmp.path().join("sleeper");
    write_package(&failing, "exit3", EXIT_3);
    write_package(&sleeper, "sleeper", UNTIL_SIGTERM);
    let mut farine = Watched::spawn(
        farine()
            .arg("--start")
            .arg(&failing)
            .arg("-s")
            .arg(&sleeper)
            .current_dir(tmp.path())
            .env("CARGO_TARGET_DIR", tmp.path().join("target")),
    );
    farine.wait_for(
        "err: farine: service exit3 exited with status 3",
        BUILD_TIMEOUT,
    );
    farine.wait_for("out: ready", BUILD_TIMEOUT);
    farine.signal(Signal::SIGTERM);
    let (status, printed) = farine.finish();
    assert!(printed.contains("out: stopping"), "{printed}");
    // The first failure decides the exit status.
    assert_eq!(status.code(), Some(3), "{printed}");
}

/// Prints the migrations folder it was given, as a farine binary in migration mode would use it.
const PRINT_MIGRATIONS: &str = r#"fn main() {
    match std::env::var("FARINE_MIGRATIONS") {
        Ok(dir) => println!("migrations: {dir}"),
        Err(_) => std::process::exit(9),
    }
}
"#;

#[test]
fn migrate_runs_the_built_binary_on_the_crates_migrations_folder() {
    let tmp = temp_dir();
    let package = tmp.path().join("withdb");
    write_package(&package, "withdb", PRINT_MIGRATIONS);
    std::fs::create_dir_all(package.join("migrations")).unwrap();
    let output = run(farine()
        .args(["migrate", "--start"])
        .arg(&package)
        .current_dir(tmp.path())
        .env("CARGO_TARGET_DIR", tmp.path().join("target")));
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let expected = format!("migrations: {}", package.join("migrations").display());
    assert!(stdout.contains(&expected), "{stdout}");

    let bare = tmp.path().join("nodb");
    write_package(&bare, "nodb", PRINT_MIGRATIONS);
    let output = run(farine()
        .args(["migrate", "--start"])
        .arg(&bare)
        .current_dir(tmp.path())
        .env("CARGO_TARGET_DIR", tmp.path().join("target")));
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("no migrations folder"),
        "{}",
        text(&output.stderr)
    );
}

/// An INI putting every service on the in-process broker `memory://NAME`.
fn memory_ini(dir: &Path, name: &str) -> PathBuf {
    let ini = dir.join("memory.ini");
    std::fs::write(&ini, format!("[DEFAULT]\namqp_uri = memory://{name}\n")).expect("write ini");
    ini
}

/// The done-when of the in-process broker: calc and a service calling it, in one process of
/// one `farine --start`, with no broker involved.
#[test]
fn start_several_services_on_memory_runs_them_in_one_process() {
    let tmp = temp_dir();
    let ini = memory_ini(tmp.path(), "cli-test");
    let mut farine = Watched::spawn(
        farine()
            .args(["--start", "calc", "--start", "caller"])
            .current_dir(workspace_root())
            .env("FARINE_INI", &ini),
    );
    farine.wait_for_part("running calc, caller in one process", BUILD_TIMEOUT);
    farine.wait_for_part(
        "calc.add(2, 2) = 4; calc.count(3) = [0, 1, 2]",
        BUILD_TIMEOUT,
    );
    farine.signal(Signal::SIGTERM);
    let (status, output) = farine.finish();
    assert!(status.success(), "{output}");
    let started: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("err: farine: started "))
        .collect();
    assert_eq!(started.len(), 1, "one process: {output}");
    assert!(started[0].contains("calc+caller"), "{output}");
    assert!(
        output.contains(r#"stopped services=["calc", "caller"]"#),
        "{output}"
    );
}

/// `caller` links calc's crate for its typed client: its own binary runs caller only.
#[test]
fn a_service_crate_linked_for_its_client_is_not_run() {
    let tmp = temp_dir();
    let ini = memory_ini(tmp.path(), "cli-test-alone");
    let mut farine = Watched::spawn(
        farine()
            .args(["--start", "caller"])
            .current_dir(workspace_root())
            .env("FARINE_INI", &ini),
    );
    farine.wait_for_part(
        r#"no service "calc": its exchange "calc" does not exist"#,
        BUILD_TIMEOUT,
    );
    farine.signal(Signal::SIGTERM);
    let (status, output) = farine.finish();
    assert!(status.success(), "{output}");
    assert!(
        output.contains(r#"service ready service="caller""#),
        "{output}"
    );
    assert!(!output.contains(r#"service="calc""#), "{output}");
}

#[test]
fn network_commands_refuse_an_in_process_broker() {
    let tmp = temp_dir();
    let ini = memory_ini(tmp.path(), "cli-test-refused");
    for args in [
        &["call", "calc.add", "[1, 2]"][..],
        &["publish", "calc", "operations", "{}"],
        &["dlq", "list", "operations"],
        &["gateway"],
    ] {
        let output = run(farine().args(args).env("FARINE_INI", &ini));
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        let expected = format!(
            "farine: {} [DEFAULT] amqp_uri: `farine {}` needs a network broker (amqp:// or \
             amqps://), but this is memory://cli-test-refused",
            ini.display(),
            args[0]
        );
        assert!(stderr.starts_with(&expected), "{args:?}: {stderr}");
    }
}

/// `farine gateway` in front of `farine --start calc`: curl calls calc.add over HTTP; a method
/// the gateway does not expose is 404.
#[test]
fn the_gateway_serves_calc_over_http() {
    let tmp = temp_dir();
    let ini = tmp.path().join("gateway.ini");
    std::fs::write(
        &ini,
        format!(
            "{}[gateway]\nlisten = 127.0.0.1:0\nexpose = calc.add\n",
            farine_test_support::ini_defaults()
        ),
    )
    .expect("write the INI");
    let mut calc = Watched::spawn(
        farine()
            .args(["--start", "calc"])
            .current_dir(workspace_root())
            .env("FARINE_INI", &ini),
    );
    calc.wait_for_part("service ready", BUILD_TIMEOUT);
    let mut gateway = Watched::spawn(farine().arg("gateway").env("FARINE_INI", &ini));
    gateway.wait_for_part("gateway listening on http://", EXIT_TIMEOUT);
    let address = gateway
        .seen
        .iter()
        .find_map(|line| line.split("gateway listening on http://").nth(1))
        .and_then(|rest| rest.split(';').next())
        .expect("the address in the log line")
        .to_owned();
    let curl = |path: &str, extra: &[&str]| {
        let output = run(Command::new("curl")
            .args(["-s", "-X", "POST", "-d", "[2, 3]"])
            .args(extra)
            .arg(format!("http://{address}{path}")));
        assert!(output.status.success(), "curl: {}", text(&output.stderr));
        text(&output.stdout)
    };
    assert_eq!(curl("/rpc/calc/add", &[]), "5");
    assert_eq!(
        curl(
            "/rpc/calc/count",
            &["-o", "/dev/null", "-w", "%{http_code}"]
        ),
        "404"
    );
    for watched in [gateway, calc] {
        watched.signal(Signal::SIGTERM);
        let (status, output) = watched.finish();
        assert!(status.success(), "{output}");
    }
}
