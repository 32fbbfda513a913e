//! Headless Firefox for the browser tests, driven over WebDriver BiDi (a WebSocket speaking
//! JSON commands, https://w3c.github.io/webdriver-bidi/): enough to open a page and evaluate
//! JavaScript in it, as `common/browser.rs` does for Chromium over CDP.
//!
//! Firefox runs with a fresh profile whose prefs make WebRTC usable between local browsers
//! (real host addresses instead of mDNS names). Without Firefox, a test is skipped with the
//! reason printed, and fails under `CI=true` (`common/external.rs`).

use std::process::{Command, Stdio};
use std::time::Duration;

use async_tungstenite::tokio::{connect_async, ConnectStream};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::chrome::{truthy, PAGE_DEADLINE};
use crate::common::process::{ChildProcess, Watch};
use crate::common::{external, requirements};

/// How often a condition in a page is checked while waiting for it.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Profile prefs: host candidates with real addresses (Firefox hides them behind mDNS names,
/// which do not resolve here), no first-run pages, and a fake camera should a page ask.
const PREFS: &str = r#"
user_pref("media.peerconnection.ice.obfuscate_host_addresses", false);
user_pref("media.navigator.permission.disabled", true);
user_pref("media.navigator.streams.fake", true);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.enabled", false);
"#;

/// The Firefox to run: `$FIREFOX`, else the first of the usual paths that exists.
/// A running headless Firefox and its BiDi session.
pub struct Firefox {
    process: ChildProcess,
    session: Mutex<Session>,
    _profile: tempfile::TempDir,
}

/// The BiDi WebSocket, and the id of the next command.
struct Session {
    socket: WebSocketStream<ConnectStream>,
    next_id: u64,
}

impl Firefox {
    /// Launches Firefox for `test`, or returns `None` after printing why the test is skipped.
    pub async fn launch(test: &str) -> Option<Firefox> {
        let executable = requirements::firefox();
        if !external::can_run(test, executable.as_ref().map(|_| ()).map_err(Clone::clone)) {
            return None;
        }
        let profile = tempfile::tempdir().expect("a profile directory");
        std::fs::write(profile.path().join("user.js"), PREFS).expect("the profile's prefs");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut command = Command::new(executable.expect("checked above"));
        command
            .args(["--headless", "--no-remote", "--remote-debugging-port"])
            .arg(port.to_string())
            .arg("--profile")
            .arg(profile.path())
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = ChildProcess::spawn("Firefox", command, Watch::Nothing);
        let url = format!("ws://127.0.0.1:{port}/session");
        let connect = async {
            loop {
                if let Ok((socket, _)) = connect_async(url.as_str()).await {
                    return socket;
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        };
        let socket = tokio::time::timeout(PAGE_DEADLINE, connect)
            .await
            .expect("Firefox's WebDriver BiDi endpoint answers");
        let firefox = Firefox {
            process,
            session: Mutex::new(Session { socket, next_id: 1 }),
            _profile: profile,
        };
        firefox
            .command("session.new", json!({"capabilities": {}}))
            .await;
        Some(firefox)
    }

    /// Sends one command and returns its `result`; fails the test on an error answer.
    async fn command(&self, method: &str, params: Value) -> Value {
        let mut session = self.session.lock().await;
        let id = session.next_id;
        session.next_id += 1;
        let text = json!({"id": id, "method": method, "params": params}).to_string();
        session
            .socket
            .send(Message::text(text))
            .await
            .expect("a BiDi command goes out");
        let answer = async {
            while let Some(message) = session.socket.next().await {
                let message = message.expect("a BiDi message");
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                // Events (no id) and answers to other commands are not this command's.
                if value["id"] == id {
                    return value;
                }
            }
            panic!("Firefox closed its BiDi connection during {method}");
        };
        let value = tokio::time::timeout(PAGE_DEADLINE, answer)
            .await
            .unwrap_or_else(|_| panic!("Firefox did not answer {method} in time"));
        assert_eq!(value["type"], "success", "{method} failed: {value}");
        value["result"].clone()
    }

    /// Opens `url` in the browser's first tab and waits until the room client has loaded.
    pub async fn open(&self, url: &str) -> FirefoxTab<'_> {
        let tree = self.command("browsingContext.getTree", json!({})).await;
        let context = tree["contexts"][0]["context"]
            .as_str()
            .expect("a browsing context")
            .to_owned();
        self.command(
            "browsingContext.navigate",
            json!({"context": context, "url": url, "wait": "complete"}),
        )
        .await;
        let tab = FirefoxTab {
            firefox: self,
            context,
            url: url.to_owned(),
        };
        tab.wait_for("the page's automation hook", "window.signpostApp && true")
            .await;
        tab
    }

    /// Ends the session and the browser.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.command("browser.close", json!({})),
        )
        .await;
        self.process.kill();
    }
}

/// The page in a Firefox tab.
pub struct FirefoxTab<'a> {
    firefox: &'a Firefox,
    context: String,
    pub url: String,
}

impl FirefoxTab<'_> {
    /// The value of the JavaScript expression `expression` (awaited if it is a promise), as
    /// JSON (`undefined` becomes `null`).
    pub async fn eval(&self, expression: &str) -> Value {
        let wrapped = format!("(async () => JSON.stringify({{ value: await ({expression}) }}))()");
        let result = self
            .firefox
            .command(
                "script.evaluate",
                json!({
                    "expression": wrapped,
                    "target": {"context": self.context},
                    "awaitPromise": true,
                    "resultOwnership": "none",
                }),
            )
            .await;
        assert_eq!(
            result["type"], "success",
            "{}: evaluating `{expression}` failed: {result}",
            self.url
        );
        let text = result["result"]["value"].as_str().expect("JSON text");
        let mut object: Value = serde_json::from_str(text).expect("JSON");
        object["value"].take()
    }

    /// Waits until `expression` is truthy and returns its value; fails the test with `what` if
    /// that does not happen within the page deadline.
    pub async fn wait_for(&self, what: &str, expression: &str) -> Value {
        let checks = async {
            loop {
                let value = self.eval(expression).await;
                if truthy(&value) {
                    return value;
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        };
        match tokio::time::timeout(PAGE_DEADLINE, checks).await {
            Ok(value) => value,
            Err(_) => {
                let status = self
                    .eval("({ peers: signpostApp.peers(), errors: [...document.querySelectorAll('#status-errors li')].map(li => li.textContent) })")
                    .await;
                panic!(
                    "{}: {what} did not happen within {PAGE_DEADLINE:?}\n  page status: {status}",
                    self.url
                )
            }
        }
    }
}
