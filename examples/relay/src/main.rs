farine::main!(relay);
