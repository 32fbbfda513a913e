//! TLS to Redis (`rediss://`, the `redis-tls` feature): instances reach a Redis that speaks TLS
//! only, checking its certificate against `redis_tls_ca_file`; without the CA they do not serve,
//! and a CA file that cannot be used stops them from starting.
//!
//! Each test makes a throwaway CA and a certificate for 127.0.0.1 with the `openssl` CLI and
//! starts a redis-server of its own with TLS only (no plain port). Without `openssl` or
//! redis-server, the tests are ignored outside CI (`tests/common/external.rs`). Without the
//! `redis-tls` feature they are ignored too, saying so, so that a plain `cargo test` shows what it
//! left out instead of running nothing in silence.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::instance::Instance;
use common::redis::Redis;
use common::{answer, external, process, Answer, Server};
use serde_json::{json, Value};
use tempfile::TempDir;

/// What "at once" means for a request refused because the store is unreachable, as in
/// tests/cluster.rs: under the store's own 2 s response timeout, so it did not wait for it.
const AT_ONCE: Duration = Duration::from_millis(1000);

/// A throwaway CA and a server certificate it signed for 127.0.0.1 (an IP SAN), in PEM files
/// that live as long as this.
struct Certificates {
    dir: TempDir,
}

impl Certificates {
    fn generate() -> Certificates {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            dir.path(),
            &format!(
                "req -x509 {new_key} -keyout ca.key -out ca.pem -days 1 \
                 -subj /CN=signpost-test-CA -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
        );
        openssl(
            dir.path(),
            &format!("req {new_key} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
        );
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("the extensions file");
        openssl(
            dir.path(),
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
             -days 1 -extfile server.ext",
        );
        Certificates { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA's certificate: what `redis_tls_ca_file` names.
    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }
}

/// Runs `openssl` in `dir` with `args` (split on whitespace), failing the test with its stderr
/// if it fails.
fn openssl(dir: &Path, args: &str) {
    let mut command = Command::new("openssl");
    command.current_dir(dir).args(args.split_whitespace());
    let output = process::run("openssl", command, common::EVENT_DEADLINE);
    assert!(
        output.status.success(),
        "openssl {args} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The certificates and a TLS-only Redis using them (the test fails when openssl or
/// redis-server is missing: `external::can_run`).
fn tls_redis(test: &str) -> Option<(Certificates, Redis)> {
    let available = Redis::available().and_then(|()| external::programs(&["openssl"], "openssl"));
    if !external::can_run(test, available) {
        return None;
    }
    let certificates = Certificates::generate();
    let redis = Redis::start_tls(
        &certificates.ca(),
        &certificates.path("server.pem"),
        &certificates.path("server.key"),
    );
    Some((certificates, redis))
}

/// Settings for an instance on `redis` over TLS, with a key prefix of the test's own, and
/// `ca_file` as `redis_tls_ca_file` if given.
fn over_tls(redis: &Redis, ca_file: Option<&Path>) -> Value {
    let mut settings = json!({
        "redis_url": format!("rediss://127.0.0.1:{}", redis.port),
        "redis_prefix": format!("tls-{}", uuid::Uuid::new_v4().simple()),
    });
    if let Some(ca_file) = ca_file {
        settings["redis_tls_ca_file"] = json!(ca_file);
    }
    settings
}

/// Two instances on one Redis that speaks TLS only, trusting the test's CA through
/// `redis_tls_ca_file`, are ready and serve as one: a stream on one receives a join and a
/// message made on the other. Every wake-up crosses instances on the pub/sub connection, so
/// both it and the command connection go over TLS (the Redis has no plain port).
#[cfg_attr(
    not(feature = "redis-tls"),
    ignore = "needs the redis-tls feature: cargo test --features redis-tls --test redis_tls"
)]
#[cfg_attr(
    all(
        feature = "redis-tls",
        any(signpost_missing = "redis", signpost_missing = "openssl")
    ),
    ignore = "needs redis-server and openssl: apt-get install redis-server openssl (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_serve_as_one_through_a_redis_that_speaks_only_tls() {
    let Some((certificates, redis)) = tls_redis("redis_tls_cluster") else {
        return;
    };
    let settings = over_tls(&redis, Some(&certificates.ca()));
    let (a, b) = (
        Server::with(settings.clone()).await,
        Server::with(settings).await,
    );
    for server in [&a, &b] {
        let (status, body) = server.get_json("/readyz").await;
        assert_eq!(status, 200, "/readyz over TLS: {body}");
    }

    let alice = a.join("secure", "alice").await;
    let mut alice_events = alice.events(None).await;
    let bob = b.join("secure", "bob").await;
    let join = alice_events.next_message().await;
    assert_eq!(
        (join["id"].as_u64(), join["type"].as_str()),
        (Some(1), Some("join"))
    );
    assert_eq!(join["data"]["peer_id"], bob.id);

    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": "over TLS"}))
        .await;
    let offer = alice_events.next_message().await;
    assert_eq!(
        (offer["id"].as_u64(), offer["from"].as_str(), &offer["data"]),
        (Some(2), Some(bob.id.as_str()), &json!("over TLS"))
    );
}

/// Without `redis_tls_ca_file` the certificate is checked against the system's roots, which do
/// not hold the test's CA: the handshake fails, and the instance does not serve. It answers as
/// it does whenever Redis is unreachable: `/readyz` and a join say `503 store_unavailable` with
/// `Retry-After`, at once; never a hang, a 500, or a plain-text fallback.
#[cfg_attr(
    not(feature = "redis-tls"),
    ignore = "needs the redis-tls feature: cargo test --features redis-tls --test redis_tls"
)]
#[cfg_attr(
    all(
        feature = "redis-tls",
        any(signpost_missing = "redis", signpost_missing = "openssl")
    ),
    ignore = "needs redis-server and openssl: apt-get install redis-server openssl (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_keeps_the_instance_unready() {
    let Some((_certificates, redis)) = tls_redis("redis_tls_untrusted") else {
        return;
    };
    let server = Server::with(over_tls(&redis, None)).await;
    let requests = [
        ("readyz", server.client.get(server.url("/readyz"))),
        (
            "join",
            server
                .client
                .post(server.url("/api/rooms/untrusted/peers"))
                .json(&json!({"name": "mallory"})),
        ),
    ];
    for (what, request) in requests {
        let Answer {
            status,
            body,
            retry_after,
            took,
        } = answer(request).await;
        assert_eq!(
            (status, &body["error"]),
            (503, &json!("store_unavailable")),
            "{what}"
        );
        assert_eq!(retry_after.as_deref(), Some("1"), "{what}: Retry-After");
        assert!(took < AT_ONCE, "{what} took {took:?}");
    }
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200, "the process itself is alive");
}

/// TLS settings that cannot work stop the server from starting, with a message naming the
/// setting (and the file): a `redis_tls_ca_file` that is missing, that holds no certificate,
/// whose certificate does not parse, or that goes with a plain `redis://` URL; and `#insecure`,
/// which would turn certificate checks off.
#[cfg_attr(
    not(feature = "redis-tls"),
    ignore = "needs the redis-tls feature: cargo test --features redis-tls --test redis_tls"
)]
#[tokio::test]
async fn tls_settings_that_cannot_work_stop_the_server_from_starting() {
    let (tls, plain) = ("rediss://127.0.0.1:6380", "redis://127.0.0.1:6380");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = |name: &str, contents: Option<&str>| {
        let path = dir.path().join(name);
        if let Some(contents) = contents {
            std::fs::write(&path, contents).expect("the file");
        }
        path.to_str().expect("a UTF-8 path").to_owned()
    };
    let missing = file("missing.pem", None);
    let empty = file("not-a-certificate.pem", Some("not a certificate\n"));
    let broken = file(
        "broken.pem",
        Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    );
    let cases = [
        (tls, Some(&missing), "cannot be read"),
        (tls, Some(&empty), "holds no certificate"),
        (tls, Some(&broken), "is not usable"),
        (plain, Some(&empty), "only for a rediss://"),
        ("rediss://127.0.0.1:6380/#insecure", None, "#insecure"),
    ];
    for (url, ca_file, why) in cases {
        let mut settings = format!(r#"redis_url="{url}""#);
        let mut expected = vec![why];
        if let Some(ca_file) = ca_file {
            settings += &format!(r#",redis_tls_ca_file="{ca_file}""#);
            expected.extend(["signpost.redis_tls_ca_file", ca_file]);
        } else {
            expected.push("signpost.redis_url");
        }
        let refusal = Instance::refusal(&settings).await;
        for expected in expected {
            assert!(refusal.contains(expected), "{expected:?} in {refusal}");
        }
    }
}
