//! calc tested in process with `farine::testing`, on an in-process broker: no RabbitMQ
//! needed (these pass with it stopped).

use calc::{CalcClient, CalcError, Sum};
use farine::prelude::*;
use farine::testing::{Handling, TestKit};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

#[allow(unused_imports)]
use calc as _; // links the service in

async fn kit() -> TestKit {
    TestKit::memory()
        .service("calc")
        .set("calc", "retry_attempts", "1")
        .set("calc", "retry_delay", "10ms")
        .start()
        .await
        .expect("calc starts on the memory broker")
}

#[tokio::test]
async fn add_and_count_answer_through_the_typed_client() {
    let kit = kit().await;
    let calc = CalcClient::connect(kit.config()).await.unwrap();
    assert_eq!(calc.add(2, 3).await.unwrap(), 5);
    let err = calc.add(i64::MAX, 1).await.unwrap_err();
    assert_eq!(
        err.service_error::<CalcError>(),
        Some(CalcError::Overflow { a: i64::MAX, b: 1 })
    );
    let items: Vec<u32> = calc
        .count(4)
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(items, [0, 1, 2, 3]);
    kit.stop().await.unwrap();
}

#[tokio::test]
async fn an_operation_is_summed_and_published() {
    let kit = kit().await;
    let results = kit.capture("calc", "results").await.unwrap();
    let handled = kit.handled("calc.on_operation");
    kit.publish("calc", "operations", &calc::Operation { a: 20, b: 22 })
        .await
        .unwrap();
    assert_eq!(handled.wait(WAIT).await.unwrap(), Handling::Done);
    let sum: Sum = farine::serde_json::from_value(results.next(WAIT).await.unwrap()).unwrap();
    assert_eq!(sum.sum, 42);
    kit.stop().await.unwrap();
}

#[tokio::test]
async fn an_overflow_is_retried_then_dead_lettered_and_poison_parked_at_once() {
    let kit = kit().await;
    let handled = kit.handled("calc.on_operation");
    kit.publish("calc", "operations", &calc::Operation { a: i64::MAX, b: 1 })
        .await
        .unwrap();
    for _ in 0..2 {
        let outcome = handled.wait(WAIT).await.unwrap();
        assert!(
            matches!(&outcome, Handling::Failed(reason) if reason.contains("overflows")),
            "{outcome:?}"
        );
    }
    kit.publish("calc", "operations", &"not an operation")
        .await
        .unwrap();
    assert!(matches!(
        handled.wait(WAIT).await.unwrap(),
        Handling::Poison(_)
    ));
    let parked = kit.dead_letters("operations").await.unwrap();
    assert_eq!(parked.len(), 2);
    assert_eq!(parked[0].attempts, 2);
    assert!(parked[0]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("overflows"));
    assert_eq!(parked[1].attempts, 1);
    kit.stop().await.unwrap();
}
