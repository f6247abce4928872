//! The typed client against a real RabbitMQ: its return types come from the methods' declared
//! types through `RpcOutput`, so an alias of `Result` decodes as its `T` (the client used to
//! read the tokens, and decoded `MyResult<u32>` as a whole `Result`, failing at run time).

mod support;

use farine::prelude::*;
use serde::{Deserialize, Serialize};
use support::{config, Raw};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum MyError {
    TooBig(u32),
}

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MyError::TooBig(n) => write!(f, "{n} is too big"),
        }
    }
}

pub type MyResult<T> = Result<T, MyError>;

#[derive(Default)]
pub struct Typed;

#[farine::service(name = "t_typed")]
impl Typed {
    /// Doubles `n`, up to 1000.
    #[rpc::method]
    async fn double(&self, n: u32) -> MyResult<u32> {
        if n > 1000 {
            return Err(MyError::TooBig(n));
        }
        Ok(n * 2)
    }

    #[rpc::method]
    async fn name(&self) -> &'static str {
        "typed"
    }

    #[rpc::method]
    fn upto(&self, n: u64) -> impl Stream<Item = MyResult<u64>> + Send + 'static {
        futures::stream::iter((1..=n).map(Ok))
    }

    #[cfg(any())]
    #[rpc::method]
    async fn compiled_out(&self) -> u32 {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_client_decodes_the_declared_types() {
    support::require_rabbitmq();
    let running = farine::Runtime::new(config(""))
        .only(["t_typed"])
        .start()
        .await
        .expect("service starts");
    let client = TypedClient::connect(&config(""))
        .await
        .expect("client connects");

    // `MyResult<u32>` is a `Result`: the caller gets the `u32`, and the `Err` as an error.
    let doubled: u32 = client.double(21).await.unwrap();
    assert_eq!(doubled, 42);
    let err = client.double(5000).await.unwrap_err();
    assert_eq!(err.service_error::<MyError>(), Some(MyError::TooBig(5000)));

    let name: String = client.name().await.unwrap();
    assert_eq!(name, "typed");

    let items: Vec<u64> = client
        .upto(3)
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(items, [1, 2, 3]);

    running.shutdown().await.unwrap();
    let raw = Raw::connect().await;
    raw.delete_queues(&[
        "t_typed__double",
        "t_typed__double.dlq",
        "t_typed__name",
        "t_typed__name.dlq",
        "t_typed__upto",
        "t_typed__upto.dlq",
    ])
    .await;
    raw.delete_exchanges(&["t_typed"]).await;
}
