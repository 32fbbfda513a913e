//! Marks the tests that cannot run here as ignored, with the reason, before they are compiled.
//!
//! Some tests drive real programs (Chromium, coturn, redis-server, nginx, openssl, PyJWT,
//! Prometheus's parser, aiortc). libtest has no "skipped" outcome: a test that found its program
//! missing and returned would be counted as passed. So the build looks for each one
//! (`tests/common/requirements.rs`) and sets `--cfg signpost_missing="<name>"` for each that is
//! missing; the tests that need it carry `#[cfg_attr(signpost_missing = "<name>", ignore =
//! "needs …")]`, and `cargo test` reports them as ignored, with that reason, instead.
//!
//! Under CI (`CI=true`), or with `SIGNPOST_EXTERNAL_TESTS=1`, nothing is marked: every test
//! runs, and one whose program is missing fails (`tests/common/external.rs`).
//!
//! The answer is recomputed when it may have changed: when the environment variables it reads
//! change, when a program found is replaced or removed, and, while something is missing, when a
//! directory it would be installed into changes. The server itself does not use these cfgs.

#[path = "tests/common/requirements.rs"]
#[allow(dead_code)] // the tests' half of it
mod requirements;

use std::path::{Path, PathBuf};

fn main() {
    let names: Vec<String> = requirements::ALL
        .iter()
        .map(|requirement| format!("\"{}\"", requirement.name))
        .collect();
    println!(
        "cargo::rustc-check-cfg=cfg(signpost_missing, values({}))",
        names.join(", ")
    );
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=tests/common/requirements.rs");
    for variable in requirements::ENVIRONMENT {
        println!("cargo::rerun-if-env-changed={variable}");
    }
    let required = requirements::required();
    let mut watched: Vec<PathBuf> = Vec::new();
    for requirement in &requirements::ALL {
        match (requirement.find)() {
            Ok(files) => watched.extend(files),
            Err(_) => {
                watched.extend(where_it_would_appear(requirement.name));
                if !required {
                    println!("cargo::rustc-cfg=signpost_missing=\"{}\"", requirement.name);
                }
            }
        }
    }
    watched.sort();
    watched.dedup();
    for path in watched {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

/// Existing directories whose contents change when the missing requirement `name` is installed.
/// Only existing ones: cargo reruns a build script every time for a path that does not exist,
/// which would rebuild the whole crate at each `cargo test`.
fn where_it_would_appear(name: &str) -> Vec<PathBuf> {
    // Debian's record of installed packages: every prerequisite is a Debian package.
    let mut places: Vec<PathBuf> = vec!["/var/lib/dpkg/status".into()];
    match name {
        "python3-jwt" | "python3-prometheus-client" => {}
        "aiortc" => {
            let venv = requirements::venv();
            // The default venv is made empty, so that there is a directory to watch until
            // README.md's venv line (or .ci/run) fills it; `python3 -m venv` accepts it.
            let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python-venv");
            if venv == default && !venv.exists() && default.parent().is_some_and(Path::is_dir) {
                // Dated back, or cargo would see it as a change made since this run began, and
                // build everything again at the next `cargo test`.
                let _ = std::fs::create_dir(&venv).and_then(|()| {
                    std::fs::File::open(&venv)?.set_modified(std::time::SystemTime::UNIX_EPOCH)
                });
            }
            places.push(venv);
        }
        _ => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            places.extend(std::env::split_paths(&path).filter(|dir| dir.is_absolute()));
            places.extend(["/usr/bin".into(), "/usr/sbin".into()]);
        }
    }
    places.retain(|place| place.exists());
    places
}
