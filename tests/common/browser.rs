//! Headless Chromium for the browser tests, driven over the DevTools protocol (chromiumoxide).
//!
//! Each test launches its own Chromium with a fresh profile and opens pages of the room client
//! served by a test server. Tests take turns ([`Chromium::launch`] holds a process-wide lock), so
//! that two cores are never shared by several browsers doing video at once.
//!
//! Without Chromium, the tests are built ignored, each with
//! `#[cfg_attr(signpost_missing = "chromium", ignore = "needs Chromium …")]`, unless `CI=true`
//! (or `SIGNPOST_BROWSER_TESTS=1`) says the browser tests must run, in which case they fail: the
//! policy of `common/external.rs`.

use std::path::Path;
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

use crate::common::{external, requirements};

/// How long a test waits for a condition in a page before failing. Generous because WebRTC
/// set-up and video decoding on a loaded two-core machine take seconds; it bounds a hang, it
/// does not pace the test.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition in a page is checked while waiting for it.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// One browser at a time across the tests of a binary (see the module doc).
static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The flags the browser tests run with: headless, fake camera and microphone granted without a
/// prompt, host candidates with real addresses (no mDNS), autoplay with sound, and nothing that
/// talks to the network on its own.
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-quic",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    // Several pages of one browser run at once; none of them may be throttled as hidden.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    // Containers often have a small /dev/shm.
    "--disable-dev-shm-usage",
];

/// A running headless Chromium with its own profile directory.
pub struct Chromium {
    browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Chromium {
    /// Launches Chromium for `test` (which fails when there is none: `external::can_run`).
    /// Pages get the fake camera and microphone without a prompt.
    pub async fn launch(test: &str) -> Option<Chromium> {
        Chromium::launch_with(test, FLAGS).await
    }

    /// Like [`Chromium::launch`], but every permission prompt is answered "Block", so pages are
    /// refused the camera and microphone as by a person who said no.
    pub async fn launch_refusing_media(test: &str) -> Option<Chromium> {
        let mut flags: Vec<&str> = FLAGS
            .iter()
            .copied()
            .filter(|flag| *flag != "--use-fake-ui-for-media-stream")
            .collect();
        flags.push("--deny-permission-prompts");
        Chromium::launch_with(test, &flags).await
    }

    async fn launch_with(test: &str, flags: &[&str]) -> Option<Chromium> {
        let executable = requirements::chromium();
        if !external::can_run(test, executable.as_ref().map(|_| ()).map_err(Clone::clone)) {
            return None;
        }
        let executable = executable.expect("checked above");
        let turn = ONE_BROWSER_AT_A_TIME.lock().await;
        let profile = tempfile::tempdir().expect("a profile directory");
        let config = BrowserConfig::builder()
            .chrome_executable(executable)
            .disable_default_args()
            .with_head() // headless all the same: --headless=new is in FLAGS
            .user_data_dir(profile.path())
            .args(flags.iter().map(|flag| flag.trim_start_matches("--")))
            .window_size(1280, 800)
            .viewport(None)
            .launch_timeout(Duration::from_secs(30))
            .request_timeout(Duration::from_secs(30))
            .build()
            .expect("a browser configuration");
        let (browser, mut events) = Browser::launch(config).await.expect("Chromium starts");
        let handler = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if event.is_err() {
                    // Messages chromiumoxide cannot parse are not the test's concern; a closed
                    // connection ends the stream.
                    continue;
                }
            }
        });
        Some(Chromium {
            browser,
            handler,
            _profile: profile,
            _turn: turn,
        })
    }

    /// Opens `url` in a new page and waits until the room client has loaded.
    pub async fn open(&self, url: &str) -> Tab {
        let page = self.browser.new_page(url).await.expect("a new page");
        let tab = Tab {
            page,
            url: url.to_owned(),
        };
        tab.wait_for("the page's automation hook", "window.signpostApp && true")
            .await;
        tab
    }

    /// Opens the room client at `url` in a new page and waits until it has joined its room:
    /// returns the page and its peer id, as every browser test starts a peer.
    pub async fn join(&self, url: &str) -> (Tab, String) {
        let tab = self.open(url).await;
        let id = tab.peer_id().await;
        (tab, id)
    }

    /// Opens `url`, any page rather than the room client's, in a new page; returns once it has
    /// loaded. The test then waits for what the page itself sets up.
    pub async fn open_other(&self, url: &str) -> Tab {
        let page = self.browser.new_page(url).await.expect("a new page");
        Tab {
            page,
            url: url.to_owned(),
        }
    }

    /// Closes the browser and waits for its process to exit.
    pub async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

/// One page of the room client.
pub struct Tab {
    pub page: Page,
    pub url: String,
}

impl Tab {
    /// The value of the JavaScript expression `expression` (awaited if it is a promise), as JSON
    /// (`undefined` becomes `null`).
    pub async fn eval(&self, expression: &str) -> Value {
        let wrapped = format!("(async () => JSON.stringify({{ value: await ({expression}) }}))()");
        let result = self
            .page
            .evaluate(wrapped.as_str())
            .await
            .unwrap_or_else(|error| {
                panic!("{}: evaluating `{expression}` failed: {error}", self.url)
            });
        let text: String = result.into_value().expect("JSON text");
        let mut object: Value = serde_json::from_str(&text).expect("JSON");
        object["value"].take()
    }

    /// Waits until `expression` is truthy and returns its value; fails the test with
    /// `what` if that does not happen within [`PAGE_DEADLINE`].
    pub async fn wait_for(&self, what: &str, expression: &str) -> Value {
        self.wait_until(what, expression, truthy).await
    }

    /// Waits until `accept` holds for the value of `expression`, and returns that value.
    pub async fn wait_until(
        &self,
        what: &str,
        expression: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let checks = async {
            loop {
                let value = self.eval(expression).await;
                if accept(&value) {
                    return value;
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        };
        match tokio::time::timeout(PAGE_DEADLINE, checks).await {
            Ok(value) => value,
            Err(_) => {
                let last = self.eval(expression).await;
                let status = self.eval(STATUS_SNAPSHOT).await;
                panic!(
                    "{}: {what} did not happen within {PAGE_DEADLINE:?}\n  last value of `{expression}`: {last}\n  page status: {status}",
                    self.url
                )
            }
        }
    }

    /// Waits until this page sees every peer of `others` with an open chat channel and a
    /// connected peer connection.
    pub async fn wait_connected(&self, others: &[&str]) {
        let expected: Vec<Value> = others.iter().map(|id| Value::from(*id)).collect();
        let check = format!(
            "(() => {{ const ids = {}; const peers = signpostApp.peers(); \
             return ids.every(id => peers.some(p => p.peer_id === id && p.connectionState === 'connected' \
             && p.dataChannelState === 'open')) }})()",
            Value::from(expected)
        );
        self.wait_for(&format!("connecting to {others:?}"), &check)
            .await;
    }

    /// Waits until this page's chat log holds `text` from `from`.
    pub async fn wait_chat(&self, from: &str, text: &str) {
        let check = format!(
            "signpostApp.chatLog().some(m => m.from === {} && m.text === {})",
            Value::from(from),
            Value::from(text)
        );
        self.wait_for(&format!("chat {text:?} from {from}"), &check)
            .await;
    }

    /// This page's peer id, once it has joined.
    pub async fn peer_id(&self) -> String {
        let value = self
            .wait_for("joining the room", "signpostApp.peerId()")
            .await;
        value.as_str().expect("a peer id").to_owned()
    }

    /// Saves a PNG screenshot of the page as `<name>.png` in `$SIGNPOST_SCREENSHOTS`, when that
    /// is set: a way to look at what the tests saw.
    pub async fn screenshot(&self, name: &str) {
        let Some(folder) = std::env::var_os("SIGNPOST_SCREENSHOTS") else {
            return;
        };
        let path = Path::new(&folder).join(format!("{name}.png"));
        let params = ScreenshotParams::builder()
            .format(CaptureScreenshotFormat::Png)
            .full_page(true)
            .build();
        self.page
            .save_screenshot(params, &path)
            .await
            .expect("a screenshot");
    }

    /// Closes the page as a person closing the tab would (its unload handlers run).
    pub async fn close(self) {
        self.page.close().await.expect("the page closes");
    }
}

/// What a failing wait prints about the page: its peers, transport and shown errors (nothing on
/// a page other than the room client).
const STATUS_SNAPSHOT: &str = "typeof signpostApp === 'undefined' ? null : ({ transport: signpostApp.transport(), peers: signpostApp.peers(), \
    errors: [...document.querySelectorAll('#status-errors li')].map(li => li.textContent) })";

/// Whether JavaScript counts `value` as true (for the waits of Chromium's and Firefox's pages).
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
