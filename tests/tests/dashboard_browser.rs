//! The dashboard in a real browser: Debian's `chromium`, headless, started by the test and
//! driven over the Chrome DevTools Protocol on a WebSocket (no webdriver). The page must show a
//! drone appear and turn OFFLINE, and a backend go from SCHEDULED to READY, without reloading;
//! user input (a label that looks like HTML) stays text; the page throws no error. Screenshots
//! go to `target/test-artifacts/`: `dashboard.png`, `dashboard-dark.png` (the same page with
//! `prefers-color-scheme: dark`) and `dashboard-detail.png` (one backend's status history).
//! With an auth file, the page asks for a token, says why a drone's token may not read, and goes
//! live with a reader's (`dashboard-token.png`, `dashboard-auth.png`).
//!
//! Without chromium the test prints a loud SKIP line, and fails when `HANGAR_REQUIRE_CHROMIUM=1`
//! (CI sets it; `scripts/test` installs chromium).

use base64::Engine;
use hangar::v1::{self, backend_service_client::BackendServiceClient};
use hangar_server::controller::ControllerConfig;
use hangar_testkit::eventually;
use hangar_tests::browser::{Browser, Page, chromium_or_skip};
use hangar_tests::{ManualDrone, TestCluster, drone_hello, status, test_config};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Where test artifacts go: `target/test-artifacts/` of this workspace (or of `CARGO_TARGET_DIR`).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    dir
}

/// A blank tab sized like the screenshots' window, reporting its errors.
async fn open_page(browser: &Browser) -> Page {
    let mut page = Page::blank(browser).await;
    page.call("Runtime.enable", json!({})).await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1440, "height": 960, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    page
}

/// What these tests do with a dashboard page beyond the shared DevTools client.
trait DashboardPage {
    async fn wait_for(&mut self, what: &str, expression: &str);
    async fn screenshot(&mut self, name: &str) -> PathBuf;
}

impl DashboardPage for Page {
    /// Polls `expression` until it is `true`; fails naming `what`, what the page showed last and
    /// its errors.
    async fn wait_for(&mut self, what: &str, expression: &str) {
        // Before the page has loaded, its elements are not there yet: that is "not yet". While
        // not yet, the page answers with what it shows, for the failure message.
        let guarded = format!(
            "(() => {{ try {{ if (({expression}) === true) return true; }} catch (_) {{}} \
             return {{ connection: document.getElementById('connection')?.textContent, \
             nodes: document.querySelector('#nodes tbody')?.innerText, \
             backends: document.querySelector('#backends tbody')?.innerText }}; }})()"
        );
        eventually(WAIT, &format!("the page to show {what}"), async || {
            let shown = self.eval(&guarded).await;
            if shown == Value::Bool(true) {
                return Ok(());
            }
            Err(format!(
                "connection: {}\nnodes:\n{}\nbackends:\n{}\npage errors: {:?}",
                shown["connection"],
                shown["nodes"].as_str().unwrap_or("(none)"),
                shown["backends"].as_str().unwrap_or("(none)"),
                self.errors()
            ))
        })
        .await
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        println!("dashboard screenshot: {}", path.display());
        path
    }
}

/// `document.querySelector(selector)?.dataset.state === state`, as JavaScript.
fn row_state(table: &str, attribute: &str, value: &str, state: &str) -> String {
    format!(
        "(() => {{ const row = document.querySelector('#{table} tbody tr[data-{attribute}=\"{value}\"]'); \
         return !!row && row.dataset.state === '{state}' && row.querySelector('.state').textContent === '{state}'; }})()"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_drones_and_backends_change_live_in_a_real_browser() {
    let Some(chromium) = chromium_or_skip("the_dashboard_shows_drones_and_backends_change_live_in_a_real_browser")
    else {
        return;
    };
    let cluster = TestCluster::sqlite_with(ControllerConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..test_config()
    })
    .await;
    let admin = cluster.controller.admin_url().unwrap();
    let browser = Browser::launch(&chromium, &["--window-size=1440,960"]).await;
    let mut page = open_page(&browser).await;
    page.call("Page.navigate", json!({ "url": format!("{admin}/") })).await;
    page.wait_for("the live stream", "document.getElementById('connection')?.dataset.state === 'live'").await;
    // Gone if the page ever reloads.
    page.eval("window.hangarTestNoReload = true").await;

    // A drone appears.
    let mut hello = drone_hello("drone-a");
    hello.labels.insert("zone".into(), "<img src=x onerror=\"window.pwned=1\">".into());
    let mut drone_a = ManualDrone::attach(&cluster.url(), hello).await.expect("attach drone-a");
    let _beat_a = drone_a.keep_alive(Duration::from_millis(50));
    let mut hello = drone_hello("drone-b");
    hello.pool = "gpu".into();
    let drone_b = ManualDrone::attach(&cluster.url(), hello).await.expect("attach drone-b");
    let beat_b = drone_b.keep_alive(Duration::from_millis(50));
    page.wait_for("drone-a READY", &row_state("nodes", "name", "drone-a", "READY")).await;
    page.wait_for("drone-b READY", &row_state("nodes", "name", "drone-b", "READY")).await;

    // A backend goes from SCHEDULED to READY.
    let mut client = BackendServiceClient::new(cluster.channel().await);
    let config = v1::SpawnConfig {
        executable: Some(v1::Executable { image: "hangar/test-backend:1".into(), ..Default::default() }),
        ..Default::default()
    };
    let request = v1::ConnectRequest {
        key: Some(v1::BackendKey { namespace: "docs".into(), name: "quarterly-report".into(), tag: "v3".into() }),
        spawn_config: Some(config),
        user: "alice".into(),
        auth: Default::default(),
    };
    let backend_id = client.connect(request).await.expect("connect").into_inner().backend_id;
    page.wait_for("the backend SCHEDULED", &row_state("backends", "id", &backend_id, "SCHEDULED")).await;
    let action = drone_a.next_action(WAIT).await;
    assert_eq!(action.backend_id, backend_id);
    drone_a.ack_action(&action.action_id).await;
    drone_a.event_acked("ev-1", &backend_id, status(v1::BackendState::Starting), "127.0.0.1:9").await;
    drone_a.event_acked("ev-2", &backend_id, status(v1::BackendState::Ready), "127.0.0.1:9").await;
    page.wait_for("the backend READY", &row_state("backends", "id", &backend_id, "READY")).await;
    let key = page
        .eval(&format!("document.querySelector('#backends tr[data-id=\"{backend_id}\"] td.key').textContent"))
        .await;
    assert_eq!(key, "docs/quarterly-report@v3");

    // A drone stops: OFFLINE.
    beat_b.abort();
    drop(drone_b);
    page.wait_for("drone-b OFFLINE", &row_state("nodes", "name", "drone-b", "OFFLINE")).await;

    // User input stayed text: the label shows as written and made no element.
    let label_shown = page
        .eval("[...document.querySelectorAll('#nodes .label')].some(l => l.textContent === 'zone=<img src=x onerror=\"window.pwned=1\">')")
        .await;
    assert_eq!(label_shown, Value::Bool(true), "the label is shown as text");
    assert_eq!(page.eval("document.querySelectorAll('main img, #nodes img').length").await, json!(0));
    assert_eq!(page.eval("window.pwned === undefined").await, Value::Bool(true));
    // The filters hear the new pool.
    page.wait_for(
        "the gpu pool in the filter",
        "[...document.querySelectorAll('#filter-pool option')].some(o => o.value === 'gpu')",
    )
    .await;
    // Ages tick live.
    page.wait_for(
        "a ticking heartbeat age",
        "/^\\d+s$/.test(document.querySelector('#nodes tr[data-name=\"drone-a\"] td.age').textContent)",
    )
    .await;

    let shot = page.screenshot("dashboard.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot of a rendered page");
    let scheme = |value: &str| json!({ "features": [{ "name": "prefers-color-scheme", "value": value }] });
    page.call("Emulation.setEmulatedMedia", scheme("dark")).await;
    let background = page.eval("getComputedStyle(document.body).backgroundColor").await;
    assert_ne!(background, json!("rgb(246, 247, 249)"), "dark mode follows prefers-color-scheme");
    page.screenshot("dashboard-dark.png").await;
    page.call("Emulation.setEmulatedMedia", scheme("light")).await;

    // The backend's history, in the detail view.
    page.eval(&format!("document.querySelector('#backends tr[data-id=\"{backend_id}\"] button').click()")).await;
    page.wait_for(
        "the status history",
        "JSON.stringify([...document.querySelectorAll('#history tbody tr')].map(r => r.dataset.state)) === '[\"SCHEDULED\",\"STARTING\",\"READY\"]'",
    )
    .await;
    page.screenshot("dashboard-detail.png").await;

    assert_eq!(page.eval("window.hangarTestNoReload === true").await, Value::Bool(true), "the page never reloaded");
    assert!(page.errors().is_empty(), "the page reported errors: {:#?}", page.errors());
    browser.close(page).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_auth_file_the_page_asks_for_a_token_refuses_a_drones_and_goes_live_with_a_readers() {
    let Some(chromium) = chromium_or_skip("with_an_auth_file_the_page_asks_for_a_token") else { return };
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        "[[token]]\nname = \"viewer\"\nrole = \"reader\"\nsecret = \"reader-secret-0123456789abcdef\"\n\n\
         [[token]]\nname = \"drone-token\"\nrole = \"drone\"\nsecret = \"drone-secret-0123456789abcdef\"\n",
    )
    .unwrap();
    let cluster = TestCluster::sqlite_with(ControllerConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        auth_file: Some(auth),
        ..test_config()
    })
    .await;
    let admin = cluster.controller.admin_url().unwrap();
    let browser = Browser::launch(&chromium, &["--window-size=1440,960"]).await;
    let mut page = open_page(&browser).await;
    page.call("Page.navigate", json!({ "url": format!("{admin}/") })).await;
    let asks = "!document.getElementById('token-panel').hidden && document.getElementById('main').hidden";
    page.wait_for("the token form", asks).await;

    let sign_in = |token: &str| {
        format!(
            "document.getElementById('token-input').value = '{token}'; \
             document.getElementById('token-form').requestSubmit(); true"
        )
    };
    page.eval(&sign_in("drone-secret-0123456789abcdef")).await;
    page.wait_for(
        "the drone token refused for its role",
        &format!("{asks} && document.getElementById('token-reason').textContent.includes('role drone may not')"),
    )
    .await;
    page.screenshot("dashboard-token.png").await;

    page.eval(&sign_in("reader-secret-0123456789abcdef")).await;
    page.wait_for("the live stream", "document.getElementById('connection').dataset.state === 'live'").await;
    assert_eq!(page.eval("document.getElementById('token-panel').hidden").await, Value::Bool(true));
    // Kept for this tab only.
    assert_eq!(
        page.eval("sessionStorage.getItem('hangar.dashboard.token')").await,
        json!("reader-secret-0123456789abcdef")
    );
    let drone = hangar_tests::auth::attach_drone(&cluster.url(), "drone-secret-0123456789abcdef", "drone-a").await;
    let drone = drone.expect("the drone token attaches");
    page.wait_for("drone-a READY", &row_state("nodes", "name", "drone-a", "READY")).await;
    page.screenshot("dashboard-auth.png").await;
    assert!(page.errors().is_empty(), "the page reported errors: {:#?}", page.errors());
    drop(drone);
    browser.close(page).await;
    cluster.shutdown().await;
}
