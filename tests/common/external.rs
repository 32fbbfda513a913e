//! Real programs that some tests drive: Chromium, coturn's server and clients, and Prometheus's
//! own exposition parser. One policy for all of them: when a program is missing, a test that
//! needs it is skipped with the reason printed, so that `cargo test` passes on any machine; under
//! CI (`CI=true`, as `.ci/run` runs, which installs them) or with `SIGNPOST_EXTERNAL_TESTS=1`, it
//! fails instead, so that CI can never go green by skipping.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether tests that need real programs must run, and so fail without them.
pub fn required() -> bool {
    let set = |name: &str, value: &str| std::env::var(name).is_ok_and(|v| v == value);
    set("CI", "true") || set("SIGNPOST_EXTERNAL_TESTS", "1") || set("SIGNPOST_BROWSER_TESTS", "1")
}

/// Whether `test` can run given what `available` found. Prints the skip when it cannot, and
/// panics instead when the programs are [`required`].
pub fn can_run(test: &str, available: Result<(), String>) -> bool {
    match available {
        Ok(()) => true,
        Err(reason) if required() => panic!("test {test} must run, but {reason}"),
        Err(reason) => {
            // Straight to stderr: the harness captures eprint! of tests that pass, and a skip
            // must be visible.
            let _ = writeln!(
                std::io::stderr(),
                "test {test} SKIPPED: {reason}; set CI=true or SIGNPOST_EXTERNAL_TESTS=1 to make \
                 this a failure"
            );
            false
        }
    }
}

/// Every one of `programs` is on the PATH; `package` says where they come from.
pub fn programs(programs: &[&str], package: &str) -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for program in programs {
        if !std::env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
            return Err(format!(
                "{program} is not installed (apt-get install {package})"
            ));
        }
    }
    Ok(())
}

/// Debian's `/usr/bin/python3` can import `module`, from `package`.
pub fn python_module(module: &str, package: &str) -> Result<(), String> {
    let python = Path::new("/usr/bin/python3");
    let imports = python.is_file()
        && Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    if imports {
        Ok(())
    } else {
        Err(format!(
            "/usr/bin/python3 cannot import {module} (apt-get install {package})"
        ))
    }
}
