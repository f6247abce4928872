//! `farine new NAME`: writes a service crate that builds and runs as generated, so a new user
//! starts from working code rather than from the docs.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Failure;

/// The farine library next to this CLI in its source tree; generated crates depend on it by
/// path when it is still there, so they build against the very version that generated them.
const FARINE_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../farine");

/// Names that parse but that cargo or rustc refuse as crate names, or that would clash with
/// the crates the service depends on.
#[rustfmt::skip]
const RESERVED: &[&str] = &[
    "abstract", "alloc", "as", "async", "await", "become", "box", "break", "const", "continue",
    "core", "crate", "do", "dyn", "else", "enum", "extern", "false", "farine", "farine_macros",
    "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro", "match", "mod",
    "move", "mut", "override", "priv", "proc_macro", "pub", "ref", "return", "self", "serde",
    "static", "std", "struct", "super", "test", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Type names the generated `lib.rs` already uses; a service type named like one of them
/// gets a `Service` suffix instead of breaking the build.
const TAKEN_TYPES: &[&str] = &[
    "Box",
    "Debug",
    "Default",
    "Deserialize",
    "Greeting",
    "Option",
    "Result",
    "String",
    "Vec",
];

/// The service lives in the library, so that other crates can depend on it for its typed
/// client; the binary only runs it.
const LIB_RS: &str = r#"//! The __NAME__ service, and `__TYPE__Client`, its typed client, which other crates use by
//! depending on this one (see README.md). Run it with `farine --start __NAME__`; configure it
//! in the file named by FARINE_INI.
use farine::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Greeting {
    pub name: String,
}

#[derive(Default)]
pub struct __TYPE__;

#[farine::service(name = "__SERVICE__")]
impl __TYPE__ {
    /// Callable as `__SERVICE__.hello(name)`: from Rust with `__TYPE__Client`, from the shell
    /// with `farine call __SERVICE__.hello '["you"]'`.
    #[rpc::method]
    async fn hello(&self, name: String) -> String {
        format!("Hello, {name}!")
    }

    /// Handles every message published to exchange "__SERVICE__" with routing key "greet".
    #[amqp::consume(routing_key = "greet")]
    async fn greet(&self, greeting: Greeting) -> farine::Result<()> {
        farine::tracing::info!(name = %greeting.name, "hello");
        Ok(())
    }
}
"#;

const MAIN_RS: &str = r#"//! Runs the __NAME__ service (defined in lib.rs): `farine --start __NAME__`.
farine::main!(__SERVICE__);
"#;

const FARINE_INI: &str = r#"; Configuration of the __NAME__ service: run it with FARINE_INI pointing at this file.
[DEFAULT]
amqp_uri = ${AMQP_URI:amqp://guest:guest@127.0.0.1:5672/%2f}

[__SERVICE__]
; Settings of the __SERVICE__ service go here; they override [DEFAULT].
"#;

const README_MD: &str = r#"# __NAME__

A farine service. With RabbitMQ reachable at `amqp_uri` (see `farine.ini`), run it from this directory with
`FARINE_INI=farine.ini farine --start .` (the `farine` command builds and runs it), or with
`FARINE_INI=farine.ini cargo run`. Call it with `farine call __SERVICE__.hello '["you"]'`.

The service is in `src/lib.rs`, so another crate calls it through its typed client,
`__SERVICE__::__TYPE__Client`, by depending on this one:

```toml
[dependencies]
__NAME__ = { path = "../__NAME__" }
farine = __FARINE__
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
```

```rust
#[tokio::main]
async fn main() -> farine::Result<()> {
    let config = farine::Config::from_env()?; // the file named by FARINE_INI
    let client = __SERVICE__::__TYPE__Client::connect(&config).await?;
    println!("{}", client.hello("you".to_string()).await?);
    Ok(())
}
```
"#;

pub fn run(name: &str, parent: Option<&Path>) -> Result<(), Failure> {
    check_name(name)?;
    let dir = parent.unwrap_or(Path::new(".")).join(name);
    check_free(&dir)?;

    let service = name.replace('-', "_");
    let farine = farine_dependency();
    let fill = |template: &str| {
        template
            .replace("__NAME__", name)
            .replace("__SERVICE__", &service)
            .replace("__TYPE__", &type_name(name))
            .replace("__FARINE__", &farine)
    };
    let files = [
        ("Cargo.toml", cargo_toml(name, &farine)),
        ("src/lib.rs", fill(LIB_RS)),
        ("src/main.rs", fill(MAIN_RS)),
        ("farine.ini", fill(FARINE_INI)),
        ("README.md", fill(README_MD)),
    ];

    fs::create_dir_all(dir.join("src")).map_err(|e| {
        Failure::new(format!(
            "cannot create directory {}: {e}",
            dir.join("src").display()
        ))
    })?;
    for (file, contents) in &files {
        let path = dir.join(file);
        fs::write(&path, contents)
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    }

    let shown = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    println!("Created service crate `{name}` in {}:", shown.display());
    for (file, _) in &files {
        println!("  {file}");
    }
    println!();
    println!("Next:");
    println!("  cd {}", dir.display());
    println!("  FARINE_INI=farine.ini farine --start .    # or: FARINE_INI=farine.ini cargo run");
    Ok(())
}

/// Cargo's rules, narrowed to what is also a valid service, queue and section name.
fn check_name(name: &str) -> Result<(), Failure> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        return Err(Failure::with_code(
            2,
            format!(
                "`{name}` is not a valid service crate name: use lowercase letters, digits, `_` \
                 and `-`, starting with a letter (e.g. `order_book`)"
            ),
        ));
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        return Err(Failure::with_code(
            2,
            format!(
                "`{name}` cannot name a service crate: it is a Rust keyword or the name of a \
                 crate the service uses"
            ),
        ));
    }
    Ok(())
}

/// Refuses to write into anything but a missing or empty directory, so nothing is overwritten.
fn check_free(dir: &Path) -> Result<(), Failure> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(Failure::new(format!(
            "{} already exists and is not a directory",
            dir.display()
        )));
    }
    let mut entries = fs::read_dir(dir)
        .map_err(|e| Failure::new(format!("cannot read directory {}: {e}", dir.display())))?;
    if entries.next().is_some() {
        return Err(Failure::new(format!(
            "{} already exists and is not empty; choose another NAME or --path",
            dir.display()
        )));
    }
    Ok(())
}

/// `order-book` -> `OrderBook`.
fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['_', '-'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    if TAKEN_TYPES.contains(&camel.as_str()) {
        camel + "Service"
    } else {
        camel
    }
}

/// How a crate depends on farine: by path on the source this CLI was built from when it is
/// still there, else by version.
fn farine_dependency() -> String {
    match farine_path() {
        Some(path) => format!("{{ path = {} }}", toml_string(&path.to_string_lossy())),
        None => "\"0.1\"".to_string(),
    }
}

fn cargo_toml(name: &str, farine: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

# A workspace of its own, so the crate builds standalone even inside another workspace's tree.
[workspace]

[dependencies]
farine = {farine}
serde = {{ version = "1", features = ["derive"] }}
"#
    )
}

/// The farine library source this CLI was built from, if it is still on this machine.
fn farine_path() -> Option<PathBuf> {
    let path = Path::new(FARINE_SOURCE).canonicalize().ok()?;
    path.join("Cargo.toml").is_file().then_some(path)
}

/// A TOML basic string, for paths that may hold quotes or backslashes.
pub(crate) fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_camel_case_and_avoid_clashes() {
        assert_eq!(type_name("demo_svc"), "DemoSvc");
        assert_eq!(type_name("order-book2"), "OrderBook2");
        assert_eq!(type_name("greeting"), "GreetingService");
    }

    #[test]
    fn names_follow_crate_rules() {
        assert!(check_name("demo_svc").is_ok());
        assert!(check_name("a-1").is_ok());
        for bad in [
            "", "1abc", "Demo", "_x", "a b", "a.b", "fn", "self", "farine",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    }
}
