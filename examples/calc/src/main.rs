farine::main!(calc);
