//! Real programs that some tests drive: Chromium, coturn's server and clients, redis-server,
//! nginx, openssl, PyJWT, Prometheus's own exposition parser and aiortc. One policy for all of
//! them: a test that cannot run is never counted as passed.
//!
//! - When a program is missing, `build.rs` compiles the tests that need it `#[ignore]`d with
//!   the reason (`requirements.rs` says where each program is looked for), so `cargo test`
//!   reports them as ignored, with what to install, and its "passed" counts only tests that ran.
//! - Under CI (`CI=true`, as `.ci/run` runs, which installs them) or with
//!   `SIGNPOST_EXTERNAL_TESTS=1`, nothing is ignored, and a test whose program is missing fails,
//!   so that CI can never go green by skipping.
//!
//! Each test still looks for its programs when it runs ([`can_run`]): one that finds them
//! missing although it was not ignored fails, saying why.

#[allow(unused_imports)] // each test binary uses a different part
pub use super::requirements::{programs, python_module, required};

/// Checks, as `test` starts, that what it needs is here (`available`, from the functions of
/// `requirements.rs`): returns `true` when it is, and otherwise fails the test, since a test that
/// cannot run must be ignored by the build (see the module doc), never passed. (It returns a
/// `bool`, always `true`, so that callers keep their `if !can_run(…) { return; }`.)
pub fn can_run(test: &str, available: Result<(), String>) -> bool {
    let Err(reason) = available else {
        return true;
    };
    if required() {
        panic!("test {test} must run, but {reason}");
    }
    panic!(
        "test {test} cannot run: {reason}. It is not marked ignored: either it lacks \
         #[cfg_attr(signpost_missing = \"…\", ignore = \"needs …\")] (build.rs, \
         tests/common/requirements.rs), or the program went missing after the tests were built; \
         install it, or touch build.rs so that the build marks the tests that need it"
    );
}
