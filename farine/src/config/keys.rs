//! Which keys farine knows: every settings module declares its keys in one `keys!` table,
//! the only place a [`Key`] is made, and reads values only through a `Key`. So a key cannot be
//! read without being known, and the known keys (what a typo is checked against) are derived
//! from the tables instead of kept in sync by hand.

/// A configuration key farine reads, made only by `keys!` tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key(&'static str);

impl Key {
    /// Only for `keys!`: a key made anywhere else would not be in a table.
    #[doc(hidden)]
    pub(super) const fn declared(name: &'static str) -> Key {
        Key(name)
    }

    /// The key as written in farine.ini (lowercase).
    pub(crate) const fn name(self) -> &'static str {
        self.0
    }
}

/// Declares the keys of one settings module: a [`Key`] constant per key, and `$table`, the
/// list of them all that makes them known.
macro_rules! keys {
    ($table:ident: $($(#[$doc:meta])* $konst:ident = $name:literal,)*) => {
        $($(#[$doc])* pub(super) const $konst: $crate::config::keys::Key =
            $crate::config::keys::Key::declared($name);)*
        /// Every key this module reads: what makes them known keys.
        pub(super) const $table: &[$crate::config::keys::Key] = &[$($konst),*];
    };
}
pub(super) use keys;

keys! {
    PYTHON_KEYS:
    /// Python farine 0.19's SSE headers (which it never sent): accepted, ignored.
    HEADERS = "headers",
    /// Python farine 0.19's publisher retry flag: accepted, ignored (farine's publishes wait
    /// for the connection and are confirmed).
    RETRY = "retry",
    /// Python farine 0.19's serializer (always JSON): accepted, ignored.
    SERIALIZER = "serializer",
}

/// Every table of keys; a key in none of them is unknown.
const TABLES: &[&[Key]] = &[
    super::service::KEYS,
    super::db::KEYS,
    super::sse::KEYS,
    super::process::KEYS,
    super::log::KEYS,
    super::gateway::KEYS,
    PYTHON_KEYS,
];

/// Families of keys, by prefix.
const PREFIXES: &[&str] = &[super::sse::HEADER_PREFIX];

/// Every known key, in table order.
pub(super) fn known_keys() -> impl Iterator<Item = &'static str> {
    TABLES
        .iter()
        .flat_map(|table| table.iter().map(|key| key.name()))
}

/// Whether farine reads `key` (lowercase).
pub(super) fn is_known_key(key: &str) -> bool {
    known_keys().any(|known| known == key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The known key closest to a misspelt one, if one is close enough to be what was meant.
pub(super) fn suggestion(key: &str) -> Option<&'static str> {
    known_keys()
        .map(|known| (edit_distance(key, known), known))
        .filter(|&(distance, known)| distance <= 3 && distance < known.len().min(key.len()))
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_lowercase_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for key in known_keys() {
            assert_eq!(key, key.to_ascii_lowercase(), "{key}");
            assert!(seen.insert(key), "{key} is declared twice");
        }
        // Every key the old hand-kept list had is still known.
        for key in [
            "amqp_uri",
            "type",
            "durable",
            "auto_declare",
            "delivery_mode",
            "exclusive",
            "auto_delete",
            "enabled",
            "concurrency",
            "prefetch",
            "shutdown_grace",
            "heartbeat",
            "rpc_timeout",
            "retry_attempts",
            "retry_delay",
            "retry_max_delay",
            "max_message_bytes",
            "endpoint",
            "db_connector",
            "db_url",
            "db_name",
            "db_user",
            "db_password",
            "db_host",
            "db_port",
            "db_max_conn",
            "db_stale_timeout",
            "db_timeout",
            "db_stream_share",
            "headers",
            "idle_timeout",
            "retry",
            "serializer",
            "amqp_ca_file",
            "header.authorization",
            "http_listen",
            "otlp_endpoint",
        ] {
            assert!(is_known_key(key), "{key}");
        }
        assert!(!is_known_key("concurency"));
        assert_eq!(suggestion("concurency"), Some("concurrency"));
        assert_eq!(suggestion("zzzzzz"), None);
    }
}
