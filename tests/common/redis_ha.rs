//! Real high-availability Redis set-ups for the tests (issue #18), started by the tests
//! themselves like the single server of `redis.rs`: free loopback ports, no persistence
//! (`--save ''`, `--appendonly no`), one temporary directory per set-up, and every process run
//! under a `sh` that SIGKILLs it once the test process's end of its stdin closes (so a test that
//! panics or is killed leaves nothing behind).
//!
//! - [`Sentinels`]: a master, one replica and three sentinels (quorum 2), with a short
//!   `down-after-milliseconds` so that a failover completes in a few seconds.
//! - [`Cluster`]: three masters and three replicas joined by `redis-cli --cluster create`, with
//!   a short `cluster-node-timeout`.
//!
//! Both need `redis-server` and `redis-cli` (the `redis` requirement: tests that use them carry
//! `#[cfg_attr(signpost_missing = "redis", ignore = …)]`). Every wait polls with a deadline.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::external;

/// Sentinel's `down-after-milliseconds` and the cluster's `cluster-node-timeout`: how long a
/// dead master goes unnoticed. Short, so that a failover test takes seconds, not half a minute.
pub const DETECTION: Duration = Duration::from_millis(1000);

/// How long a failover, a promotion or a rejoin may take before a wait fails: the detection
/// time, an election, a replica's resync, with room for a loaded 2-core machine.
pub const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

/// Whether the tests can start these set-ups here.
pub fn available() -> Result<(), String> {
    external::programs(&["redis-server", "redis-cli"], "redis-server")
}

/// One redis-server (or sentinel) process.
struct Node {
    port: u16,
    /// The arguments it was started with, to restart it the same way.
    args: Vec<String>,
    child: Child,
    /// Closing it (or writing a line) SIGKILLs the server.
    stdin: Option<ChildStdin>,
}

impl Node {
    /// Starts `redis-server <args>` and returns once it answers `PING` (to `redis-cli
    /// <prefix>`: `--tls --cacert <CA>` for a TLS-only node).
    fn spawn(port: u16, args: Vec<String>, prefix: &[String]) -> Node {
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"redis-server "$@" & pid=$!; read _; kill -9 $pid; wait $pid"#,
                "sh",
            ])
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts redis-server");
        let stdin = child.stdin.take();
        let node = Node {
            port,
            args,
            child,
            stdin,
        };
        wait_for(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || {
                let answer = cli_as(prefix, port, &["ping"]);
                // NOAUTH: up, and asking for a password.
                (answer == "PONG" || answer.starts_with("NOAUTH")).then_some(())
            },
        );
        node
    }

    /// SIGKILL, and waits for the process to be gone.
    fn kill(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// `redis-cli -p <port> <args>`, its standard output trimmed ("" when the server is down).
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_as(&[], port, args)
}

/// `redis-cli <prefix> -p <port> <args>`.
pub fn cli_as(prefix: &[String], port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(prefix)
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The value of `field` in an `INFO`-style or `CLUSTER INFO` answer.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// Polls `check` until it returns `Some`, failing after `deadline` with `what`.
pub fn wait_for<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port that was free a moment ago (as `redis.rs` picks them, so other test binaries running
/// at the same time get other ones); with `with_bus`, one below 55536 whose `+ 10000` (a cluster
/// node's bus port) was free too. A port taken by someone else between this check and the
/// server's bind makes the start fail at its readiness deadline, never hang.
fn free_port(with_bus: bool) -> u16 {
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        if !with_bus || (port < 55536 && free(port + 10000)) {
            return port;
        }
    }
    panic!("no free port whose port + 10000 is free too");
}

/// A new empty directory for one set-up, removed with it.
fn temp_dir(kind: &str) -> PathBuf {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "signpost-{kind}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// The arguments every data node gets: loopback only, no persistence, no eviction, `dir`.
fn data_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory-policy",
        "noeviction",
        "--dir",
        dir.to_str().expect("a UTF-8 path"),
    ]
    .map(String::from)
    .into()
}

/// A CA's certificate and a server certificate it signed for 127.0.0.1, with its key (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `redis-server` arguments for a TLS-only node on `port` (clients show no certificate;
    /// replication and, for a sentinel, its connections to the nodes use TLS too).
    fn server_lines(&self, port: u16) -> Vec<(String, String)> {
        let path = |path: &Path| path.display().to_string();
        [
            ("port", "0".to_owned()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", path(&self.cert)),
            ("tls-key-file", path(&self.key)),
            ("tls-ca-cert-file", path(&self.ca)),
            ("tls-auth-clients", "no".to_owned()),
            ("tls-replication", "yes".to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value))
        .into()
    }

    /// A throwaway CA and a certificate it signed for 127.0.0.1 (an IP SAN), made with the
    /// `openssl` CLI in `dir` (as tests/redis_tls.rs makes its own).
    pub fn generate(dir: &Path) -> TlsFiles {
        let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let openssl = |args: &str| {
            let output = Command::new("openssl")
                .current_dir(dir)
                .args(args.split_whitespace())
                .output()
                .expect("openssl runs");
            assert!(
                output.status.success(),
                "openssl {args} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        openssl(&format!(
            "req -x509 {new_key} -keyout ca.key -out ca.pem -days 1 -subj /CN=signpost-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
        openssl(&format!(
            "req {new_key} -keyout server.key -out server.csr -subj /CN=127.0.0.1"
        ));
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("the extensions file");
        openssl(
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
             -days 1 -extfile server.ext",
        );
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    /// How `redis-cli` reaches a TLS-only node.
    fn cli_prefix(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
        ]
    }
}

/// A master, one replica and three sentinels that watch them (quorum 2).
pub struct Sentinels {
    name: String,
    /// The data nodes (the first started as the master), by port; `None` while killed.
    data: Vec<(u16, Option<Node>)>,
    sentinels: Vec<Node>,
    password: Option<String>,
    /// The sentinels' own `requirepass`, if they ask one.
    sentinel_password: Option<String>,
    tls: Option<TlsFiles>,
    dir: PathBuf,
}

impl Sentinels {
    /// The master name the sentinels monitor (`redis_sentinel_master`).
    pub const MASTER: &'static str = "signpost";

    /// A new set-up: returns once the replica is in sync and every sentinel knows the replica
    /// and the two other sentinels (so that a failover can be authorized at once).
    pub fn start() -> Sentinels {
        Sentinels::start_with(None, None, None)
    }

    /// The same with `requirepass <password>` on the master and the replica (`masterauth`, and
    /// the sentinels' `auth-pass`); the sentinels themselves ask none.
    pub fn start_with_password(password: &str) -> Sentinels {
        Sentinels::start_with(Some(password.to_owned()), None, None)
    }

    /// The same with the sentinels asking a password of their own too (`requirepass` in each
    /// sentinel's configuration, which they also use between themselves).
    pub fn start_with_sentinel_password(password: &str, sentinel_password: &str) -> Sentinels {
        Sentinels::start_with(
            Some(password.to_owned()),
            Some(sentinel_password.to_owned()),
            None,
        )
    }

    /// The same speaking TLS only, data nodes and sentinels, with the certificates of `tls`
    /// (`rediss://` URLs), and a password on the data nodes when given.
    pub fn start_tls(tls: TlsFiles, password: Option<&str>) -> Sentinels {
        Sentinels::start_with(password.map(str::to_owned), None, Some(tls))
    }

    fn start_with(
        password: Option<String>,
        sentinel_password: Option<String>,
        tls: Option<TlsFiles>,
    ) -> Sentinels {
        let dir = temp_dir("sentinel");
        let name = Sentinels::MASTER.to_owned();
        let mut set_up = Sentinels {
            name,
            data: Vec::new(),
            sentinels: Vec::new(),
            password,
            sentinel_password,
            tls,
            dir,
        };
        let master = free_port(false);
        set_up.spawn_data(master, None);
        let replica = free_port(false);
        set_up.spawn_data(replica, Some(master));
        set_up.wait_in_sync(replica);
        for index in 0..3 {
            let port = free_port(false);
            let conf = set_up.dir.join(format!("sentinel-{index}.conf"));
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {name} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {name} {down}\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = set_up.dir.display(),
                name = set_up.name,
                down = DETECTION.as_millis(),
            );
            if let Some(password) = &set_up.password {
                text.push_str(&format!("sentinel auth-pass {} {password}\n", set_up.name));
            }
            if let Some(password) = &set_up.sentinel_password {
                text.push_str(&format!("requirepass {password}\n"));
            }
            if let Some(tls) = &set_up.tls {
                for (name, value) in tls.server_lines(port) {
                    text.push_str(&format!("{name} {value}\n"));
                }
            }
            std::fs::write(&conf, text).expect("a sentinel.conf");
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            let prefix = set_up.prefix();
            set_up.sentinels.push(Node::spawn(port, args, &prefix));
        }
        set_up.wait_settled();
        set_up
    }

    /// Starts the data node on `port`, a replica of `master` when given.
    fn spawn_data(&mut self, port: u16, master: Option<u16>) {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("a node directory");
        let mut args = data_args(port, &dir);
        if let Some(tls) = &self.tls {
            for (name, value) in tls.server_lines(port) {
                args.extend([format!("--{name}"), value]);
            }
        }
        if let Some(password) = &self.password {
            args.extend(["--requirepass", password, "--masterauth", password].map(String::from));
        }
        if let Some(master) = master {
            args.extend([
                "--replicaof".to_owned(),
                "127.0.0.1".into(),
                master.to_string(),
            ]);
        }
        let node = Node::spawn(port, args, &self.prefix());
        match self.data.iter_mut().find(|(p, _)| *p == port) {
            Some(slot) => slot.1 = Some(node),
            None => self.data.push((port, Some(node))),
        }
    }

    /// `redis-cli`'s arguments for TLS, if the set-up speaks it.
    fn prefix(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .map(TlsFiles::cli_prefix)
            .unwrap_or_default()
    }

    /// `redis-cli` against the data node on `port` (with the password, if any).
    pub fn data_cli(&self, port: u16, args: &[&str]) -> String {
        let prefix = self.prefix();
        match &self.password {
            Some(password) => {
                let mut all = vec!["--no-auth-warning", "-a", password];
                all.extend_from_slice(args);
                cli_as(&prefix, port, &all)
            }
            None => cli_as(&prefix, port, args),
        }
    }

    /// `redis-cli` against the sentinel on `port` (with the sentinels' password, if any).
    pub fn sentinel_cli(&self, port: u16, args: &[&str]) -> String {
        match &self.sentinel_password {
            Some(password) => {
                let mut all = vec!["--no-auth-warning", "-a", password];
                all.extend_from_slice(args);
                cli_as(&self.prefix(), port, &all)
            }
            None => cli_as(&self.prefix(), port, args),
        }
    }

    /// Waits until the replica on `port` has finished its sync with its master.
    fn wait_in_sync(&self, port: u16) {
        wait_for(FAILOVER_DEADLINE, "the replica to sync", || {
            let info = self.data_cli(port, &["info", "replication"]);
            (info_field(&info, "role").as_deref() == Some("slave")
                && info_field(&info, "master_link_status").as_deref() == Some("up"))
            .then_some(())
        });
    }

    /// Waits until every sentinel sees the master, its replica and the two other sentinels.
    fn wait_settled(&self) {
        let master = self.master_port();
        wait_for(
            FAILOVER_DEADLINE,
            "the sentinels to find each other",
            || {
                self.sentinels
                    .iter()
                    .all(|sentinel| {
                        let state =
                            self.sentinel_cli(sentinel.port, &["sentinel", "master", &self.name]);
                        let field = |key: &str| {
                            let lines: Vec<&str> = state.lines().collect();
                            lines
                                .iter()
                                .position(|line| *line == key)
                                .and_then(|i| lines.get(i + 1))
                                .map(|v| v.to_string())
                        };
                        field("port") == Some(master.to_string())
                            && field("flags").as_deref() == Some("master")
                            && field("num-slaves").as_deref() == Some("1")
                            && field("num-other-sentinels").as_deref() == Some("2")
                    })
                    .then_some(())
            },
        );
    }

    /// The sentinels' URLs, as `redis_sentinels` takes them (`rediss://` with TLS).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.sentinels
            .iter()
            .map(|node| format!("{scheme}://127.0.0.1:{}", node.port))
            .collect()
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|node| node.port).collect()
    }

    /// The master name, as `redis_sentinel_master` takes it.
    pub fn master_name(&self) -> &str {
        &self.name
    }

    /// The certificates, for a TLS-only set-up.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The password of the data nodes, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The ports of the data nodes that run now.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data
            .iter()
            .filter(|(_, node)| node.is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// The current master's port, as the first sentinel that answers reports it.
    pub fn master_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(|sentinel| self.master_by(sentinel.port))
            .expect("a sentinel knows the master")
    }

    /// The master's port as the sentinel on `sentinel` reports it.
    fn master_by(&self, sentinel: u16) -> Option<u16> {
        let answer = self.sentinel_cli(
            sentinel,
            &["sentinel", "get-master-addr-by-name", &self.name],
        );
        answer.lines().nth(1)?.trim().parse().ok()
    }

    /// A planned switch (`SENTINEL FAILOVER`): returns the new master's port once every sentinel
    /// reports it, it says it is a master, and the old one replicates from it.
    pub fn failover(&self) -> u16 {
        let old = self.master_port();
        let sentinel = self.sentinels[0].port;
        let answer = wait_for(
            FAILOVER_DEADLINE,
            "SENTINEL FAILOVER to be accepted",
            || {
                let answer = self.sentinel_cli(sentinel, &["sentinel", "failover", &self.name]);
                // NOGOODSLAVE while the replica has not yet reported in; INPROG never here.
                (answer == "OK").then_some(answer)
            },
        );
        assert_eq!(answer, "OK");
        let new = self.wait_for_new_master(old, FAILOVER_DEADLINE);
        self.wait_replica_of(old, new);
        new
    }

    /// SIGKILLs the current master, losing what it held; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port();
        self.kill_data(port);
        port
    }

    /// SIGKILLs the master's replica (the set-up has one); returns its port.
    pub fn kill_replica(&mut self) -> u16 {
        let master = self.master_port();
        let port = self
            .data_ports()
            .into_iter()
            .find(|port| *port != master)
            .expect("a replica runs");
        self.kill_data(port);
        port
    }

    /// SIGKILLs the data node on `port`.
    fn kill_data(&mut self, port: u16) {
        let (_, node) = self
            .data
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("the node is one of ours");
        node.take().expect("the node runs").kill();
    }

    /// Restarts the data node `port` (empty) as a replica of the current master, and waits until
    /// it is in sync.
    pub fn restart_replica(&mut self, port: u16) {
        let master = self.master_port();
        self.spawn_data(port, Some(master));
        self.wait_replica_of(port, master);
    }

    /// Waits until every sentinel names a master other than `old` and that node says it is a
    /// master; returns its port.
    pub fn wait_for_new_master(&self, old: u16, deadline: Duration) -> u16 {
        wait_for(deadline, "the sentinels to promote a new master", || {
            let seen: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|sentinel| self.master_by(sentinel.port))
                .collect();
            let new = seen[0].filter(|port| *port != old)?;
            let role = self.data_cli(new, &["role"]);
            (seen.iter().all(|port| *port == Some(new)) && role.starts_with("master"))
                .then_some(new)
        })
    }

    /// Restarts the data node `old` (empty, as a master: how a crashed master comes back) and
    /// waits until the sentinels have made it a replica of `master` and it is in sync.
    pub fn restart(&mut self, old: u16) {
        self.spawn_data(old, None);
        let master = self.master_port();
        assert_ne!(master, old, "restart a node only once another was promoted");
        self.wait_replica_of(old, master);
    }

    /// Waits until the node `port` replicates `master` and is in sync.
    fn wait_replica_of(&self, port: u16, master: u16) {
        wait_for(
            FAILOVER_DEADLINE,
            "the old master to rejoin as a replica",
            || {
                let info = self.data_cli(port, &["info", "replication"]);
                (info_field(&info, "role").as_deref() == Some("slave")
                    && info_field(&info, "master_port") == Some(master.to_string())
                    && info_field(&info, "master_link_status").as_deref() == Some("up"))
                .then_some(())
            },
        );
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        self.sentinels.clear();
        self.data.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One master or replica as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Flagged `fail` or `fail?` by the node that answered.
    pub failed: bool,
    /// The id of its master, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges it serves, for a master (inclusive).
    pub slots: Vec<(u16, u16)>,
}

/// Three masters and three replicas, one cluster.
pub struct Cluster {
    nodes: HashMap<u16, Option<Node>>,
    ports: Vec<u16>,
    dir: PathBuf,
    /// `requirepass` (and `masterauth`) of every node, when started with one.
    password: Option<String>,
    /// TLS only (clients, replication and the cluster bus), when started so.
    tls: Option<TlsFiles>,
}

impl Cluster {
    /// A new cluster: returns once every node reports `cluster_state:ok` and knows all six.
    pub fn start() -> Cluster {
        Cluster::start_with(None, None)
    }

    /// The same with `requirepass <password>` (and `masterauth`) on every node.
    pub fn start_with_password(password: &str) -> Cluster {
        Cluster::start_with(Some(password.to_owned()), None)
    }

    /// The same speaking TLS only (clients, replication, the cluster bus: `rediss://` URLs),
    /// with the certificates of `tls`, and a password when given.
    pub fn start_tls(tls: TlsFiles, password: Option<&str>) -> Cluster {
        Cluster::start_with(password.map(str::to_owned), Some(tls))
    }

    fn start_with(password: Option<String>, tls: Option<TlsFiles>) -> Cluster {
        let dir = temp_dir("cluster");
        let mut cluster = Cluster {
            nodes: HashMap::new(),
            ports: Vec::new(),
            dir,
            password,
            tls,
        };
        for _ in 0..6 {
            let port = free_port(true);
            cluster.ports.push(port);
            cluster.spawn(port);
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let output = Command::new("redis-cli")
            .args(cluster.auth())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        cluster.wait_ok();
        cluster
    }

    /// Starts the node on `port` in its own directory (which keeps its `nodes.conf`, so a
    /// restarted node rejoins with its id).
    fn spawn(&mut self, port: u16) {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("a node directory");
        let mut args = data_args(port, &dir);
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &DETECTION.as_millis().to_string(),
            ]
            .map(String::from),
        );
        if let Some(password) = &self.password {
            args.extend(["--requirepass", password, "--masterauth", password].map(String::from));
        }
        if let Some(tls) = &self.tls {
            for (name, value) in tls.server_lines(port) {
                args.extend([format!("--{name}"), value]);
            }
            args.extend(["--tls-cluster", "yes"].map(String::from));
        }
        let prefix = self.auth();
        self.nodes
            .insert(port, Some(Node::spawn(port, args, &prefix)));
    }

    /// Waits until every running node reports `cluster_state:ok` with every slot assigned and
    /// knows all six nodes, and every running replica is in sync with its master (so that
    /// `WAIT 1` succeeds and a failover finds a replica to promote).
    pub fn wait_ok(&self) {
        wait_for(FAILOVER_DEADLINE, "cluster_state:ok on every node", || {
            self.running()
                .iter()
                .all(|port| {
                    let info = self.cli(*port, &["cluster", "info"]);
                    let replication = self.cli(*port, &["info", "replication"]);
                    info_field(&info, "cluster_state").as_deref() == Some("ok")
                        && info_field(&info, "cluster_known_nodes").as_deref() == Some("6")
                        && info_field(&info, "cluster_slots_assigned").as_deref() == Some("16384")
                        && (info_field(&replication, "role").as_deref() == Some("master")
                            || info_field(&replication, "master_link_status").as_deref()
                                == Some("up"))
                })
                .then_some(())
        });
    }

    /// The ports of the nodes that run now.
    pub fn running(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.is_some())
            .map(|(port, _)| *port)
            .collect();
        ports.sort();
        ports
    }

    /// Seed URLs, as `redis_cluster_nodes` takes them (every node, with the password;
    /// `rediss://` with TLS).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = self
            .password
            .as_ref()
            .map(|password| format!(":{password}@"))
            .unwrap_or_default();
        self.ports
            .iter()
            .map(|port| format!("{scheme}://{auth}127.0.0.1:{port}"))
            .collect()
    }

    /// The set-up's TLS files, when it speaks TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// redis-cli's arguments for TLS and the password, if any.
    fn auth(&self) -> Vec<String> {
        let mut args = self
            .tls
            .as_ref()
            .map(TlsFiles::cli_prefix)
            .unwrap_or_default();
        if let Some(password) = &self.password {
            args.extend(["-a".into(), password.clone(), "--no-auth-warning".into()]);
        }
        args
    }

    /// `redis-cli -p <port> <args>` with TLS and the password, if any.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli_as(&self.auth(), port, args)
    }

    /// `redis-cli -p <port>` against any running node.
    pub fn any_cli(&self, args: &[&str]) -> String {
        self.cli(self.running()[0], args)
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.any_cli(&["cluster", "keyslot", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// Every node, as the running node `asked` lists it (`CLUSTER NODES`).
    pub fn nodes_seen_by(&self, asked: u16) -> Vec<ClusterNode> {
        self.cli(asked, &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields.get(1)?.split([':', '@']).nth(1)?.parse().ok()?;
                let flags = fields.get(2)?;
                Some(ClusterNode {
                    id: fields[0].to_owned(),
                    port,
                    master: flags.contains("master"),
                    failed: flags.contains("fail"),
                    master_id: fields
                        .get(3)
                        .filter(|id| **id != "-")
                        .map(|id| id.to_string()),
                    slots: fields
                        .iter()
                        .skip(8)
                        .filter(|range| !range.starts_with('['))
                        .filter_map(|range| {
                            let mut ends = range.split('-').map(|end| end.parse().ok());
                            let start = ends.next()??;
                            let end = ends.next().unwrap_or(Some(start))?;
                            Some((start, end))
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// The master that serves `slot`, as the first running node reports it.
    pub fn owner_of(&self, slot: u16) -> ClusterNode {
        self.nodes_seen_by(self.running()[0])
            .into_iter()
            .find(|node| {
                node.master
                    && node
                        .slots
                        .iter()
                        .any(|(start, end)| (*start..=*end).contains(&slot))
            })
            .expect("a master serves every slot")
    }

    /// The port of the master that serves `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        self.owner_of(self.slot_of(key)).port
    }

    /// The node id of the node on `port` (`CLUSTER MYID`).
    pub fn id_of(&self, port: u16) -> String {
        self.cli(port, &["cluster", "myid"])
    }

    /// Waits until every replica of the master that serves `key`'s slot has every write the
    /// master has made so far (its `master_repl_offset`), so that killing the master loses
    /// nothing: replication is asynchronous, and on a loaded machine a replica can lag behind
    /// a room's creation.
    pub fn wait_until_replicated(&self, key: &str, deadline: Duration) {
        let master = self.master_of(key);
        let master_id = self.id_of(master).trim().to_owned();
        let offset = |port: u16, field: &str| -> u64 {
            self.cli(port, &["info", "replication"])
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0)
        };
        let written = offset(master, "master_repl_offset:");
        let replicas: Vec<u16> = self
            .nodes_seen_by(master)
            .into_iter()
            .filter(|node| node.master_id.as_deref() == Some(master_id.as_str()))
            .map(|node| node.port)
            .collect();
        assert!(!replicas.is_empty(), "the master of {key} has a replica");
        wait_for(deadline, "the replicas to have every write", || {
            replicas
                .iter()
                .all(|replica| offset(*replica, "slave_repl_offset:") >= written)
                .then_some(())
        });
    }

    /// SIGKILLs the master that serves `key`'s slot; returns its port.
    pub fn kill_master_of(&mut self, key: &str) -> u16 {
        let port = self.master_of(key);
        self.nodes
            .get_mut(&port)
            .and_then(Option::take)
            .expect("the master runs")
            .kill();
        port
    }

    /// Waits until every running node says a running master other than `old` serves `slot`
    /// and the cluster is `ok` again; returns the new master's port.
    pub fn wait_for_promotion(&self, old: u16, slot: u16, deadline: Duration) -> u16 {
        let running = self.running();
        wait_for(deadline, "a replica to be promoted", || {
            let mut owners = running.iter().map(|asked| {
                self.nodes_seen_by(*asked).into_iter().find(|node| {
                    node.master
                        && !node.failed
                        && node.slots.iter().any(|(s, e)| (*s..=*e).contains(&slot))
                })
            });
            let first = owners.next()??;
            let agreed = owners.all(|owner| owner.is_some_and(|o| o.port == first.port));
            let ok = running.iter().all(|port| {
                info_field(&self.cli(*port, &["cluster", "info"]), "cluster_state").as_deref()
                    == Some("ok")
            });
            (first.port != old && agreed && ok).then_some(first.port)
        })
    }

    /// Restarts the node `old` (empty, but with its `nodes.conf`) and waits until it is a
    /// replica in sync and the whole cluster is `ok`.
    pub fn restart(&mut self, old: u16) {
        self.spawn(old);
        wait_for(
            FAILOVER_DEADLINE,
            "the old master to rejoin as a replica",
            || {
                let info = self.cli(old, &["info", "replication"]);
                (info_field(&info, "role").as_deref() == Some("slave")
                    && info_field(&info, "master_link_status").as_deref() == Some("up"))
                .then_some(())
            },
        );
        self.wait_ok();
    }

    /// Moves `slot` with its keys to the master on `to`, the way `redis-cli --cluster reshard`
    /// does for each slot: `SETSLOT IMPORTING` on the target, `MIGRATING` on the source,
    /// `MIGRATE … KEYS` in batches until the slot is empty, then `SETSLOT NODE` on both and on
    /// every other master. Clients meanwhile get `ASK` for keys already moved, then `MOVED`.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.owner_of(slot).port;
        if from == to {
            return;
        }
        let (from_id, to_id) = (self.id_of(from), self.id_of(to));
        let slot_arg = slot.to_string();
        let ok = |answer: String, what: &str| assert_eq!(answer, "OK", "{what}");
        ok(
            self.cli(
                to,
                &["cluster", "setslot", &slot_arg, "importing", &from_id],
            ),
            "SETSLOT IMPORTING",
        );
        ok(
            self.cli(
                from,
                &["cluster", "setslot", &slot_arg, "migrating", &to_id],
            ),
            "SETSLOT MIGRATING",
        );
        loop {
            let keys = self.cli(from, &["cluster", "getkeysinslot", &slot_arg, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_arg = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &to_arg, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let answer = self.cli(from, &args);
            assert!(
                answer == "OK" || answer == "NOKEY",
                "MIGRATE failed: {answer}"
            );
        }
        ok(
            self.cli(to, &["cluster", "setslot", &slot_arg, "node", &to_id]),
            "SETSLOT NODE on the target",
        );
        ok(
            self.cli(from, &["cluster", "setslot", &slot_arg, "node", &to_id]),
            "SETSLOT NODE on the source",
        );
        for node in self.nodes_seen_by(to) {
            if node.master && !node.failed && node.port != from && node.port != to {
                self.cli(
                    node.port,
                    &["cluster", "setslot", &slot_arg, "node", &to_id],
                );
            }
        }
        wait_for(FAILOVER_DEADLINE, "every node to agree on the move", || {
            self.running()
                .iter()
                .all(|asked| {
                    self.nodes_seen_by(*asked).iter().any(|node| {
                        node.port == to && node.slots.iter().any(|(s, e)| (*s..=*e).contains(&slot))
                    })
                })
                .then_some(())
        });
    }

    /// `redis-cli --cluster reshard`: moves `count` slots from the master on `from` to the one
    /// on `to`, keys included.
    pub fn reshard(&self, from: u16, to: u16, count: u16) {
        let output = Command::new("redis-cli")
            .args(self.auth())
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &self.id_of(from)])
            .args(["--cluster-to", &self.id_of(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster reshard failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        self.wait_ok();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
