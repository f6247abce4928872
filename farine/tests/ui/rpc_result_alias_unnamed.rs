use farine::prelude::*;

// An alias of `Result` whose name does not end in `Result`: the typed client cannot tell it
// from a plain type, so it is an error rather than a wrong decoding at run time.
pub type Answer = Result<u32, String>;

#[derive(Default)]
pub struct Oracle;

#[farine::service]
impl Oracle {
    #[rpc::method]
    async fn ask(&self) -> Answer {
        Ok(42)
    }
}

fn main() {}
