//! The typed client's return types come from the declared types through a trait: an alias of
//! `Result` gives its `T`, a borrowed type its owned form, a plain type itself.
use farine::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub enum MyError {
    Nope,
}

pub type MyResult<T> = Result<T, MyError>;

#[derive(Serialize, Deserialize, Default)]
pub struct Total {
    pub cents: i64,
}

#[derive(Default)]
pub struct Shapes;

#[farine::service]
impl Shapes {
    #[rpc::method]
    async fn aliased(&self) -> MyResult<u32> {
        Ok(1)
    }

    #[rpc::method]
    async fn library(&self) -> farine::Result<Vec<u8>> {
        Ok(vec![])
    }

    #[rpc::method]
    async fn borrowed(&self) -> &'static str {
        "x"
    }

    #[rpc::method]
    async fn borrowed_ok(&self) -> Result<&'static str, String> {
        Ok("x")
    }

    #[rpc::method]
    async fn slice(&self) -> &'static [u16] {
        &[1]
    }

    #[rpc::method]
    async fn plain(&self) -> Total {
        Total::default()
    }

    #[rpc::method]
    async fn nothing(&self) {}

    #[rpc::method]
    async fn pair(&self) -> (u8, String) {
        (1, String::new())
    }

    #[rpc::method]
    fn items(&self) -> impl Stream<Item = MyResult<u64>> + Send + 'static {
        futures::stream::iter([Ok(1)])
    }
}

// Each client method's type, as a caller sees it.
async fn callers(client: ShapesClient) -> farine::Result<()> {
    let _: u32 = client.aliased().await?;
    let _: Vec<u8> = client.library().await?;
    let _: String = client.borrowed().await?;
    let _: String = client.borrowed_ok().await?;
    let _: Vec<u16> = client.slice().await?;
    let _: Total = client.plain().await?;
    client.nothing().await?;
    let _: (u8, String) = client.pair().await?;
    let _: farine::rpc::RpcStream<u64> = client.items().await?;
    Ok(())
}
