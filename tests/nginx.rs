//! Several instances behind a real nginx, as an operator deploys them: two signpost processes on
//! one Redis, nginx load-balancing them round-robin with no sticky sessions, and real Chromium
//! pages of the room client talking through nginx.
//!
//! Needs redis-server, nginx and Chromium; ignored with the reason outside CI when one is
//! missing, a failure under `CI=true` (`common/external.rs`).

#[path = "common/browser.rs"]
#[allow(dead_code)] // this test uses part of it
mod chrome;
mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use chrome::Chromium;
use common::external;
use common::instance::Instance;
use common::process::{ChildProcess, Watch};
use common::redis::Redis;

/// A real nginx in front of `upstreams`, round-robin, configured as the README advises; single
/// process, in a directory of its own, killed when dropped.
struct Nginx {
    port: u16,
    _process: ChildProcess,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[u16]) -> Nginx {
        let dir = tempfile::tempdir().expect("a directory for nginx");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let path = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|port| format!("server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;\n"))
            .collect();
        let config = format!(
            r#"daemon off;
master_process off;
pid {path}/nginx.pid;
error_log {path}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {path}/body;
    proxy_temp_path {path}/proxy;
    fastcgi_temp_path {path}/fastcgi;
    uwsgi_temp_path {path}/uwsgi;
    scgi_temp_path {path}/scgi;
    upstream signpost {{
        {servers}
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://signpost;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_cache off;
            gzip off;
            proxy_read_timeout 75s;
            proxy_next_upstream error timeout http_503;
        }}
    }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), config).expect("nginx.conf written");
        let mut command = Command::new(nginx_binary());
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = ChildProcess::spawn("nginx", command, Watch::Nothing);
        // Readiness probe: nginx takes a moment to listen.
        process.await_port(port, common::EVENT_DEADLINE);
        Nginx {
            port,
            _process: process,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

fn nginx_available() -> Result<(), String> {
    common::requirements::nginx().map(drop)
}

/// Two pages, through nginx round-robin over two instances sharing one Redis, connect and chat;
/// the instance one of them streamed from is killed (SIGKILL); both keep chatting, their
/// signaling resumes on the surviving instance (nginx sends them there), and a third page that
/// joins afterwards connects to both, which needs both old pages to receive its join and answer
/// its offers: no sticky sessions, and no page stuck on a dead instance.
#[cfg_attr(
    any(
        signpost_missing = "chromium",
        signpost_missing = "redis",
        signpost_missing = "nginx"
    ),
    ignore = "needs Chromium, redis-server and nginx: apt-get install chromium redis-server nginx (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_behind_round_robin_nginx_keep_working_when_an_instance_dies() {
    const TEST: &str = "pages_behind_round_robin_nginx_keep_working_when_an_instance_dies";
    let programs = Redis::available().and_then(|()| nginx_available());
    if !external::can_run(TEST, programs) {
        return;
    }
    let Some(chromium) = Chromium::launch(TEST).await else {
        return;
    };
    let redis = Redis::start();
    let settings = format!(
        "redis_url=\"{}\",redis_prefix=\"nginx\",log_level=\"info\"",
        redis.url()
    );
    let first = Instance::start(&settings);
    let second = Instance::start(&settings);
    let nginx = Nginx::start(&[first.port, second.port]);
    let page = |name: &str| nginx.url(&format!("/?room=lb&name={name}&media=none"));

    let (alice, alice_id) = chromium.join(&page("Alice")).await;
    let (bob, bob_id) = chromium.join(&page("Bob")).await;
    alice.wait_connected(&[&bob_id]).await;
    bob.wait_connected(&[&alice_id]).await;
    alice.eval("signpostApp.sendChat('before')").await;
    bob.wait_chat(&alice_id, "before").await;

    // Round robin spread the pages' requests over both instances. The one that dies is one
    // that holds a page's stream, so that the page must find the other through nginx.
    let streams = |instance: &Instance| sse_streams(instance.base.clone());
    let (on_first, on_second) = (streams(&first).await, streams(&second).await);
    assert_eq!(on_first + on_second, 2.0, "both pages stream");
    let (mut doomed, survivor) = if on_first > 0.0 {
        (first, second)
    } else {
        (second, first)
    };
    doomed.kill();

    alice
        .eval("signpostApp.sendChat('after, from Alice')")
        .await;
    bob.wait_chat(&alice_id, "after, from Alice").await;
    bob.eval("signpostApp.sendChat('after, from Bob')").await;
    alice.wait_chat(&bob_id, "after, from Bob").await;

    let (carol, carol_id) = chromium.join(&page("Carol")).await;
    carol.wait_connected(&[&alice_id, &bob_id]).await;
    alice.wait_connected(&[&bob_id, &carol_id]).await;
    bob.wait_connected(&[&alice_id, &carol_id]).await;
    carol.eval("signpostApp.sendChat('hello both')").await;
    alice.wait_chat(&carol_id, "hello both").await;
    bob.wait_chat(&carol_id, "hello both").await;
    assert_eq!(
        sse_streams(survivor.base.clone()).await,
        3.0,
        "every page streams from the surviving instance"
    );
    for tab in [&alice, &bob, &carol] {
        let names = tab
            .eval("signpostApp.peers().map(p => p.name).sort()")
            .await;
        assert_eq!(
            names.as_array().map(Vec::len),
            Some(2),
            "each page lists the other two: {names}"
        );
    }

    chromium.close().await;
    drop(survivor);
    drop(nginx);
}

/// The SSE streams an instance holds, from its `/metrics`.
async fn sse_streams(base: String) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix("signpost_sse_streams "))
        .and_then(|value| value.trim().parse().ok())
        .expect("signpost_sse_streams in /metrics")
}
