//! Debian's `chromium`, headless, driven over the Chrome DevTools Protocol on its WebSocket (no
//! webdriver): for tests whose client must be a real browser. Without chromium a test prints a
//! loud SKIP line, and fails when `HANGAR_REQUIRE_CHROMIUM=1` (CI sets it; `scripts/test`
//! installs chromium).

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

/// `chromium` (Debian) or `chromium-browser` from `PATH`, or `None` after a loud SKIP line naming
/// `test` (a failure with `HANGAR_REQUIRE_CHROMIUM=1`).
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let required = std::env::var("HANGAR_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
        assert!(!required, "HANGAR_REQUIRE_CHROMIUM=1 but no chromium on PATH (scripts/test installs it with apt)");
        eprintln!(
            "!!!!!!!! SKIPPED {test}: no `chromium` on PATH (apt-get install chromium, or run scripts/test, which \
             does); set HANGAR_REQUIRE_CHROMIUM=1 to fail instead !!!!!!!!"
        );
    }
    found
}

/// A headless chromium, killed when dropped.
pub struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws_url: String,
    /// Chromium's stderr lines, for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    /// Starts `binary` headless with `extra_args` on top of the usual ones.
    pub async fn launch(binary: &PathBuf, extra_args: &[&str]) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut child = tokio::process::Command::new(binary)
            .args([
                "--headless",
                // Root in a container has no sandbox to offer; the browser loads only test pages.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
            ])
            .args(extra_args)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", binary.display()));
        // Chromium prints `DevTools listening on ws://…` once its port is open; the rest of its
        // stderr is read on (a full pipe would block it) and kept.
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let ws_url = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap_or(None) {
                if let Some((_, url)) = line.split_once("DevTools listening on ") {
                    return Some(url.trim().to_string());
                }
                log.lock().unwrap().push(line);
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("chromium printed no DevTools URL; its stderr:\n{}", log.lock().unwrap().join("\n")));
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        Browser { child, _profile: profile, ws_url, log }
    }

    /// Asks chromium, over `page`'s DevTools connection, to close, and waits up to 5 s for it
    /// to exit before killing it (with its stderr in the test's output).
    pub async fn close(mut self, mut page: Page) {
        page.session.clear(); // Browser.close is the browser's, not the page's
        let _ = page.call("Browser.close", json!({})).await;
        drop(page);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            eprintln!(
                "chromium did not exit after Browser.close; killing it. Its stderr:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            let _ = self.child.kill().await;
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page (a flattened DevTools session); keeps every event it was sent.
pub struct Page {
    socket: Socket,
    next_id: u64,
    session: String,
    pub events: Vec<Value>,
}

impl Page {
    /// A new tab at `url`, loaded.
    pub async fn open(browser: &Browser, url: &str) -> Page {
        let mut page = Page::blank(browser).await;
        page.call("Page.enable", json!({})).await;
        page.call("Network.enable", json!({})).await;
        page.call("Page.navigate", json!({ "url": url })).await;
        page.wait_for_event("Page.loadEventFired").await;
        page
    }

    /// A new blank tab, attached, with no DevTools domain enabled yet.
    pub async fn blank(browser: &Browser) -> Page {
        let (socket, _) = tokio_tungstenite::connect_async(&browser.ws_url).await.expect("DevTools WebSocket");
        let mut page = Page { socket, next_id: 0, session: String::new(), events: Vec::new() };
        let target = page.call("Target.createTarget", json!({ "url": "about:blank" })).await;
        let attached =
            page.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true })).await;
        page.session = attached["sessionId"].as_str().expect("a session id").to_string();
        page
    }

    /// The uncaught exceptions and console errors the page reported (with `Runtime` enabled)
    /// among the events kept so far.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|event| match event["method"].as_str() {
                Some("Runtime.exceptionThrown") => Some(event["params"]["exceptionDetails"].to_string()),
                Some("Runtime.consoleAPICalled") if event["params"]["type"] == "error" => {
                    Some(event["params"]["args"].to_string())
                }
                _ => None,
            })
            .collect()
    }

    /// Sends `method` and returns its result; events that arrive meanwhile are kept.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket.send(Message::text(message.to_string())).await.expect("DevTools send");
        let reply = tokio::time::timeout(WAIT, async {
            loop {
                let value = self.next_message().await;
                if value["id"] == id {
                    return value;
                }
                self.events.push(value);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no DevTools answer within {WAIT:?}"));
        if let Some(error) = reply.get("error") {
            panic!("{method}: {error}");
        }
        reply["result"].clone()
    }

    async fn next_message(&mut self) -> Value {
        loop {
            let frame = self.socket.next().await.expect("DevTools socket open").expect("DevTools read");
            if let Message::Text(text) = frame {
                return serde_json::from_str(&text).expect("DevTools JSON");
            }
        }
    }

    /// Waits for (and returns) the next event named `method`, or one already kept.
    pub async fn wait_for_event(&mut self, method: &str) -> Value {
        if let Some(event) = self.events.iter().find(|event| event["method"] == method) {
            return event.clone();
        }
        tokio::time::timeout(WAIT, async {
            loop {
                let value = self.next_message().await;
                self.events.push(value.clone());
                if value["method"] == method {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {method} event within {WAIT:?}"))
    }

    /// The value of a JavaScript expression in the page, awaited if it is a promise; panics with
    /// the exception if it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression).await.unwrap_or_else(|exception| panic!("{expression}: {exception}"))
    }

    /// The value of a JavaScript expression in the page, awaited if it is a promise, or what it
    /// threw.
    pub async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params).await;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }
}
