//! A Server-Sent-Events listener taking one event parameter.
use farine::prelude::*;

#[derive(Default)]
pub struct Prices;

#[farine::service]
impl Prices {
    #[stream::http]
    pub async fn on_event(&self, event: Event<serde_json::Value>) -> farine::Result<()> {
        let _ = (event.id, event.event, event.data);
        Ok(())
    }
}

fn main() {
    let _ = Prices::on_event;
}
