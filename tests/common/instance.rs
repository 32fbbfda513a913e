//! The real signpost binary as a child process, for tests that kill an instance (SIGKILL) or
//! put a real proxy in front of it: started on a free port (`ROCKET_PORT=0`, the port read
//! from its `listening on` log line), and killed when dropped if it still runs
//! (`process::ChildProcess`).

use std::process::{Command, Stdio};

use super::process::{ChildProcess, Watch};
use super::EVENT_DEADLINE;

pub struct Instance {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub port: u16,
    process: ChildProcess,
}

/// The binary with `signpost`, the inside of the `signpost` table as TOML inline table entries
/// (`redis_url="…",log_level="info"`), over `Rocket.toml`'s defaults; stderr piped.
fn command(signpost: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_signpost"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ROCKET_ADDRESS", "127.0.0.1")
        .env("ROCKET_PORT", "0")
        .env("ROCKET_SIGNPOST", format!("{{{signpost}}}"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

impl Instance {
    /// Starts the binary with `signpost` (see [`command`]).
    pub fn start(signpost: &str) -> Instance {
        let mut process = ChildProcess::spawn("signpost", command(signpost), Watch::Stderr);
        let base = process.read_until("the banner", EVENT_DEADLINE, |line| {
            Some(line.split("listening on ").nth(1)?.trim().to_owned())
        });
        let port = base
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("the banner names a port");
        Instance {
            base,
            port,
            process,
        }
    }

    /// Runs the binary with `signpost` (see [`command`]), which must refuse to start, exiting
    /// unsuccessfully within [`EVENT_DEADLINE`]: returns the line of its log that says why
    /// (`invalid configuration: …`).
    pub async fn refusal(signpost: &str) -> String {
        let mut command = tokio::process::Command::from(command(signpost));
        let output = tokio::time::timeout(EVENT_DEADLINE, command.kill_on_drop(true).output())
            .await
            .expect("the binary exits instead of serving")
            .expect("the signpost binary runs");
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "the binary started: {log}");
        log.lines()
            .find(|line| line.contains("invalid configuration"))
            .unwrap_or_else(|| panic!("no reason in the log: {log}"))
            .to_owned()
    }

    /// SIGKILL: no shutdown, no last word to anyone.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}
