farine::main!(todo);
