//! `${VAR}` and `${VAR:default}` in values, replaced from the environment when a service's
//! settings are resolved.

use super::secret::redact_uri;

/// Replaces `${VAR}` and `${VAR:default}` from the environment; the error is the message.
pub(super) fn substitute_env(value: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "expected \"}}\" to close \"${{\", got {:?}",
                redact_uri(&rest[start..])
            ));
        };
        let inner = &after[..end];
        let (var, default) = match inner.split_once(':') {
            // `:-` is the shell's spelling; accept it so `${VAR:-x}` does not yield "-x".
            Some((var, default)) => (var, Some(default.strip_prefix('-').unwrap_or(default))),
            None => (inner, None),
        };
        if !is_env_name(var) {
            return Err(format!(
                "expected an environment variable name (letters, digits, _) in ${{...}}, got {:?}",
                var
            ));
        }
        match std::env::var(var) {
            Ok(found) if !found.is_empty() || default.is_none() => out.push_str(&found),
            Ok(_) | Err(std::env::VarError::NotPresent) => match default {
                Some(default) => out.push_str(default),
                None => {
                    return Err(format!(
                        "expected environment variable {var} to be set (or a default: \
                         ${{{var}:default}}), but it is not set"
                    ))
                }
            },
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!(
                    "expected environment variable {var} to be UTF-8 text, but it is not"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
