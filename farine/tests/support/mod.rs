//! The helpers every test crate of the workspace shares live in `test-support/`.
#![allow(unused_imports)]

pub use farine_test_support::*;
