//! Configuration loading, layering, typing, env substitution and redaction. No broker needed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use farine::config::{redact_uri, AmqpUri, Config, ExchangeKind, GatewaySettings, ServiceConfig};
use farine::Error;

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn config(text: &str) -> Config {
    Config::from_str(text, "test.ini").expect("valid ini")
}

/// A config with a usable DEFAULT and the given `[calc]` body.
fn calc_with(body: &str) -> farine::Result<ServiceConfig> {
    config(&format!("[DEFAULT]\namqp_uri = {URI}\n[calc]\n{body}\n")).service("calc")
}

/// Asserts `err` is an `Error::Config` about `section`/`key` whose message contains `expected`,
/// and that its text names all of them.
fn assert_config_error(err: Error, section: &str, key: &str, expected: &str) {
    let text = err.to_string();
    match err {
        Error::Config {
            file,
            section: s,
            key: k,
            message,
        } => {
            assert_eq!(file, PathBuf::from("test.ini"), "{text}");
            assert_eq!(s, section, "{text}");
            assert_eq!(k, key, "{text}");
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(
                text.starts_with(&format!("test.ini [{section}] {key}: ")),
                "{text}"
            );
        }
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[test]
fn built_in_defaults_apply_without_a_section() {
    let config = config(&format!("[DEFAULT]\namqp_uri = {URI}\n"));
    assert!(!config.has_section("calc"));
    let calc = config.service("calc").unwrap();
    assert_eq!(calc.name, "calc");
    assert_eq!(calc.file, PathBuf::from("test.ini"));
    assert_eq!(calc.amqp_uri.expose(), URI);
    assert_eq!(calc.exchange_type, ExchangeKind::Direct);
    assert!(calc.durable);
    assert!(calc.auto_declare);
    assert_eq!(calc.delivery_mode, 2);
    assert!(!calc.exclusive);
    assert!(!calc.auto_delete);
    assert!(calc.enabled);
    assert_eq!(calc.concurrency, 10);
    assert_eq!(calc.shutdown_grace, Duration::from_secs(30));
    assert_eq!(calc.heartbeat, 30);
    assert_eq!(calc.rpc_timeout, Duration::from_secs(30));
    assert_eq!(calc.retry_attempts, 3);
    assert_eq!(calc.retry_delay, Duration::from_secs(1));
    assert_eq!(calc.retry_max_delay, Duration::from_secs(60));
    assert_eq!(calc.max_message_bytes, 16_777_216);
    assert_eq!(calc.endpoint, None);
    assert_eq!(calc.raw("amqp_uri"), Some(URI));
    assert_eq!(calc.raw("db_url"), None);
}

#[test]
fn default_section_falls_through_and_sections_override() {
    let config = config(&format!(
        "[DEFAULT]\namqp_uri = {URI}\nconcurrency = 4\nheartbeat = 5\ndb_name = common\n\
         [calc]\nconcurrency = 8\n\
         [shop]\ndb_name = shop\n"
    ));
    let calc = config.service("calc").unwrap();
    assert_eq!(calc.concurrency, 8);
    assert_eq!(calc.heartbeat, 5);
    assert_eq!(calc.raw("db_name"), Some("common"));
    let shop = config.service("shop").unwrap();
    assert_eq!(shop.concurrency, 4);
    assert_eq!(shop.raw("db_name"), Some("shop"));
}

#[test]
fn amqp_uri_may_be_set_only_in_the_section() {
    let config = config("[DEFAULT]\n[calc]\namqp_uri = amqps://broker.example/vhost\n");
    assert_eq!(
        config.service("calc").unwrap().amqp_uri.expose(),
        "amqps://broker.example/vhost"
    );
    let err = config.service("shop").unwrap_err();
    assert_config_error(err, "shop", "amqp_uri", "required");
}

#[test]
fn amqp_uri_is_required_and_checked() {
    let err = config("[DEFAULT]\n[calc]\n").service("calc").unwrap_err();
    assert_config_error(err, "calc", "amqp_uri", "amqp:// or amqps://");

    let err = config("[DEFAULT]\namqp_uri = http://u:secret@host/\n")
        .service("calc")
        .unwrap_err();
    assert_config_error(err, "DEFAULT", "amqp_uri", "amqp:// or amqps://");

    let err = config("[DEFAULT]\namqp_uri = http://u:secret@host/\n")
        .service("calc")
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(err.to_string().contains("http://u:***@host/"), "{err}");
}

#[test]
fn booleans() {
    for (text, want) in [
        ("true", true),
        ("TRUE", true),
        ("yes", true),
        ("On", true),
        ("1", true),
        ("false", false),
        ("no", false),
        ("OFF", false),
        ("0", false),
    ] {
        for key in [
            "durable",
            "auto_declare",
            "exclusive",
            "auto_delete",
            "enabled",
        ] {
            let calc = calc_with(&format!("{key} = {text}")).unwrap();
            let got = match key {
                "durable" => calc.durable,
                "auto_declare" => calc.auto_declare,
                "exclusive" => calc.exclusive,
                "auto_delete" => calc.auto_delete,
                _ => calc.enabled,
            };
            assert_eq!(got, want, "{key} = {text}");
        }
    }
    for key in [
        "durable",
        "auto_declare",
        "exclusive",
        "auto_delete",
        "enabled",
    ] {
        let err = calc_with(&format!("{key} = yes please")).unwrap_err();
        assert_config_error(err, "calc", key, "expected true or false");
        let err = calc_with(&format!("{key} = yes please")).unwrap_err();
        assert!(err.to_string().contains("got \"yes please\""), "{err}");
    }
}

#[test]
fn enabled_false_is_reported() {
    let calc = calc_with("enabled = false").unwrap();
    assert!(!calc.enabled);
}

#[test]
fn durations() {
    for (text, want) in [
        ("30s", Duration::from_secs(30)),
        ("500ms", Duration::from_millis(500)),
        ("2m", Duration::from_secs(120)),
        ("1h 30m", Duration::from_secs(5400)),
        ("1h30m", Duration::from_secs(5400)),
        ("1.5h", Duration::from_secs(5400)),
        ("5 seconds", Duration::from_secs(5)),
        ("45", Duration::from_secs(45)),
        ("0.5", Duration::from_millis(500)),
        ("0", Duration::ZERO),
    ] {
        let calc = calc_with(&format!(
            "shutdown_grace = {text}\nretry_delay = {text}\nretry_max_delay = {text}"
        ))
        .unwrap();
        assert_eq!(calc.shutdown_grace, want, "{text}");
        assert_eq!(calc.retry_delay, want, "{text}");
        assert_eq!(calc.retry_max_delay, want, "{text}");
        if !want.is_zero() {
            let calc = calc_with(&format!("rpc_timeout = {text}")).unwrap();
            assert_eq!(calc.rpc_timeout, want, "{text}");
        }
    }
    for key in [
        "shutdown_grace",
        "rpc_timeout",
        "retry_delay",
        "retry_max_delay",
    ] {
        for bad in ["soon", "-1", "10 parsecs", "inf"] {
            let err = calc_with(&format!("{key} = {bad}")).unwrap_err();
            assert_config_error(err, "calc", key, "expected a duration");
        }
    }
    let err = calc_with("rpc_timeout = 0").unwrap_err();
    assert_config_error(err, "calc", "rpc_timeout", "greater than zero");
}

#[test]
fn integers_are_range_checked() {
    assert_eq!(calc_with("concurrency = 1").unwrap().concurrency, 1);
    assert_eq!(calc_with("concurrency = 65535").unwrap().concurrency, 65535);
    for bad in ["0", "65536", "-1", "lots", "2.5"] {
        let err = calc_with(&format!("concurrency = {bad}")).unwrap_err();
        assert_config_error(err, "calc", "concurrency", "from 1 to 65535");
    }
    let err = calc_with("concurrency = lots").unwrap_err();
    assert_eq!(
        err.to_string(),
        "test.ini [calc] concurrency: expected a whole number from 1 to 65535, got \"lots\""
    );

    assert_eq!(calc_with("heartbeat = 0").unwrap().heartbeat, 0);
    assert_eq!(calc_with("heartbeat = 600").unwrap().heartbeat, 600);
    for bad in ["65536", "-5", "often"] {
        let err = calc_with(&format!("heartbeat = {bad}")).unwrap_err();
        assert_config_error(err, "calc", "heartbeat", "from 0 to 65535");
    }

    assert_eq!(calc_with("retry_attempts = 0").unwrap().retry_attempts, 0);
    assert_eq!(
        calc_with("retry_attempts = 100").unwrap().retry_attempts,
        100
    );
    // Each retry may need a delay queue: billions of them aborted the start on allocation.
    for bad in ["-1", "101", "4294967295", "4294967296", "forever"] {
        let err = calc_with(&format!("retry_attempts = {bad}")).unwrap_err();
        assert_config_error(
            err,
            "calc",
            "retry_attempts",
            "expected a whole number from 0 to 100",
        );
    }
}

#[test]
fn durations_and_sizes_are_bounded() {
    let week = Duration::from_secs(7 * 24 * 3600);
    for key in [
        "shutdown_grace",
        "rpc_timeout",
        "retry_delay",
        "retry_max_delay",
    ] {
        assert_eq!(
            format!(
                "{:?}",
                calc_with(&format!("{key} = 7d")).map(|c| typed_fields(&c))
            ),
            format!(
                "{:?}",
                calc_with(&format!("{key} = 604800")).map(|c| typed_fields(&c))
            ),
        );
        for bad in ["8d", "604801", "1e30", "100000000000000000000y"] {
            let err = calc_with(&format!("{key} = {bad}")).unwrap_err();
            assert_config_error(err, "calc", key, "at most 7 days");
        }
    }
    assert_eq!(calc_with("rpc_timeout = 7d").unwrap().rpc_timeout, week);
    assert_eq!(
        calc_with("max_message_bytes = 512MiB")
            .unwrap()
            .max_message_bytes,
        512 << 20
    );
    for bad in ["513MiB", "1GiB", "18446744073709551615"] {
        let err = calc_with(&format!("max_message_bytes = {bad}")).unwrap_err();
        assert_config_error(err, "calc", "max_message_bytes", "from 1 to 512MiB");
    }
}

#[test]
fn database_numbers_are_bounded() {
    let db = |body: &str| {
        calc_with(&format!(
            "db_connector = postgres\ndb_url = postgres://u@127.0.0.1/test\n{body}"
        ))
        .and_then(|calc| farine::db::DbSettings::from_settings(&calc))
    };
    for (key, bad, expected) in [
        ("db_max_conn", "4294967295", "from 1 to 10000"),
        ("db_max_conn", "0", "from 1 to 10000"),
        // from_secs_f64 panicked on these before.
        ("db_timeout", "1e30", "at most 7 days"),
        ("db_stale_timeout", "8d", "at most 7 days"),
        ("db_stream_share", "0", "from 1 to db_max_conn = 10"),
        ("db_stream_share", "11", "from 1 to db_max_conn = 10"),
        ("db_stream_share", "1.5", "fraction of the pool"),
        ("db_stream_share", "half", "fraction of the pool"),
    ] {
        let err = db(&format!("{key} = {bad}")).unwrap_err();
        assert_config_error(err, "calc", key, expected);
    }
    let share = |body: &str| db(body).unwrap().unwrap().stream_connections;
    assert_eq!(share(""), 5);
    assert_eq!(share("db_max_conn = 1"), 1);
    assert_eq!(share("db_max_conn = 2"), 1);
    assert_eq!(share("db_stream_share = 3"), 3);
    assert_eq!(share("db_stream_share = 0.25"), 2);
    assert_eq!(share("db_stream_share = 80%"), 8);
    assert_eq!(share("db_stream_share = 0.01"), 1);
}

#[test]
fn an_empty_db_password_means_no_password() {
    let db = |password_line: &str| {
        calc_with(&format!(
            "db_connector = postgres\ndb_host = 127.0.0.1\ndb_name = test\n\
             db_user = postgres\n{password_line}"
        ))
        .and_then(|calc| farine::db::DbSettings::from_settings(&calc))
    };
    // As Python farine accepts it, for trust or peer authentication.
    assert!(db("db_password =").unwrap().is_some());
    assert!(db("db_password = ${FARINE_TEST_UNSET_PASSWORD:}")
        .unwrap()
        .is_some());
    assert!(db("db_password = secret").unwrap().is_some());
    // A password never written is still an error: it is more likely forgotten than meant.
    let err = db("").unwrap_err();
    assert_config_error(err, "calc", "db_password", "db_password =");
}

#[test]
fn a_file_over_1_mib_is_refused_without_reading_it_whole() {
    let dir = std::env::temp_dir().join(format!("farine-config-test-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.ini");
    let mut text = format!("[DEFAULT]\namqp_uri = {URI}\n");
    while text.len() <= 1024 * 1024 {
        text.push_str("; padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, &text).unwrap();
    let err = Config::load(&big).unwrap_err();
    assert!(
        matches!(&err, Error::ConfigFile { file, .. } if file == &big),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");

    // An endless file: before, this read until memory ran out.
    let err = Config::load("/dev/zero").unwrap_err();
    assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");

    let binary = dir.join("binary.ini");
    std::fs::write(&binary, b"[DEFAULT]\n\xff\xfe\n").unwrap();
    let err = Config::load(&binary).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.to_string().contains("not UTF-8 text"), "{err}");
}

#[test]
fn an_unknown_key_in_a_service_section_is_an_error_with_a_suggestion() {
    let err = calc_with("concurency = 3").unwrap_err();
    assert_config_error(
        err,
        "calc",
        "concurency",
        "unknown configuration key (did you mean concurrency?)",
    );
    let err = calc_with("db_pasword = x").unwrap_err();
    assert_config_error(err, "calc", "db_pasword", "did you mean db_password?");
    let err = calc_with("frobnicate = 1").unwrap_err();
    assert_config_error(
        err,
        "calc",
        "frobnicate",
        "farine.ini.example lists every key",
    );
    // Reported before the section's other errors, since it may explain them.
    let err = calc_with("concurrency = lots\nrpc_timout = 5s").unwrap_err();
    assert_config_error(err, "calc", "rpc_timout", "did you mean rpc_timeout?");
    // Another service's section is not this service's business.
    let config = config(&format!(
        "[DEFAULT]\namqp_uri = {URI}\n[calc]\n[shop]\nconcurency = 2\n"
    ));
    assert!(config.service("calc").is_ok());
    assert!(config.service("shop").is_err());
}

#[test]
fn max_message_bytes() {
    for (text, want) in [
        ("1024", 1024),
        ("512KiB", 512 * 1024),
        ("16MiB", 16 << 20),
        ("256 mib", 256 << 20),
    ] {
        assert_eq!(
            calc_with(&format!("max_message_bytes = {text}"))
                .unwrap()
                .max_message_bytes,
            want,
            "{text}"
        );
    }
    for bad in ["0", "big", "-1", "1.5MiB", "16MB"] {
        let err = calc_with(&format!("max_message_bytes = {bad}")).unwrap_err();
        assert_config_error(err, "calc", "max_message_bytes", "a number of bytes");
    }
}

#[test]
fn delivery_mode() {
    for (text, want) in [("1", 1), ("transient", 1), ("2", 2), ("Persistent", 2)] {
        assert_eq!(
            calc_with(&format!("delivery_mode = {text}"))
                .unwrap()
                .delivery_mode,
            want
        );
    }
    for bad in ["0", "3", "durable"] {
        let err = calc_with(&format!("delivery_mode = {bad}")).unwrap_err();
        assert_config_error(
            err,
            "calc",
            "delivery_mode",
            "1 (transient) or 2 (persistent)",
        );
    }
}

#[test]
fn exchange_type() {
    for (text, want) in [
        ("direct", ExchangeKind::Direct),
        ("TOPIC", ExchangeKind::Topic),
        ("Fanout", ExchangeKind::Fanout),
        ("headers", ExchangeKind::Headers),
    ] {
        let calc = calc_with(&format!("type = {text}")).unwrap();
        assert_eq!(calc.exchange_type, want);
        assert_eq!(calc.exchange_type.as_str(), text.to_lowercase());
    }
    let err = calc_with("type = broadcast").unwrap_err();
    assert_config_error(
        err,
        "calc",
        "type",
        "expected one of direct, topic, fanout, headers, got \"broadcast\"",
    );
    assert!("nope".parse::<ExchangeKind>().is_err());
}

#[test]
fn endpoint() {
    let calc = calc_with("endpoint = https://feed.example/events").unwrap();
    assert_eq!(
        calc.endpoint.as_deref(),
        Some("https://feed.example/events")
    );
    let err = calc_with("endpoint = ftp://feed.example").unwrap_err();
    assert_config_error(err, "calc", "endpoint", "http:// or https://");
}

#[test]
fn empty_values_mean_the_built_in_default() {
    let calc = calc_with("concurrency =\ndurable =\nendpoint =").unwrap();
    assert_eq!(calc.concurrency, 10);
    assert!(calc.durable);
    assert_eq!(calc.endpoint, None);
    assert_eq!(calc.raw("concurrency"), Some(""));
}

#[test]
fn errors_name_default_when_the_value_came_from_there() {
    let config = config(&format!(
        "[DEFAULT]\namqp_uri = {URI}\nconcurrency = zero\n[calc]\n[shop]\nconcurrency = 2\n"
    ));
    assert_config_error(
        config.service("calc").unwrap_err(),
        "DEFAULT",
        "concurrency",
        "expected a whole number",
    );
    // A section value shadows the bad DEFAULT.
    assert_eq!(config.service("shop").unwrap().concurrency, 2);
}

#[test]
fn env_substitution() {
    std::env::set_var("FARINE_TEST_ENV_HOST", "rabbit.internal");
    std::env::set_var("FARINE_TEST_ENV_CONC", "7");
    std::env::set_var("FARINE_TEST_ENV_EMPTY", "");
    std::env::remove_var("FARINE_TEST_ENV_UNSET");
    let calc = calc_with(
        "amqp_uri = amqp://${FARINE_TEST_ENV_UNSET:guest}:pw@${FARINE_TEST_ENV_HOST}:5672/%2f\n\
         concurrency = ${FARINE_TEST_ENV_CONC:99}\n\
         heartbeat = ${FARINE_TEST_ENV_UNSET:12}\n\
         db_name = ${FARINE_TEST_ENV_UNSET:}\n\
         db_user = ${FARINE_TEST_ENV_EMPTY:fallback}\n\
         db_host = ${FARINE_TEST_ENV_UNSET:-shell-style}\n\
         db_port = ${FARINE_TEST_ENV_EMPTY}",
    )
    .unwrap();
    assert_eq!(
        calc.amqp_uri.expose(),
        "amqp://guest:pw@rabbit.internal:5672/%2f"
    );
    assert_eq!(calc.concurrency, 7);
    assert_eq!(calc.heartbeat, 12);
    assert_eq!(calc.raw("db_name"), Some(""));
    assert_eq!(calc.raw("db_user"), Some("fallback"));
    assert_eq!(calc.raw("db_host"), Some("shell-style"));
    assert_eq!(calc.raw("db_port"), Some(""));
}

#[test]
fn env_substitution_checks_the_substituted_value() {
    std::env::set_var("FARINE_TEST_SUBST_BAD", "plenty");
    let err = calc_with("concurrency = ${FARINE_TEST_SUBST_BAD}").unwrap_err();
    assert_config_error(err, "calc", "concurrency", "got \"plenty\"");
}

#[test]
fn env_substitution_unset_variable_is_an_error() {
    std::env::remove_var("FARINE_TEST_UNSET_NO_DEFAULT");
    let err = calc_with("db_password = ${FARINE_TEST_UNSET_NO_DEFAULT}").unwrap_err();
    assert_config_error(err, "calc", "db_password", "FARINE_TEST_UNSET_NO_DEFAULT");
    let err = calc_with("db_password = ${FARINE_TEST_UNSET_NO_DEFAULT}").unwrap_err();
    assert!(err.to_string().contains("not set"), "{err}");

    // In DEFAULT it is reported against DEFAULT, even for a service without a section.
    let err = config(&format!(
        "[DEFAULT]\namqp_uri = {URI}\ndb_url = ${{FARINE_TEST_UNSET_NO_DEFAULT}}\n"
    ))
    .service("shop")
    .unwrap_err();
    assert_config_error(err, "DEFAULT", "db_url", "FARINE_TEST_UNSET_NO_DEFAULT");
}

#[test]
fn env_substitution_syntax_errors() {
    let err = calc_with("db_name = ${FARINE_TEST_UNCLOSED").unwrap_err();
    assert_config_error(err, "calc", "db_name", "to close");
    let err = calc_with("db_name = ${}").unwrap_err();
    assert_config_error(err, "calc", "db_name", "environment variable name");
    let err = calc_with("db_name = ${NOT-A-NAME}").unwrap_err();
    assert_config_error(err, "calc", "db_name", "environment variable name");
    // A lone `$` is kept as is.
    assert_eq!(
        calc_with("db_name = cost$5").unwrap().raw("db_name"),
        Some("cost$5")
    );
}

#[test]
fn names_and_keys_are_case_insensitive() {
    let config = config(&format!(
        "[Default]\nAMQP_URI = {URI}\nConcurrency = 3\n[Calc]\nDURABLE = Off\nType = Topic\n"
    ));
    assert!(config.has_section("calc"));
    assert!(config.has_section("CALC"));
    assert_eq!(config.sections(), ["calc"]);
    for name in ["calc", "Calc", "CALC"] {
        let calc = config.service(name).unwrap();
        assert_eq!(calc.concurrency, 3);
        assert!(!calc.durable);
        assert_eq!(calc.exchange_type, ExchangeKind::Topic);
        assert_eq!(calc.raw("Durable"), Some("Off"));
    }
    // Errors name the section as written in the file.
    let err = Config::from_str(
        "[DEFAULT]\namqp_uri = amqp://h\n[Calc]\nheartbeat = x\n",
        "test.ini",
    )
    .unwrap()
    .service("calc")
    .unwrap_err();
    assert_config_error(err, "Calc", "heartbeat", "from 0 to 65535");
}

#[test]
fn upper_case_default_section_is_found() {
    let config = config(&format!("[DEFAULT]\namqp_uri = {URI}\n"));
    assert!(config.sections().is_empty());
    assert!(config.service("anything").is_ok());
}

#[test]
fn sections_exclude_default_and_are_sorted() {
    let config = config("[DEFAULT]\n[shop]\n[calc]\n[Feed]\n");
    assert_eq!(config.sections(), ["calc", "feed", "shop"]);
    assert!(!config.has_section("default"));
}

#[test]
fn amqp_uri_display_and_debug_hide_the_password() {
    let uri = AmqpUri::new("amqp://guest:hunter2@host:5672/%2f");
    assert_eq!(uri.to_string(), "amqp://guest:***@host:5672/%2f");
    assert_eq!(
        format!("{uri:?}"),
        "AmqpUri(\"amqp://guest:***@host:5672/%2f\")"
    );
    assert_eq!(uri.expose(), "amqp://guest:hunter2@host:5672/%2f");
    // No password: nothing to hide.
    assert_eq!(
        AmqpUri::new("amqps://host/vh").to_string(),
        "amqps://host/vh"
    );
}

#[test]
fn redact_uri_handles_other_urls() {
    assert_eq!(
        redact_uri("postgres://shop:hunter2@db:5432/shop"),
        "postgres://shop:***@db:5432/shop"
    );
    assert_eq!(
        redact_uri("postgres://shop:hun@ter/2@db/shop"),
        "postgres://shop:***@db/shop"
    );
    assert_eq!(
        redact_uri("postgres://db/shop?user=shop&password=hunter2&ssl=on"),
        "postgres://db/shop?user=shop&password=***&ssl=on"
    );
    assert_eq!(
        redact_uri("a amqp://u:p1@h and https://v:p2@w"),
        "a amqp://u:***@h and https://v:***@w"
    );
    assert_eq!(redact_uri("https://example.com/x"), "https://example.com/x");
}

#[test]
fn debug_output_hides_every_password() {
    let config = config(
        "[DEFAULT]\namqp_uri = amqp://guest:amqp-secret@host/%2f\n\
         [shop]\n\
         db_url = postgres://shop:url-secret@db/shop\n\
         db_password = plain-secret\n\
         header.Authorization = Bearer header-secret\n\
         endpoint = https://feed:endpoint-secret@feed.example/events\n\
         db_name = shop\n",
    );
    let shop = config.service("shop").unwrap();
    let debug = format!("{shop:?}");
    let pretty = format!("{shop:#?}");
    let config_debug = format!("{config:?}");
    for text in [&debug, &pretty, &config_debug] {
        for secret in [
            "amqp-secret",
            "url-secret",
            "plain-secret",
            "header-secret",
            "endpoint-secret",
        ] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert!(text.contains("shop"), "{text}");
    }
    assert!(debug.contains("amqp://guest:***@host/%2f"), "{debug}");
    assert!(debug.contains("postgres://shop:***@db/shop"), "{debug}");
    // The real values stay available to the code that needs them.
    assert_eq!(shop.raw("db_password"), Some("plain-secret"));
    assert_eq!(shop.amqp_uri.expose(), "amqp://guest:amqp-secret@host/%2f");
}

#[test]
fn bad_secret_values_are_not_echoed_in_errors() {
    let err = calc_with("db_password = hunter2")
        .unwrap()
        .parse::<u32>("db_password", "a number")
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn raw_parse_and_error_for_other_modules() {
    let calc = calc_with("db_port = 5432\ndb_max_conn = many\nheader.Accept = text/plain").unwrap();
    assert_eq!(calc.parse::<u16>("db_port", "a port").unwrap(), Some(5432));
    assert_eq!(calc.parse::<u16>("DB_PORT", "a port").unwrap(), Some(5432));
    assert_eq!(calc.parse::<u16>("db_timeout", "a number").unwrap(), None);
    let err = calc
        .parse::<u32>("db_max_conn", "a whole number of connections")
        .unwrap_err();
    assert_config_error(
        err,
        "calc",
        "db_max_conn",
        "expected a whole number of connections, got \"many\"",
    );
    assert_config_error(
        calc.error("db_connector", "expected postgres, got \"oracle\""),
        "calc",
        "db_connector",
        "expected postgres",
    );
    assert_config_error(
        calc.error("amqp_uri", "whatever"),
        "DEFAULT",
        "amqp_uri",
        "whatever",
    );
    let headers: Vec<_> = calc.raw_prefixed("header.").collect();
    assert_eq!(headers, [("header.accept", "text/plain")]);
}

#[test]
fn keys_outside_a_section_are_rejected() {
    let err = Config::from_str("amqp_uri = amqp://h\n[calc]\n", "test.ini").unwrap_err();
    match err {
        Error::ConfigFile { file, message } => {
            assert_eq!(file, PathBuf::from("test.ini"));
            assert!(message.contains("amqp_uri"), "{message}");
            assert!(message.contains("before any [section]"), "{message}");
        }
        other => panic!("expected Error::ConfigFile, got {other:?}"),
    }
}

#[test]
fn invalid_ini_is_a_file_error() {
    let err = Config::from_str("[DEFAULT]\njust some words\nkey = 1\n", "test.ini").unwrap_err();
    match err {
        Error::ConfigFile { file, message } => {
            assert_eq!(file, PathBuf::from("test.ini"));
            assert!(message.contains("key = value"), "{message}");
            assert!(message.contains("just some words"), "{message}");
        }
        other => panic!("expected Error::ConfigFile, got {other:?}"),
    }
    let err = Config::from_str("[DEFAULT]\nunfinished", "test.ini").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("test.ini: not a valid INI file: line 2, column"),
        "{err}"
    );
    let err = Config::from_str("[DEFAULT\n", "test.ini").unwrap_err();
    assert!(err.to_string().contains("not a valid INI file"), "{err}");
}

#[test]
fn dotted_and_empty_sections_are_kept() {
    let config = config("[DEFAULT]\namqp_uri = amqp://h\n[my.service]\nconcurrency = 2\n[empty]\n");
    assert_eq!(config.sections(), ["empty", "my.service"]);
    assert_eq!(config.service("my.service").unwrap().concurrency, 2);
}

#[test]
fn missing_file_says_what_to_do() {
    let path = std::env::temp_dir().join(format!(
        "farine-config-test-missing-{}.ini",
        std::process::id()
    ));
    let err = Config::load(&path).unwrap_err();
    match &err {
        Error::ConfigFile { file, message } => {
            assert_eq!(file, &path);
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("FARINE_INI"), "{message}");
            assert!(message.contains("create"), "{message}");
        }
        other => panic!("expected Error::ConfigFile, got {other:?}"),
    }
}

#[test]
fn loads_a_real_file() {
    let path = std::env::temp_dir().join(format!(
        "farine-config-test-load-{}-{:?}.ini",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(
        &path,
        format!("[DEFAULT]\namqp_uri = {URI}\n\n# a comment\n[calc]\nconcurrency = 12\n"),
    )
    .unwrap();
    let loaded = Config::load(&path);
    std::fs::remove_file(&path).unwrap();
    let config = loaded.unwrap();
    assert_eq!(config.path(), path.as_path());
    let calc = config.service("calc").unwrap();
    assert_eq!(calc.concurrency, 12);
    assert_eq!(calc.file, path);
}

#[test]
fn the_example_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../farine.ini.example");
    let config = Config::load(path).unwrap();
    // One section per example service, each valid as written.
    // (And [gateway], for `farine gateway`: its keys, all commented out.)
    assert_eq!(
        config.sections(),
        ["calc", "gateway", "ledger", "relay", "todo"]
    );
    for name in ["ledger", "todo"] {
        let service = config.service(name).unwrap();
        assert!(
            farine::db::DbSettings::from_settings(&service)
                .unwrap()
                .is_some(),
            "{name}"
        );
    }
    assert!(config.service("relay").unwrap().endpoint.is_some());
    let calc = config.service("calc").unwrap();
    assert_eq!(calc.amqp_uri.expose(), URI);
    assert_eq!(calc.concurrency, 10);
    assert!(calc.enabled);
    // Every key the example documents is one farine knows, as the commented lines show it.
    let text = std::fs::read_to_string(path).unwrap();
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
        "shutdown_grace",
        "heartbeat",
        "rpc_timeout",
        "retry_attempts",
        "retry_delay",
        "retry_max_delay",
        "max_message_bytes",
        "endpoint",
        "log_format",
        "log_level",
        // [gateway]
        "listen",
        "expose",
        "subscribe",
        "auth_tokens",
        "auth_jwt_secret",
        "allowed_origins",
        "static_dir",
        "max_body_bytes",
        "max_ws_message_bytes",
        "max_calls_per_connection",
        "max_calls_per_second",
        "max_http_calls",
        "max_subscriptions_per_connection",
        "send_queue",
        "replay_events",
    ] {
        assert!(
            text.lines().any(|line| line
                .trim_start_matches(';')
                .starts_with(&format!("{key} ="))),
            "farine.ini.example does not document {key}"
        );
    }
    // The commented values, uncommented, are the built-in defaults (db_*, header.*,
    // endpoint, and the gateway's lists, tokens and folder have none: their values are
    // examples).
    let examples = [
        "db_",
        "header.",
        "endpoint",
        "expose",
        "subscribe",
        "auth_",
        "allowed_origins",
        "static_dir",
    ];
    let uncommented: Vec<&str> = text
        .lines()
        .map(|line| match line.strip_prefix(';') {
            Some(bare)
                if bare.starts_with(|c: char| c.is_ascii_lowercase())
                    && bare.contains(" = ")
                    && !examples.iter().any(|example| bare.starts_with(example)) =>
            {
                bare
            }
            _ => line,
        })
        .collect();
    // ([calc]'s examples are uncommented too, so look at a service without a section.)
    let uncommented = Config::from_str(&uncommented.join("\n"), "test.ini").unwrap();
    let with_defaults = uncommented.service("shop").unwrap();
    assert_eq!(
        typed_fields(&with_defaults),
        typed_fields(&calc_with("").unwrap())
    );
    let gateway = |config: &Config| {
        let settings = GatewaySettings::from_settings(&config.service("gateway").unwrap());
        format!("{:?}", settings.unwrap())
    };
    assert_eq!(
        gateway(&uncommented),
        gateway(&self::config(&format!(
            "[DEFAULT]\namqp_uri = {URI}\n[gateway]\n"
        )))
    );
}

/// Every typed field of a service, for comparing two of them.
fn typed_fields(s: &ServiceConfig) -> String {
    format!(
        "{:?}",
        (
            (s.exchange_type, s.durable, s.auto_declare, s.delivery_mode),
            (s.exclusive, s.auto_delete, s.enabled, s.concurrency),
            (
                s.shutdown_grace,
                s.heartbeat,
                s.rpc_timeout,
                s.retry_attempts
            ),
            (
                s.retry_delay,
                s.retry_max_delay,
                s.max_message_bytes,
                &s.endpoint
            ),
        )
    )
}

#[test]
fn unknown_keys_in_default_are_warned_about_once() {
    let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Writer(sink.clone()))
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let text = format!(
            "[DEFAULT]\namqp_uri = {URI}\nconcurency = 3\nother_program = 1\n[calc]\n\
             db_stream_share = 1\nheader.X-Trace = 1\nserializer = json\n"
        );
        for _ in 0..2 {
            let config = Config::from_str(&text, "warn-test.ini").unwrap();
            assert!(config.service("calc").is_ok());
        }
    });
    let out = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    assert_eq!(
        out.matches("warn-test.ini [DEFAULT] concurency: unknown configuration key, ignored (did you mean concurrency?)").count(),
        1,
        "{out}"
    );
    assert_eq!(
        out.matches("warn-test.ini [DEFAULT] other_program").count(),
        1,
        "{out}"
    );
    assert!(out.contains("WARN"), "{out}");
    for known in [
        "db_stream_share",
        "header.x-trace",
        "serializer",
        "amqp_uri",
    ] {
        assert!(!out.contains(known), "{known} warned about: {out}");
    }
}

/// Collects log output for `unknown_keys_in_default_are_warned_about_once`.
struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn typed_settings_of_other_modules() {
    // The broker's CA file, typed here so that no other module reads a key.
    assert_eq!(calc_with("").unwrap().amqp_ca_file, None);
    assert_eq!(calc_with("amqp_ca_file =").unwrap().amqp_ca_file, None);
    assert_eq!(
        calc_with("amqp_ca_file = /etc/ssl/ca.pem")
            .unwrap()
            .amqp_ca_file,
        Some(PathBuf::from("/etc/ssl/ca.pem"))
    );
    // The SSE listener's keys.
    let sse = |body: &str| farine::config::SseSettings::from_settings(&calc_with(body).unwrap());
    let settings = sse("header.X-Trace = 1\nheader.X-Empty =\nidle_timeout = 2m").unwrap();
    assert_eq!(settings.headers, [("x-trace".to_string(), "1".to_string())]);
    assert_eq!(settings.idle_timeout, Duration::from_secs(120));
    assert_eq!(
        sse("").unwrap().idle_timeout,
        farine::config::DEFAULT_IDLE_TIMEOUT
    );
    assert_config_error(
        sse("idle_timeout = 8d").unwrap_err(),
        "calc",
        "idle_timeout",
        "at most 7 days",
    );
    assert_config_error(
        sse("header.Bad Name = 1").unwrap_err(),
        "calc",
        "header.bad name",
        "HTTP header name",
    );
}
