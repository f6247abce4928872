farine::main!(ledger);
