//! The real programs some tests drive, and how to tell whether each is installed here.
//!
//! Shared by `build.rs`, which decides before the tests are compiled (so that a test that cannot
//! run is compiled `#[ignore]`d, with the reason, and `cargo test` counts it as ignored rather than
//! passed), and by the tests themselves (`external.rs`), which look again when they run. Both
//! must give the same answer, so this file is the only place that says where each program is.
//!
//! It uses nothing but `std`: `build.rs` includes it with `#[path]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One requirement, by the name of its `cfg`: the build sets `signpost_missing = "<name>"` when
/// it is missing, and the tests that need it carry
/// `#[cfg_attr(signpost_missing = "<name>", ignore = "needs …")]`.
pub struct Requirement {
    pub name: &'static str,
    /// The files it was found as, or why it is missing (with how to install it).
    pub find: fn() -> Result<Vec<PathBuf>, String>,
}

/// Every requirement, in the order README.md's prerequisites list them.
pub const ALL: [Requirement; 9] = [
    Requirement {
        name: "chromium",
        find: chromium_files,
    },
    Requirement {
        name: "firefox",
        find: || firefox().map(|path| vec![path]),
    },
    Requirement {
        name: "coturn",
        find: || {
            find_programs(
                &["turnserver", "turnutils_uclient", "turnutils_stunclient"],
                "coturn",
            )
        },
    },
    Requirement {
        name: "redis",
        find: || find_programs(&["redis-server", "redis-cli"], "redis-server"),
    },
    Requirement {
        name: "nginx",
        find: nginx_files,
    },
    Requirement {
        name: "openssl",
        find: || find_programs(&["openssl"], "openssl"),
    },
    Requirement {
        name: "python3-jwt",
        find: || find_python_module("jwt", "python3-jwt"),
    },
    Requirement {
        name: "python3-prometheus-client",
        find: || find_python_module("prometheus_client", "python3-prometheus-client"),
    },
    Requirement {
        name: "aiortc",
        find: || aiortc_python().map(|python| vec![python]),
    },
];

/// Whether tests that need real programs must run, and so fail without them: under CI
/// (`CI=true`, as `.ci/run` runs, which installs them all) or when asked to. The build then
/// ignores no test, whatever is missing.
pub fn required() -> bool {
    let set = |name: &str, value: &str| std::env::var(name).is_ok_and(|v| v == value);
    set("CI", "true") || set("SIGNPOST_EXTERNAL_TESTS", "1") || set("SIGNPOST_BROWSER_TESTS", "1")
}

/// The environment variables whose values change the answers above.
pub const ENVIRONMENT: [&str; 7] = [
    "PATH",
    "CI",
    "SIGNPOST_EXTERNAL_TESTS",
    "SIGNPOST_BROWSER_TESTS",
    "CHROMIUM",
    "FIREFOX",
    "SIGNPOST_VENV",
];

/// Every one of `programs` is on the PATH; `package` says where they come from.
pub fn programs(programs: &[&str], package: &str) -> Result<(), String> {
    find_programs(programs, package).map(drop)
}

fn find_programs(programs: &[&str], package: &str) -> Result<Vec<PathBuf>, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    programs
        .iter()
        .map(|program| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
                .ok_or_else(|| format!("{program} is not installed (apt-get install {package})"))
        })
        .collect()
}

/// Debian's `/usr/bin/python3` can import `module`, from `package`.
pub fn python_module(module: &str, package: &str) -> Result<(), String> {
    find_python_module(module, package).map(drop)
}

fn find_python_module(module: &str, package: &str) -> Result<Vec<PathBuf>, String> {
    let python = Path::new("/usr/bin/python3");
    if imports(python, module) {
        Ok(vec![python.to_owned()])
    } else {
        Err(format!(
            "/usr/bin/python3 cannot import {module} (apt-get install {package})"
        ))
    }
}

fn imports(python: &Path, module: &str) -> bool {
    python.is_file()
        && Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

/// The Chromium to run: `$CHROMIUM`, else the first of the usual paths that exists.
pub fn chromium() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(format!("CHROMIUM={} does not exist", path.display()))
        };
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|path| path.exists())
    .ok_or_else(|| {
        "Chromium not found (looked for $CHROMIUM, /usr/bin/chromium, /usr/bin/chromium-browser, \
             /usr/bin/google-chrome); install it with `apt-get install chromium`"
            .to_owned()
    })
}

/// The Firefox to drive over WebDriver BiDi: `$FIREFOX`, else Debian's `firefox-esr`, else
/// `firefox`.
pub fn firefox() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FIREFOX") {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(format!("FIREFOX={} does not exist", path.display()))
        };
    }
    ["/usr/bin/firefox-esr", "/usr/bin/firefox"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .ok_or_else(|| {
            "Firefox not found (looked for $FIREFOX, /usr/bin/firefox-esr, /usr/bin/firefox); \
             install it with `apt-get install firefox-esr`"
                .to_owned()
        })
}

fn chromium_files() -> Result<Vec<PathBuf>, String> {
    chromium().map(|path| vec![path])
}

/// nginx: Debian's `/usr/sbin/nginx` (not on a user's PATH), else one on the PATH.
pub fn nginx() -> Result<PathBuf, String> {
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.exists() {
        Ok(debian)
    } else {
        find_programs(&["nginx"], "nginx").map(|mut found| found.remove(0))
    }
}

fn nginx_files() -> Result<Vec<PathBuf>, String> {
    nginx().map(|path| vec![path])
}

/// The virtualenv with the PyPI tools of `.ci/python-requirements.txt`: `$SIGNPOST_VENV`, else
/// `target/python-venv` (where `.ci/run` and README.md's prerequisites make it).
pub fn venv() -> PathBuf {
    std::env::var_os("SIGNPOST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/python-venv"))
}

/// The virtualenv's Python, if aiortc imports there.
pub fn aiortc_python() -> Result<PathBuf, String> {
    let python = venv().join("bin/python");
    if imports(&python, "aiortc") {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import aiortc (make the venv: README.md, Prerequisites)",
            python.display()
        ))
    }
}
