//! The expansion of a fixed service holding every entry kind, pinned: a change to what the
//! macro emits shows as a diff of `snapshots/service.rs`, to be read like code. Regenerate it
//! with `UPDATE_SNAPSHOTS=1 cargo test -p farine-macros`.
//!
//! It also checks the contract of `farine::__private` (farine/src/codegen.rs): the output
//! names farine only through `::farine::__private::`.

use quote::quote;

fn fixed_service() -> proc_macro2::TokenStream {
    quote! {
        impl Shop {
            /// Adds an item to the cart; its total comes back.
            #[rpc::method(concurrency = 4, broadcast = "shop.events")]
            pub async fn add(
                &self,
                tx: &mut Tx,
                events: Broadcast,
                stock: StockClient,
                item: String,
                quantity: u32,
            ) -> ShopResult<u64> {
                let _ = (tx, stock);
                events.send(&item)?;
                Ok(u64::from(quantity))
            }

            #[rpc::method]
            pub fn items(&self, db: Db, from: u64) -> impl Stream<Item = farine::Result<Item>> + Send + 'static {
                let _ = db;
                futures::stream::iter([])
            }

            #[rpc::method]
            pub async fn name(&self) -> &'static str {
                "shop"
            }

            #[cfg(feature = "beta")]
            #[rpc::method]
            pub async fn beta(&self) -> Total {
                Total::default()
            }

            #[amqp::consume(exchange = "orders", routing_key = "created", concurrency = 2)]
            async fn on_order(&self, order: Order) -> farine::Result<()> {
                self.notify(order.id).await
            }

            #[amqp::consume]
            async fn on_own(&self, body: serde_json::Value) {}

            #[amqp::publish(exchange = "orders")]
            pub async fn notify(&self, publish: Publisher, id: i64) -> farine::Result<()> {
                publish.send(&id).await
            }

            #[stream::http(endpoint = "https://prices.example/stream")]
            async fn on_price(&self, db: &mut Db, event: Event<Price>) -> farine::Result<()> {
                Ok(())
            }

            #[execute::method(restart_delay = "5s", max_restarts = 3)]
            async fn poll(&self, shutdown: Shutdown) {
                shutdown.requested().await
            }
        }
    }
}

#[test]
fn expansion_of_every_entry_kind_is_pinned() {
    let tokens = crate::expand::service(quote!(name = "shop"), fixed_service());
    let file: syn::File = syn::parse2(tokens.clone()).expect("the expansion parses as items");
    let expanded = prettyplease::unparse(&file);
    assert!(
        !expanded.contains("compile_error"),
        "the fixed service is valid:\n{expanded}"
    );

    // Every path into farine the output names goes through `__private`.
    let text = tokens.to_string();
    for (at, _) in text.match_indices(":: farine ::") {
        let rest = &text[at + ":: farine ::".len()..];
        assert!(
            rest.trim_start().starts_with("__private ::"),
            "the expansion names farine outside `__private`: `:: farine ::{}`",
            &rest[..rest.len().min(60)]
        );
    }
    assert!(text.contains(":: farine :: __private ::"));

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/service.rs");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &expanded).expect("write the snapshot");
        return;
    }
    let pinned = std::fs::read_to_string(path).unwrap_or_default();
    if pinned != expanded {
        let line = pinned
            .lines()
            .zip(expanded.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(pinned.lines().count().min(expanded.lines().count()));
        panic!(
            "the expansion differs from {path} from line {}: regenerate it with \
             UPDATE_SNAPSHOTS=1 cargo test -p farine-macros and read the diff\n\n{expanded}",
            line + 1
        );
    }
}
