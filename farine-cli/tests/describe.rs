//! `farine describe --start calc`: builds the example, runs it in describe mode (no broker),
//! and prints an AsyncAPI 3.0.0 document valid against the official schema, which holds calc's
//! RPC methods, consumers and publisher under their wire names.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// The official schema, vendored: see farine/tests/fixtures/README.md.
const ASYNCAPI_SCHEMA: &str = include_str!("../../farine/tests/fixtures/asyncapi-3.0.0.json");

fn describe_calc(ini: Option<&Path>) -> Value {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_farine"));
    cmd.args(["describe", "--start", "calc"])
        .current_dir(root)
        .stdin(Stdio::null());
    match ini {
        Some(ini) => cmd.env("FARINE_INI", ini),
        None => cmd.env_remove("FARINE_INI"),
    };
    let output = cmd.output().expect("run farine describe");
    assert!(
        output.status.success(),
        "farine describe failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn assert_valid(doc: &Value) {
    let schema: Value = serde_json::from_str(ASYNCAPI_SCHEMA).expect("the schema is JSON");
    let validator = jsonschema::draft7::new(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not valid AsyncAPI 3.0.0:\n{}\n\n{doc:#}",
        errors.join("\n")
    );
}

#[test]
fn describe_calc_prints_a_valid_asyncapi_3_document() {
    let doc = describe_calc(None);
    assert_valid(&doc);
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "calc");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let (channels, operations) = (&doc["channels"], &doc["operations"]);

    // calc.add: the RPC request queue, and the reply.
    let add = &operations["calc.add"];
    assert_eq!(add["action"], "receive");
    assert_eq!(add["channel"], json!({ "$ref": "#/channels/calc.add" }));
    assert_eq!(channels["calc.add"]["address"], "calc__add");
    let amqp = &channels["calc.add"]["bindings"]["amqp"];
    assert_eq!(amqp["is"], "queue");
    assert_eq!(amqp["queue"]["name"], "calc__add");
    assert_eq!(amqp["queue"]["durable"], true);
    assert_eq!(
        add["reply"]["channel"],
        json!({ "$ref": "#/channels/calc.add.reply" })
    );
    let messages = &doc["components"]["messages"];
    let args = &messages["calc.add"]["payload"]["properties"]["args"];
    assert_eq!(args["items"][0]["type"], "integer");
    assert_eq!(args["items"][1]["type"], "integer");
    let body = &messages["calc.add.reply"]["payload"]["properties"]["body"];
    assert_eq!(
        body["type"], "integer",
        "Result<i64, CalcError> replies i64"
    );
    let count = &messages["calc.count.reply"]["payload"]["properties"]["body"];
    assert_eq!(count["type"], "integer");

    // The `operations` consumer: exchange calc, routing key operations, Operation's schema.
    let consumer = &operations["calc.on_operation"];
    assert_eq!(consumer["action"], "receive");
    let channel = &channels["calc.on_operation"];
    assert_eq!(channel["address"], "operations");
    assert_eq!(channel["bindings"]["amqp"]["is"], "routingKey");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["name"], "calc");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["type"], "direct");
    assert_eq!(channel["x-farine-queue"]["name"], "operations");
    assert_eq!(
        messages["calc.on_operation"]["payload"],
        json!({ "$ref": "#/components/schemas/Operation" })
    );
    let operation = &doc["components"]["schemas"]["Operation"];
    assert_eq!(operation["required"], json!(["a", "b"]));
    assert_eq!(
        messages["calc.on_result"]["payload"],
        json!({ "$ref": "#/components/schemas/Sum" })
    );

    // The `results` publisher.
    let publisher = &operations["calc.publish_sum"];
    assert_eq!(publisher["action"], "send");
    let channel = &channels["calc.publish_sum"];
    assert_eq!(channel["address"], "results");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["name"], "calc");

    // No FARINE_INI: a placeholder server.
    assert_eq!(doc["servers"]["broker"]["host"], "localhost:5672");
}

#[test]
fn describe_shows_the_configured_broker_without_its_password() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ini = dir.path().join("farine.ini");
    std::fs::write(
        &ini,
        "[DEFAULT]\namqp_uri = amqps://calc:hunter2@mq.example:5671/calc-vhost\n[calc]\ntype = topic\n",
    )
    .expect("write farine.ini");
    let doc = describe_calc(Some(&ini));
    assert_valid(&doc);
    let text = doc.to_string();
    assert!(!text.contains("hunter2"), "the password is shown: {text}");
    let server = &doc["servers"]["broker"];
    assert_eq!(server["host"], "mq.example:5671");
    assert_eq!(server["protocol"], "amqps");
    assert_eq!(server["pathname"], "/calc-vhost");
    let amqp = &doc["channels"]["calc.on_operation"]["bindings"]["amqp"];
    assert_eq!(amqp["exchange"]["type"], "topic");
    assert_eq!(amqp["exchange"]["vhost"], "calc-vhost");
}
