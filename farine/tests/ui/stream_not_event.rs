use farine::prelude::*;

#[derive(Default)]
pub struct Prices;

#[farine::service]
impl Prices {
    #[stream::http]
    async fn on_event(&self, data: serde_json::Value) -> farine::Result<()> {
        let _ = data;
        Ok(())
    }
}

fn main() {}
