//! `farine describe`'s generator (`farine::describe::document`) on services defined here, with
//! the `schema` feature on: a type deriving `JsonSchema` has its schema in the document, a type
//! without one has `{}`, and the document is valid AsyncAPI 3.0.0.

use farine::prelude::*;
use farine::schemars::JsonSchema;
use farine::serde_json::{json, Value};
use serde::{Deserialize, Serialize};

/// Has a schema.
#[derive(Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "farine::schemars")]
pub struct Order {
    pub id: i64,
    pub item: String,
}

/// Has none: `{}` in the document, and still compiles.
#[derive(Deserialize, Serialize)]
pub struct Opaque {
    pub blob: String,
}

#[derive(Default)]
pub struct Shop;

#[farine::service(name = "describe_shop")]
impl Shop {
    #[amqp::consume(exchange = "orders", routing_key = "created", exchange_type = "topic")]
    async fn on_order(&self, order: Order) -> farine::Result<()> {
        let _ = order;
        Ok(())
    }

    #[amqp::consume(routing_key = "opaque", queue = "shop-opaque")]
    async fn on_opaque(&self, body: Opaque) {
        let _ = body;
    }

    #[rpc::method(broadcast = "shop.events")]
    async fn place(&self, order: Order, note: Opaque) -> farine::Result<Order> {
        let _ = note;
        Ok(order)
    }

    #[rpc::method]
    async fn opaque(&self, count: u32) -> Opaque {
        Opaque {
            blob: count.to_string(),
        }
    }

    #[rpc::method]
    fn orders(&self, n: u32) -> impl Stream<Item = farine::Result<Order>> + Send + 'static {
        farine::futures::stream::iter((0..n).map(|id| {
            Ok(Order {
                id: i64::from(id),
                item: String::new(),
            })
        }))
    }

    #[amqp::publish(exchange = "orders", routing_key = "shipped")]
    pub async fn shipped(&self, publish: Publisher, id: i64) -> farine::Result<()> {
        publish.send(&id).await
    }
}

/// What the official AsyncAPI 3.0.0 schema (vendored, see fixtures/README.md) finds wrong.
fn errors(doc: &Value) -> Vec<String> {
    let schema: Value = farine::serde_json::from_str(include_str!("fixtures/asyncapi-3.0.0.json"))
        .expect("the AsyncAPI schema is JSON");
    let validator = jsonschema::draft7::new(&schema).expect("the AsyncAPI schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn validate(doc: &Value) {
    let errors = errors(doc);
    assert!(
        errors.is_empty(),
        "not valid AsyncAPI 3.0.0:\n{}\n\n{doc:#}",
        errors.join("\n")
    );
}

fn document() -> Value {
    farine::describe::document(None, &["describe_shop"]).expect("the document")
}

#[test]
fn the_document_is_valid_asyncapi_3() {
    let doc = document();
    validate(&doc);
    // The schema does check what matters: an unknown action, a queue binding with an exchange.
    let mut broken = doc.clone();
    broken["operations"]["describe_shop.place"]["action"] = json!("publish");
    assert!(!errors(&broken).is_empty());
    let mut broken = doc.clone();
    broken["channels"]["describe_shop.place"]["bindings"]["amqp"]["exchange"] = json!({});
    assert!(!errors(&broken).is_empty());
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "describe_shop");
    // No FARINE_INI here: a placeholder server, still a valid one.
    assert_eq!(doc["servers"]["broker"]["host"], "localhost:5672");
    assert_eq!(doc["servers"]["broker"]["protocol"], "amqp");
}

#[test]
fn a_json_schema_type_has_its_schema_and_another_type_has_none() {
    let doc = document();
    let order = json!({ "$ref": "#/components/schemas/Order" });
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Order"]["type"], "object");
    assert_eq!(schemas["Order"]["properties"]["id"]["type"], "integer");
    assert_eq!(schemas["Order"]["required"], json!(["id", "item"]));
    assert!(schemas.get("Opaque").is_none());

    let messages = &doc["components"]["messages"];
    // Consumers: the body.
    assert_eq!(messages["describe_shop.on_order"]["payload"], order);
    assert_eq!(messages["describe_shop.on_opaque"]["payload"], json!({}));
    // RPC: each argument in `args` and `kwargs`; the result in the item frame.
    let request = &messages["describe_shop.place"]["payload"]["properties"];
    assert_eq!(request["args"]["items"], json!([order, {}]));
    assert_eq!(request["args"]["maxItems"], 2);
    assert_eq!(request["kwargs"]["properties"]["order"], order);
    assert_eq!(request["kwargs"]["properties"]["note"], json!({}));
    let reply = &messages["describe_shop.place.reply"]["payload"];
    assert_eq!(
        reply["properties"]["body"], order,
        "Result<Order> sends Order"
    );
    assert_eq!(reply["required"], json!(["body", "__end__"]));
    let reply = &messages["describe_shop.opaque.reply"]["payload"];
    assert_eq!(reply["properties"]["body"], json!({}));
    let request = &messages["describe_shop.opaque"]["payload"]["properties"];
    assert_eq!(
        request["args"]["items"],
        json!([{ "type": "integer", "format": "uint32", "minimum": 0 }])
    );
    // A stream: the item type.
    let reply = &messages["describe_shop.orders.reply"]["payload"];
    assert_eq!(reply["properties"]["body"], order);
}

#[test]
fn channels_and_operations_follow_the_wire_names() {
    let doc = document();
    let (channels, operations) = (&doc["channels"], &doc["operations"]);

    let consumer = &channels["describe_shop.on_order"];
    assert_eq!(consumer["address"], "created");
    let amqp = &consumer["bindings"]["amqp"];
    assert_eq!(amqp["is"], "routingKey");
    assert_eq!(amqp["exchange"]["name"], "orders");
    assert_eq!(amqp["exchange"]["type"], "topic");
    assert_eq!(consumer["x-farine-queue"]["name"], "created");
    assert_eq!(
        channels["describe_shop.on_opaque"]["x-farine-queue"]["name"],
        "shop-opaque"
    );
    assert_eq!(operations["describe_shop.on_order"]["action"], "receive");

    let request = &channels["describe_shop.place"];
    assert_eq!(request["address"], "describe_shop__place");
    let amqp = &request["bindings"]["amqp"];
    assert_eq!(amqp["is"], "queue");
    assert_eq!(amqp["queue"]["name"], "describe_shop__place");
    assert_eq!(amqp["queue"]["durable"], true);
    assert_eq!(amqp["queue"]["exclusive"], false);
    assert_eq!(amqp["queue"]["autoDelete"], false);
    assert_eq!(amqp["queue"]["vhost"], "/");
    let place = &operations["describe_shop.place"];
    assert_eq!(place["action"], "receive");
    assert_eq!(
        place["reply"]["channel"],
        json!({ "$ref": "#/channels/describe_shop.place.reply" })
    );
    assert_eq!(
        place["reply"]["address"]["location"],
        "$message.header#/reply_to"
    );
    assert_eq!(
        channels["describe_shop.place.reply"]["address"],
        Value::Null
    );

    let events = &operations["describe_shop.place.events"];
    assert_eq!(events["action"], "send");
    let amqp = &channels["describe_shop.place.events"]["bindings"]["amqp"];
    assert_eq!(amqp["exchange"]["name"], "shop.events");
    assert_eq!(amqp["exchange"]["type"], "fanout");

    let shipped = &operations["describe_shop.shipped"];
    assert_eq!(shipped["action"], "send");
    let channel = &channels["describe_shop.shipped"];
    assert_eq!(channel["address"], "shipped");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["name"], "orders");
}

#[test]
fn the_servers_come_from_the_configuration_without_passwords() {
    let config = farine::Config::from_str(
        "[DEFAULT]\namqp_uri = amqp://app:s3cret@rabbit.example:5673/prod\n[describe_shop]\ntype = topic\ndurable = false\n",
        "shop.ini",
    )
    .expect("the configuration");
    let doc = farine::describe::document(Some(&config), &["describe_shop"]).expect("the document");
    validate(&doc);
    let text = doc.to_string();
    assert!(!text.contains("s3cret"), "the password is shown: {text}");
    let server = &doc["servers"]["broker"];
    assert_eq!(server["host"], "rabbit.example:5673");
    assert_eq!(server["pathname"], "/prod");
    let amqp = &doc["channels"]["describe_shop.place"]["bindings"]["amqp"];
    assert_eq!(amqp["queue"]["durable"], false);
    assert_eq!(amqp["queue"]["vhost"], "prod");
    assert_eq!(
        doc["channels"]["describe_shop.place"]["x-farine-exchange"]["type"],
        "topic"
    );
}

#[test]
fn an_unknown_service_is_an_error_naming_the_known_ones() {
    let err = farine::describe::document(None, &["nope"]).unwrap_err();
    assert!(err.to_string().contains("describe_shop"), "{err}");
}
