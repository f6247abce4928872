//! Every runtime-supplied parameter where it belongs.
use farine::prelude::*;
use std::time::Duration;

#[derive(Default)]
pub struct Todo;

#[farine::service]
impl Todo {
    #[rpc::method(broadcast = "todo.events")]
    async fn add(&self, tx: &mut Tx, events: Broadcast, title: String) -> farine::Result<i64> {
        let (id,): (i64,) = sqlx::query_as("insert into todos (title) values ($1) returning id")
            .bind(&title)
            .fetch_one(tx.conn())
            .await?;
        events.send(&serde_json::json!({ "id": id, "title": title }))?;
        Ok(id)
    }

    #[rpc::method]
    fn list(&self, mut db: Db) -> impl Stream<Item = farine::Result<i64>> + Send + 'static {
        async_stream::stream! {
            let mut rows = sqlx::query_as::<_, (i64,)>("select id from todos").fetch(db.conn());
            while let Some(row) = rows.next().await {
                yield row.map(|(id,)| id).map_err(farine::Error::from);
            }
        }
    }

    #[amqp::consume(routing_key = "done")]
    async fn on_done(&self, db: &mut Db, id: i64) -> farine::Result<()> {
        sqlx::query("update todos set done = true where id = $1").bind(id).execute(db.conn()).await?;
        Ok(())
    }

    #[stream::http(endpoint = "http://127.0.0.1:8089/events")]
    async fn on_event(&self, event: Event<serde_json::Value>, calc: farine::Client) -> farine::Result<()> {
        let _ = (event.id, event.data, calc);
        Ok(())
    }

    #[execute::method(restart_delay = "1s")]
    async fn tick(&self, shutdown: Shutdown) -> farine::Result<()> {
        while shutdown.sleep(Duration::from_secs(1)).await {}
        Ok(())
    }
}

fn main() {}
