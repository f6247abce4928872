//! Runs the caller service alone (calc elsewhere, on a shared broker): `farine --start caller`.

farine::main!(caller);
