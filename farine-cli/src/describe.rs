//! `farine describe --start MODULE`: builds each module, runs its binary in describe mode
//! (`FARINE_DESCRIBE`: it prints the AsyncAPI document of its services without connecting to
//! anything) and prints the document; several modules' documents are merged into one.

use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};

use serde_json::{Map, Value};

use crate::start::{build_modules, Service};
use crate::Failure;

pub fn run(modules: &[String], release: bool) -> Result<ExitCode, Failure> {
    let services = build_modules(modules, release)?;
    let mut documents = Vec::new();
    for service in &services {
        documents.push(describe(service)?);
    }
    let names: Vec<&str> = modules.iter().map(String::as_str).collect();
    let mut document = merge(documents, &names.join(", "));
    if let ([service], Some(info)) = (&services[..], document.get_mut("info")) {
        if let Some(version) = version(&service.id) {
            info["version"] = Value::String(version.to_string());
        }
    }
    let text = serde_json::to_string_pretty(&document)
        .map_err(|e| Failure::new(format!("cannot print the document: {e}")))?;
    writeln!(std::io::stdout().lock(), "{text}")
        .map_err(|e| Failure::new(format!("cannot print the document: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// The version in a cargo package id: `path+file:///x/calc#0.1.0`, `...#calc@0.1.0`, or the
/// older `calc 0.1.0 (path+file:///x/calc)`.
fn version(id: &str) -> Option<&str> {
    match id.rsplit_once('#') {
        Some((_, tail)) => tail.rsplit('@').next(),
        None => id.split_whitespace().nth(1),
    }
}

/// Runs the built binary in describe mode and reads its document.
fn describe(service: &Service) -> Result<Value, Failure> {
    let output = Command::new(&service.executable)
        .env(farine::describe::ENV, "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Failure::new(format!("cannot run {}: {e}", service.executable.display())))?;
    if !output.status.success() {
        return Err(Failure::new(format!(
            "{} could not describe its services ({}); is its main `farine::main!`?",
            service.name, output.status
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| {
        Failure::new(format!(
            "{} printed no AsyncAPI document in describe mode ({e}); is its main `farine::main!`?",
            service.name
        ))
    })
}

/// One document: the first, with the others' servers, channels, operations and components
/// added (ids are `<service>.<method>`, so distinct services do not collide), titled `title`.
fn merge(documents: Vec<Value>, title: &str) -> Value {
    let mut documents = documents.into_iter();
    let Some(mut merged) = documents.next() else {
        return Value::Null;
    };
    for document in documents {
        for section in ["servers", "channels", "operations"] {
            extend(&mut merged, &document, &[section]);
        }
        for section in ["schemas", "messages"] {
            extend(&mut merged, &document, &["components", section]);
        }
    }
    if let Some(info) = merged.get_mut("info").and_then(Value::as_object_mut) {
        info.insert("title".into(), Value::String(title.to_string()));
    }
    merged
}

/// Adds the entries of `from` at `path` to those of `into`, keeping `into`'s on a clash.
fn extend(into: &mut Value, from: &Value, path: &[&str]) {
    let Some(entries) = path.iter().try_fold(from, |v, key| v.get(key)) else {
        return;
    };
    let Some(entries) = entries.as_object() else {
        return;
    };
    let mut target = into;
    for key in path {
        let Some(object) = target.as_object_mut() else {
            return;
        };
        target = object
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(target) = target.as_object_mut() {
        for (key, value) in entries {
            target.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_version_is_read_from_the_package_id() {
        assert_eq!(version("path+file:///x/calc#0.1.0"), Some("0.1.0"));
        assert_eq!(version("path+file:///x/dir#calc@1.2.3"), Some("1.2.3"));
        assert_eq!(version("calc 0.3.0 (path+file:///x/calc)"), Some("0.3.0"));
    }

    #[test]
    fn documents_of_several_crates_are_merged() {
        let a = json!({"info": {"title": "a", "version": "1"}, "channels": {"a.x": 1},
                       "components": {"messages": {"a.x": 1, "farine.end": 1}}});
        let b = json!({"info": {"title": "b", "version": "1"}, "channels": {"b.y": 2},
                       "operations": {"b.y": 2},
                       "components": {"messages": {"b.y": 2, "farine.end": 2}, "schemas": {"S": 2}}});
        let merged = merge(vec![a, b], "a, b");
        assert_eq!(merged["info"]["title"], "a, b");
        assert_eq!(merged["channels"], json!({"a.x": 1, "b.y": 2}));
        assert_eq!(merged["operations"], json!({"b.y": 2}));
        assert_eq!(
            merged["components"],
            json!({"messages": {"a.x": 1, "b.y": 2, "farine.end": 1}, "schemas": {"S": 2}})
        );
    }
}
