//! Compile-time behaviour of the farine attributes: every misuse is a spanned error that says
//! what is wrong and what to write instead (`tests/ui/*.rs` with their `.stderr`), and the
//! documented forms compile (`tests/ui-pass/*.rs`).
//!
//! Regenerate the snapshots after changing a message with
//! `TRYBUILD=overwrite cargo test -p farine --test ui`, then read every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui-pass/*.rs");
}
