//! A real `redis-server` for the tests (Debian's package `redis-server`), started by the tests
//! themselves on a free loopback port, without persistence (`--save ''`), and stopped when the
//! test process exits: it runs under a `sh` that kills it once the test process's end of its
//! stdin closes, which happens however the test process ends.
//!
//! Each test server gets its own key prefix, so one Redis serves every test of a binary. A
//! TLS-only server ([`Redis::start_tls`]) is for the tests of `rediss://` (tests/redis_tls.rs).

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::external;
use super::process::{ChildProcess, Watch};

/// A redis-server process the test started.
pub struct Redis {
    pub port: u16,
    /// How `redis-cli` reaches it: `-p <port>`, after `--tls --cacert <CA>` for a TLS-only one.
    cli_args: Vec<String>,
    /// The `sh` that runs redis-server (killing the `sh` would leave redis-server running: it
    /// is stopped by closing `stdin`).
    process: ChildProcess,
    /// Closing it stops the server.
    stdin: Option<ChildStdin>,
}

impl Redis {
    /// Whether the tests can start redis-server here.
    pub fn available() -> Result<(), String> {
        external::programs(&["redis-server", "redis-cli"], "redis-server")
    }

    /// A new, empty server on a free port.
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// A new, empty server on `port` (a restart of one that was stopped).
    pub fn start_on(port: u16) -> Redis {
        let port_arg = port.to_string();
        let socket = Redis::socket(port);
        let listen = ["--port", &port_arg, "--unixsocket", &socket];
        Redis::spawn(port, &listen, vec!["-p".into(), port_arg.clone()])
    }

    /// A new, empty server that speaks TLS only, on a free port, with the certificate `cert`
    /// (and its `key`) that `ca` signed; clients show no certificate.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> Redis {
        let port = free_port();
        let port_arg = port.to_string();
        let [ca, cert, key] = [ca, cert, key].map(|path| path.to_str().expect("a UTF-8 path"));
        let listen = [
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
        ];
        let cli_args = ["--tls", "--cacert", ca, "-p", &port_arg].map(String::from);
        Redis::spawn(port, &listen, cli_args.into())
    }

    /// redis-server with `listen` (its ports), on 127.0.0.1, without persistence; returns once
    /// `redis-cli` with `cli_args` gets an answer from it.
    fn spawn(port: u16, listen: &[&str], cli_args: Vec<String>) -> Redis {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                r#"redis-server "$@" & pid=$!; read _; kill -9 $pid; wait $pid"#,
                "sh",
            ])
            .args(listen)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = ChildProcess::spawn("redis-server", command, Watch::Nothing);
        let stdin = process.take_stdin();
        let mut redis = Redis {
            port,
            cli_args,
            process,
            stdin,
        };
        redis.wait_until_ready();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The same server through its unix socket.
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", Redis::socket(self.port))
    }

    /// The unix socket of the server on `port`: one per port, so never shared by two servers.
    fn socket(port: u16) -> String {
        format!(
            "{}/signpost-redis-{port}.sock",
            std::env::temp_dir().display()
        )
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        Redis::run_cli(&self.cli_args, args)
    }

    fn run_cli(cli_args: &[String], args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(cli_args)
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Readiness probe: redis-server takes a few milliseconds to listen.
    fn wait_until_ready(&mut self) {
        let Redis {
            process, cli_args, ..
        } = self;
        process.await_ready("answering PING", Duration::from_secs(10), || {
            Redis::run_cli(cli_args, &["ping"]) == "PONG"
        });
    }

    /// Kills the server at once (SIGKILL), losing everything it held.
    pub fn kill(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        self.process.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        drop(self.stdin.take());
        self.process.wait();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// One server shared by the tests of a binary that run on the Redis store (the test fails when
/// redis-server is missing: `external::can_run`).
pub fn shared(test: &str) -> Option<String> {
    static SHARED: OnceLock<Mutex<Option<Redis>>> = OnceLock::new();
    if !external::can_run(test, Redis::available()) {
        return None;
    }
    let shared = SHARED.get_or_init(|| Mutex::new(Some(Redis::start())));
    let redis = shared.lock().unwrap_or_else(|e| e.into_inner());
    redis.as_ref().map(Redis::url)
}
