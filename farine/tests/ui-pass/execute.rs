//! A supervised loop with every restart argument, and one with none.
use farine::prelude::*;

#[derive(Default)]
pub struct Janitor;

#[farine::service]
impl Janitor {
    #[execute::method(restart = false, restart_delay = "5s", max_restarts = 3)]
    pub async fn sweep(&self) -> farine::Result<()> {
        Ok(())
    }

    #[execute::method]
    pub async fn watch(&self) {}
}

fn main() {
    let _ = (Janitor::sweep, Janitor::watch);
}
