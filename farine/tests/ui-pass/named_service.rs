//! An explicit service name, and the attributes spelled with their full paths.
#[derive(Default)]
pub struct ShopService;

#[farine::service(name = "shop-v2.eu_1")]
impl ShopService {
    #[farine::amqp::consume(routing_key = "created")]
    async fn on_created(&self, order: String) -> farine::Result<()> {
        let _ = order;
        Ok(())
    }

    /// Methods without farine attributes are left alone.
    fn helper(&self) -> u32 {
        1
    }

    #[farine::amqp::publish]
    pub async fn announce(&self, publish: farine::Publisher, text: String) -> farine::Result<()> {
        let _ = self.helper();
        publish.send(&text).await
    }
}

fn main() {
    let _ = ShopService::announce;
}
