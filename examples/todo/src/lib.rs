//! The `todo` service: a to-do list in PostgreSQL, over RPC, announcing every change.
//!
//! ```sh
//! farine migrate --start todo      # creates table `todos` (migrations/)
//! farine --start todo
//! farine call todo.add '["buy flour"]'
//! farine call todo.done '[1]'
//! farine call todo.list
//! ```
//!
//! `add` and `done` broadcast `{"op": "add" | "done", "todo": {...}}` to the fanout exchange
//! `todo.events` once their transaction committed and the caller has its reply.

use farine::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One row of `todos`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Todo {
    pub id: i64,
    pub title: String,
    pub done: bool,
}

#[derive(Default)]
pub struct TodoService;

#[farine::service(name = "todo")]
impl TodoService {
    /// Adds a todo and returns its id.
    #[rpc::method(broadcast = "todo.events")]
    async fn add(&self, tx: &mut Tx, events: Broadcast, title: String) -> farine::Result<i64> {
        let todo: Todo =
            sqlx::query_as("insert into todos (title) values ($1) returning id, title, done")
                .bind(title)
                .fetch_one(tx.conn())
                .await?;
        events.send(&json!({ "op": "add", "todo": todo }))?;
        Ok(todo.id)
    }

    /// Marks a todo done; `false` if there is no such todo (and nothing is broadcast).
    #[rpc::method(broadcast = "todo.events")]
    async fn done(&self, tx: &mut Tx, events: Broadcast, id: i64) -> farine::Result<bool> {
        let todo: Option<Todo> =
            sqlx::query_as("update todos set done = true where id = $1 returning id, title, done")
                .bind(id)
                .fetch_optional(tx.conn())
                .await?;
        match todo {
            Some(todo) => {
                events.send(&json!({ "op": "done", "todo": todo }))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Streams every todo, oldest first, row by row on one held connection.
    #[rpc::method]
    fn list(&self, mut db: Db) -> impl Stream<Item = farine::Result<Todo>> + Send + 'static {
        async_stream::stream! {
            let mut rows = sqlx::query_as::<_, Todo>("select id, title, done from todos order by id")
                .fetch(db.conn());
            while let Some(row) = rows.next().await {
                yield row.map_err(farine::Error::from);
            }
        }
    }
}
