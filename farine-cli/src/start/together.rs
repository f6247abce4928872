//! `farine --start a --start b` with `amqp_uri = memory://`: an in-process broker is reachable
//! only from inside its process, so the services must share one. Rust links crates at build
//! time, so the service crates are linked into one generated binary (a crate of two files in
//! the target directory, rewritten at each start) whose `farine::main!` names them all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{build, cargo, resolve_manifest, Package, Service, Target};
use crate::scaffold::toml_string;
use crate::Failure;

/// The in-process broker FARINE_INI points a service at (`[DEFAULT]` or any section), if any.
/// A file that does not load is left for the services to report, with its file and key.
pub(super) fn in_process_broker() -> Option<String> {
    let config = farine::Config::from_env().ok()?;
    // A name no section has: `[DEFAULT]` and the built-in defaults.
    let mut names = vec!["farine-cli".to_string()];
    names.extend(config.sections());
    names.iter().find_map(|name| {
        let settings = config.service(name).ok()?;
        let broker = farine::transport::memory::broker_name(settings.amqp_uri.expose())?;
        Some(format!("memory://{broker}"))
    })
}

/// Writes the crate that links every service crate of `targets`, builds it into the first
/// one's target directory (so its dependencies are not compiled again), and returns its binary.
pub(super) fn build_together(targets: &[Target], release: bool) -> Result<Service, Failure> {
    let first = targets
        .first()
        .ok_or_else(|| Failure::new("no service crate to start"))?;
    let resolved = Resolved::of(&first.package)?;

    let mut dependencies = format!("farine = {}\n", resolved.farine);
    let mut crates = Vec::with_capacity(targets.len());
    for target in targets {
        let package = &target.package;
        let lib = package.lib.as_deref().ok_or_else(|| {
            Failure::new(format!(
                "package `{}` has no library target: to run several services in one process \
                 (amqp_uri = memory://), each service must be in its crate's src/lib.rs, with \
                 src/main.rs only `farine::main!({});` (as `farine new` lays it out)",
                package.name,
                package.name.replace('-', "_")
            ))
        })?;
        let dir = package
            .manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .display()
            .to_string();
        dependencies.push_str(&format!(
            "{lib} = {{ package = {}, path = {} }}\n",
            toml_string(&package.name),
            toml_string(&dir)
        ));
        crates.push(lib.to_string());
    }

    let names: Vec<&str> = targets.iter().map(|t| t.package.name.as_str()).collect();
    // One crate per set of services, named after them: two sets never share a binary.
    let name = format!("farine-start-{}", names.join("-"));
    let dir = resolved.target_dir.join("farine-start").join(&name);
    let manifest = dir.join("Cargo.toml");
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text)
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))
    };
    std::fs::create_dir_all(dir.join("src"))
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", dir.display())))?;
    write(
        &manifest,
        &format!(
            "# Written by `farine --start {}`: the services in one process, for the \
             in-process broker.\n\
             [package]\nname = {}\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [workspace]\n\n[dependencies]\n{dependencies}",
            names.join(" --start "),
            toml_string(&name)
        ),
    )?;
    write(
        &dir.join("src/main.rs"),
        &format!(
            "//! Written by `farine --start`.\nfarine::main!({});\n",
            crates.join(", ")
        ),
    )?;
    // The versions the services' workspace resolved: nothing is resolved or compiled anew.
    if let Some(lock) = &resolved.lock {
        std::fs::copy(lock, dir.join("Cargo.lock")).map_err(|e| {
            Failure::new(format!(
                "cannot copy {} to {}: {e}",
                lock.display(),
                dir.display()
            ))
        })?;
    }

    let package = resolve_manifest(&name, &manifest)?;
    let mut service = build(
        &Target {
            package,
            manifest: Some(manifest),
            target_dir: Some(resolved.target_dir),
        },
        release,
    )?;
    service.name = names.join("+");
    Ok(service)
}

/// What the first service crate's workspace resolved: its farine, lock file and target dir.
struct Resolved {
    /// The dependency on farine, as a TOML value.
    farine: String,
    lock: Option<PathBuf>,
    target_dir: PathBuf,
}

impl Resolved {
    fn of(package: &Package) -> Result<Resolved, Failure> {
        // `--no-deps`: the dependency as declared is enough, and nothing is downloaded.
        let output = Command::new(cargo())
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--manifest-path",
            ])
            .arg(&package.manifest_path)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| Failure::new(format!("cannot run cargo metadata: {e}")))?;
        if !output.status.success() {
            return Err(Failure::new(format!(
                "cargo metadata failed for {} ({})",
                package.manifest_path.display(),
                output.status
            )));
        }
        let json: Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| Failure::new(format!("cargo metadata printed no JSON: {e}")))?;
        let farine = farine_dependency(&json, &package.id).ok_or_else(|| {
            Failure::new(format!(
                "package `{}` ({}) does not depend on farine: it is not a service crate",
                package.name,
                package.manifest_path.display()
            ))
        })?;
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(PathBuf::from);
        let root = text("workspace_root").unwrap_or_default();
        let lock = Some(root.join("Cargo.lock")).filter(|lock| lock.is_file());
        let target_dir = text("target_directory").unwrap_or_else(|| root.join("target"));
        Ok(Resolved {
            farine,
            lock,
            target_dir,
        })
    }
}

/// The farine dependency of package `id` as it declares it (by path, git or version), as
/// the generated crate's; the copied lock file then pins the same version.
fn farine_dependency(metadata: &Value, id: &str) -> Option<String> {
    let package = metadata
        .get("packages")?
        .as_array()?
        .iter()
        .find(|p| p.get("id").and_then(Value::as_str) == Some(id))?;
    let dependency = package.get("dependencies")?.as_array()?.iter().find(|d| {
        d.get("name").and_then(Value::as_str) == Some("farine")
            && d.get("kind").is_none_or(Value::is_null)
    })?;
    if let Some(path) = dependency.get("path").and_then(Value::as_str) {
        return Some(format!("{{ path = {} }}", toml_string(path)));
    }
    let source = dependency.get("source").and_then(Value::as_str);
    if let Some(git) = source.and_then(|s| s.strip_prefix("git+")) {
        // `URL?branch=main` or `URL?rev=abc` or `URL?tag=v1`, as cargo writes it.
        let (url, query) = git.split_once('?').unwrap_or((git, ""));
        let mut spec = format!("{{ git = {}", toml_string(url));
        if let Some((key, value)) = query.split_once('=') {
            spec.push_str(&format!(", {key} = {}", toml_string(value)));
        }
        spec.push_str(" }");
        return Some(spec);
    }
    let req = dependency.get("req").and_then(Value::as_str)?;
    Some(format!("{{ version = {} }}", toml_string(req)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declaring(dependency: Value) -> Value {
        json!({"packages": [{"id": "calc-id", "dependencies": [
            {"name": "farine", "kind": "dev", "path": "/elsewhere"},
            dependency,
        ]}]})
    }

    #[test]
    fn farine_as_the_service_crate_declares_it() {
        let by_path = declaring(json!({"name": "farine", "kind": null, "path": "/w/farine"}));
        assert_eq!(
            farine_dependency(&by_path, "calc-id").as_deref(),
            Some("{ path = \"/w/farine\" }")
        );
        let by_git = declaring(json!({"name": "farine", "kind": null,
            "source": "git+https://example.com/farine?branch=main", "req": "*"}));
        assert_eq!(
            farine_dependency(&by_git, "calc-id").as_deref(),
            Some("{ git = \"https://example.com/farine\", branch = \"main\" }")
        );
        let registry = declaring(json!({"name": "farine", "kind": null,
            "source": "registry+https://github.com/rust-lang/crates.io-index", "req": "^0.3"}));
        assert_eq!(
            farine_dependency(&registry, "calc-id").as_deref(),
            Some("{ version = \"^0.3\" }")
        );
        assert_eq!(farine_dependency(&by_path, "other-id"), None);
        let dev_only = json!({"packages": [{"id": "calc-id", "dependencies": [
            {"name": "farine", "kind": "dev", "path": "/w/farine"}]}]});
        assert_eq!(farine_dependency(&dev_only, "calc-id"), None);
    }
}
