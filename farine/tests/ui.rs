//! Compile-time behaviour of the farine attributes: every misuse is a spanned error that says
//! what is wrong and what to write instead (`tests/ui/*.rs` with their `.stderr`), and the
//! documented forms compile (`tests/ui-pass/*.rs`).
//!
//! Regenerate the snapshots after changing a message with
//! `TRYBUILD=overwrite cargo test -p farine --test ui`, then read every changed `.stderr`.

/// Every compile-fail case in one trybuild run of compile-fail cases only: trybuild then checks
/// them all with one `cargo check --keep-going`. (With a pass case in the same run it builds
/// and links each case by itself, several times slower.)
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

// The pass cases are modules of this test crate: compiled against `farine` as a user's crate
// is, with the workspace's dependencies already built, and linted by clippy with the tests,
// instead of being built and linked one by one as trybuild would.
macro_rules! pass_cases {
    ($($case:ident = $path:literal),* $(,)?) => {
        $(
            #[allow(dead_code)]
            #[path = $path]
            mod $case;
        )*

        /// A case added to `tests/ui-pass` must be listed here, or it would not be compiled.
        #[test]
        fn every_pass_case_is_compiled() {
            let listed = [$($path),*];
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui-pass");
            for entry in std::fs::read_dir(dir).expect("tests/ui-pass exists") {
                let name = entry.expect("read tests/ui-pass").file_name();
                let path = format!("ui-pass/{}", name.to_string_lossy());
                assert!(
                    !path.ends_with(".rs") || listed.contains(&path.as_str()),
                    "tests/{path} is not listed in pass_cases! (tests/ui.rs)"
                );
            }
        }
    };
}

pass_cases!(
    cfg_entry = "ui-pass/cfg_entry.rs",
    client_types = "ui-pass/client_types.rs",
    consume_publish = "ui-pass/consume_publish.rs",
    database_and_friends = "ui-pass/database_and_friends.rs",
    execute = "ui-pass/execute.rs",
    named_service = "ui-pass/named_service.rs",
    rpc = "ui-pass/rpc.rs",
    stream_http = "ui-pass/stream_http.rs",
);
