//! The todo page (examples/todo/static) in a real browser: headless Chromium driven over
//! WebDriver (chromedriver), the page served by `farine gateway` configured by
//! examples/todo/gateway.ini, the todo service on RabbitMQ and PostgreSQL.
//!
//! Two pages are open at once: a todo added in one appears in the other, completing it in the
//! second shows it done in both (both through the `todo.events` broadcasts), and when the
//! gateway goes away and comes back both pages reconnect and list the todos again.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver`: `.ci/browser`
//! installs them when missing (as root; otherwise the test fails with the command to run).
//! The service and the gateway run in a RabbitMQ virtual host of the test's own (made with
//! `rabbitmqctl`, deleted at the end): the other todo tests run a `todo` service of their
//! own in the shared test virtual host, which would answer this test's calls.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use farine::gateway::Gateway;
use farine::testing::TestKit;
use farine_test_support::{sql, Schema, Vhost};
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};
use todo::TodoServiceClient;

/// The longest any one wait of the test may take (a page to connect, an update to show).
const WAIT: Duration = Duration::from_secs(20);

/// What Chromium needs on a machine without a display or a network beyond itself: without
/// these it waits on connections to the outside (updates, sync, QUIC) and hangs.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Chromium and chromedriver, installed by `.ci/browser` when missing.
fn browser_programs() -> (PathBuf, PathBuf) {
    let found = || Some((find_program("chromium")?, find_program("chromedriver")?));
    if let Some(programs) = found() {
        return programs;
    }
    let script = repo_root().join(".ci/browser");
    let installed = Command::new("bash").arg(&script).status();
    match (installed, found()) {
        (Ok(status), Some(programs)) if status.success() => programs,
        _ => panic!(
            "this test needs headless Chromium and chromedriver (Debian's chromium and \
             chromium-driver), and could not install them: run `sudo apt-get install -y \
             chromium chromium-driver` (or `bash .ci/browser` as root)"
        ),
    }
}

/// A free port of 127.0.0.1 (free a moment ago: chromedriver takes it at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// chromedriver and every browser it starts (one process group), and the browsers' profiles:
/// killed and removed when dropped, so a failing test leaves nothing running.
struct Driver {
    child: Child,
    url: String,
    dir: PathBuf,
    chromium: PathBuf,
    sessions: usize,
}

impl Driver {
    async fn start() -> Driver {
        use std::os::unix::process::CommandExt;
        let (chromium, chromedriver) = browser_programs();
        let dir = std::env::temp_dir().join(format!("farine-browser-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder for the browsers");
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("chromedriver's log");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("chromedriver's log"))
            .stderr(log)
            // Its own process group: the browsers it starts are in it, and are killed with it.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            chromium,
            sessions: 0,
        };
        let ready = farine_test_support::eventually(WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(ready, "chromedriver did not listen on port {port}");
        driver
    }

    /// A new headless browser with a fresh profile.
    async fn browser(&mut self) -> Client {
        self.sessions += 1;
        let profile = self.dir.join(format!("profile-{}", self.sessions));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": self.chromium, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "no browser session from chromedriver: {err}; its log: {}",
                    self.log()
                )
            })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// examples/todo/gateway.ini as shipped, pointed at the test's broker, listening on
/// `listen`, serving the page from the crate's folder whatever the working directory, and
/// asking for `token`.
fn gateway_config(amqp_uri: &str, listen: &str, token: &str) -> farine::Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.ini");
    let mut text = std::fs::read_to_string(&path).expect("examples/todo/gateway.ini");
    let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    for (shipped, here) in [
        (
            "${AMQP_URI:amqp://guest:guest@127.0.0.1:5672/%2f}",
            amqp_uri,
        ),
        ("${TODO_GATEWAY_LISTEN:127.0.0.1:8080}", listen),
        (
            "${TODO_STATIC_DIR:examples/todo/static}",
            &static_dir.display().to_string(),
        ),
        (
            ";auth_tokens = ${TODO_GATEWAY_TOKEN}",
            &format!("auth_tokens = {token}"),
        ),
    ] {
        assert!(
            text.contains(shipped),
            "gateway.ini no longer has {shipped}"
        );
        text = text.replace(shipped, here);
    }
    farine::Config::from_str(&text, path).expect("examples/todo/gateway.ini parses")
}

/// A todo as a page shows it.
#[derive(Debug, Deserialize, PartialEq)]
struct Shown {
    id: i64,
    title: String,
    done: bool,
}

/// What a page shows: its connection state, its todos, its error message.
#[derive(Debug, Deserialize)]
struct View {
    state: String,
    todos: Vec<Shown>,
    error: Option<String>,
}

const READ_VIEW: &str = r##"
    const error = document.getElementById("error");
    return {
        state: document.getElementById("status").dataset.state,
        todos: Array.from(document.querySelectorAll("#todos li")).map((li) => ({
            id: Number(li.dataset.id),
            title: li.querySelector("label").textContent,
            done: li.dataset.done === "true",
        })),
        error: error.hidden ? null : error.textContent,
    };
"##;

async fn view(page: &Client) -> View {
    let value = page
        .execute(READ_VIEW, Vec::new())
        .await
        .expect("the page runs a script");
    serde_json::from_value(value).expect("the page's view")
}

/// Waits until `page` shows what `wanted` accepts, for at most [`WAIT`]; fails saying what
/// the page showed last.
async fn until(page: &Client, name: &str, what: &str, wanted: impl Fn(&View) -> bool) -> View {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = view(page).await;
        if wanted(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "page {name}: {what} was not shown within {WAIT:?}; it shows {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn todo(id: i64, title: &str, done: bool) -> Shown {
    Shown {
        id,
        title: title.to_owned(),
        done,
    }
}

/// Everything the scenario uses, made before it runs and taken down after, even when it fails.
struct World {
    vhost: Vhost,
    schema: Schema,
    token: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_add_and_complete_todos_live_and_reconnect() {
    // First what may be missing (the browser), then what must be taken down.
    let mut driver = Driver::start().await;
    let vhost = Vhost::new("farine-browser-test");
    let schema = Schema::new(
        format!("t_browser_todo_{}", std::process::id()),
        include_str!("../migrations/20261122000001_todos.sql"),
    )
    .await;
    let world = World {
        vhost,
        schema,
        token: uuid::Uuid::new_v4().simple().to_string(),
    };
    let mut kit = None;
    let mut gateway = None;
    let mut pages = Vec::new();
    let outcome = std::panic::AssertUnwindSafe(scenario(
        &world,
        &mut driver,
        &mut kit,
        &mut gateway,
        &mut pages,
    ))
    .catch_unwind()
    .await;

    for page in pages {
        let _ = page.close().await;
    }
    drop(driver);
    if let Some(gateway) = gateway {
        gateway.stop().await;
    }
    if let Some(kit) = kit {
        let _ = kit.stop().await;
    }
    let World { vhost, schema, .. } = world;
    drop(vhost);
    schema.drop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn start_gateway(world: &World, listen: &str) -> Gateway {
    let config = gateway_config(&world.vhost.uri(), listen, &world.token);
    let gateway = Gateway::start(&config).await.expect("the gateway starts");
    gateway
}

async fn scenario(
    world: &World,
    driver: &mut Driver,
    kit: &mut Option<TestKit>,
    gateway: &mut Option<Gateway>,
    pages: &mut Vec<Client>,
) {
    // The todo service, as `farine --start todo` runs it, on the test's vhost and schema;
    // `start` returns once its entry points are attached (and todo.events declared).
    let started = TestKit::broker(world.vhost.uri())
        .service("todo")
        .set("todo", "db_connector", "postgres")
        .set("todo", "db_url", &world.schema.db_url())
        .set("todo", "db_max_conn", "4")
        .start()
        .await
        .expect("the todo service starts");
    let client = TodoServiceClient::connect(started.config())
        .await
        .expect("a todo client");
    *kit = Some(started);

    let running = start_gateway(world, "127.0.0.1:0").await;
    let address = running.local_addr();
    *gateway = Some(running);
    let url = format!("http://{address}/#token={}", world.token);

    for _ in 0..2 {
        let page = driver.browser().await;
        page.goto(&url).await.expect("the page opens");
        pages.push(page);
    }
    let (a, b) = (&pages[0], &pages[1]);
    for (page, name) in [(a, "A"), (b, "B")] {
        let seen = until(page, name, "an empty, live list", |v| v.state == "live").await;
        assert_eq!(seen.todos, [], "page {name}: a fresh table");
    }

    // Added in A, it appears in B: from the todo.events broadcast.
    let input = a.find(Locator::Id("new-title")).await.expect("#new-title");
    input.send_keys("buy flour").await.expect("typing");
    a.find(Locator::Id("add-button"))
        .await
        .expect("#add-button")
        .click()
        .await
        .expect("clicking Add");
    let seen = until(b, "B", "the todo added in A", |v| !v.todos.is_empty()).await;
    assert_eq!(seen.todos.len(), 1, "{seen:?}");
    let id = seen.todos[0].id;
    assert_eq!(seen.todos, [todo(id, "buy flour", false)]);
    until(a, "A", "its own todo", |v| {
        v.todos == [todo(id, "buy flour", false)]
    })
    .await;

    // Completed in B, it is done in both.
    b.find(Locator::Css(&format!(
        "li[data-id=\"{id}\"] input[type=checkbox]"
    )))
    .await
    .expect("the todo's checkbox in B")
    .click()
    .await
    .expect("ticking it");
    for (page, name) in [(b, "B"), (a, "A")] {
        until(page, name, "the todo done", |v| {
            v.todos == [todo(id, "buy flour", true)]
        })
        .await;
    }
    let stored: (String, bool) = sqlx::query_as(sql(format!(
        "select title, done from {}.todos where id = $1",
        world.schema.name
    )))
    .bind(id)
    .fetch_one(&world.schema.pool)
    .await
    .expect("the row");
    assert_eq!(stored, ("buy flour".to_owned(), true));

    // The gateway goes away: both pages say so. What changes meanwhile reaches no page (the
    // broadcast has no listener): once the gateway is back, each page reconnects by itself
    // and lists the todos anew, the one left coming as a single result.
    if let Some(running) = gateway.take() {
        running.stop().await;
    }
    for (page, name) in [(a, "A"), (b, "B")] {
        until(page, name, "that it lost the gateway", |v| {
            v.state != "live"
        })
        .await;
    }
    world
        .schema
        .execute(&format!("delete from todos where id = {id}"))
        .await;
    let bread = client
        .add("bake bread".to_owned())
        .await
        .expect("todo.add while the gateway is away");
    *gateway = Some(start_gateway(world, &address.to_string()).await);
    for (page, name) in [(a, "A"), (b, "B")] {
        let seen = until(page, name, "the todos listed again", |v| {
            v.state == "live" && v.todos == [todo(bread, "bake bread", false)]
        })
        .await;
        assert_eq!(seen.error, None, "page {name}");
    }
}
