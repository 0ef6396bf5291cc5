//! The web page of `xomcloud serve` in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, started here) against `xomcloud serve` with the scdl stub. The assertions are
//! on the DOM; each test also saves a screenshot of its final state under
//! `target/ui-screenshots/` for people reviewing a change.
//!
//! The browser is Debian's `chromium` and `chromium-driver` (`scripts/setup.sh --test` installs
//! them), or whatever `CHROME_BIN` and `CHROMEDRIVER` name. Without them every test fails with
//! the install command: none passes without a browser.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{json, Value};
use support::serve::{serve, Server};

const SECRET: &str = "web-ui-secret";
const LIMIT: Duration = Duration::from_secs(60);
const INSTALL: &str = "install Chromium with `scripts/setup.sh --test` (as root it runs \
    `apt-get install -y --no-install-recommends chromium chromium-driver`), or point CHROME_BIN \
    and CHROMEDRIVER at a Chrome and its chromedriver";

/// One browser at a time: the machines that run the suite have two cores.
static BROWSER_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- The browser ----

/// `name` as a path: as given when it has a '/', else looked up on PATH.
fn executable(var: &str, default: &str) -> PathBuf {
    let name = std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned());
    let found = if name.contains('/') {
        Some(PathBuf::from(&name))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(&name))
                .find(|p| p.is_file())
        })
    };
    match found {
        Some(path) if path.is_file() => path,
        _ => panic!("{var}: {name} is missing: {INSTALL}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// chromedriver's log endpoint (`POST /session/{id}/se/log`), which W3C WebDriver lacks.
#[derive(Debug)]
struct GetLog(&'static str);

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": self.0 }).to_string()),
        )
    }
}

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Entries of the browser's console log so far (reading the log drains it).
    console: Vec<Value>,
    /// `(method, url)` of every request the page made so far (Chrome's performance log).
    requests: Vec<(String, String)>,
    name: &'static str,
}

impl Browser {
    /// Headless Chromium with its own profile; `width` × `height` CSS pixels.
    async fn start(name: &'static str, width: u32, height: u32) -> Self {
        let chrome = executable("CHROME_BIN", "/usr/bin/chromium");
        let chromedriver = executable("CHROMEDRIVER", "/usr/bin/chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = profile.path().join("chromedriver.log");
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browser it starts goes with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", chromedriver.display()));
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chrome,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--disable-sync",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--lang=en-US",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
            }),
        );
        caps.insert(
            "goog:loggingPrefs".into(),
            json!({"browser": "ALL", "performance": "ALL"}),
        );
        let start = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}/"))
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    if let Ok(Some(status)) = driver.try_wait() {
                        panic!("chromedriver exited ({status}); {INSTALL}");
                    }
                    if start.elapsed() > Duration::from_secs(30) {
                        let _ = kill_group(&mut driver);
                        let log = std::fs::read_to_string(&log).unwrap_or_default();
                        let tail: String = log
                            .chars()
                            .rev()
                            .take(3000)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        panic!("no browser session within 30 s: {e}\n{tail}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        client.set_window_size(width, height).await.unwrap();
        Self {
            client,
            driver,
            _profile: profile,
            console: Vec::new(),
            requests: Vec::new(),
            name,
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// What the page shows, read from its DOM.
    async fn state(&self) -> Value {
        self.js(STATE_JS, vec![]).await
    }

    /// Polls the page's state until `check` accepts it.
    async fn until(&self, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
        let limit = LIMIT;
        let start = Instant::now();
        loop {
            let state = self.state().await;
            if check(&state) {
                return state;
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; the page shows {state:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types into a field as a person would (key events, `input` events).
    async fn type_into(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Empties a text field the way select-all + delete does.
    async fn clear(&self, css: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        self.js(
            "document.querySelector(arguments[0]).dispatchEvent(new Event('input'));",
            vec![json!(css)],
        )
        .await;
    }

    /// Reads the browser's logs into `console` and `requests`.
    async fn drain_logs(&mut self) {
        let console = self.client.issue_cmd(GetLog("browser")).await.unwrap();
        self.console
            .extend(console.as_array().cloned().unwrap_or_default());
        let performance = self.client.issue_cmd(GetLog("performance")).await.unwrap();
        for entry in performance.as_array().cloned().unwrap_or_default() {
            let Some(message) = entry["message"].as_str() else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(message) else {
                continue;
            };
            let event = &event["message"];
            // Chrome's own pages (its new-tab page at start-up) are not the page under test.
            let document = event["params"]["documentURL"].as_str().unwrap_or_default();
            let internal = ["chrome:", "chrome-untrusted:", "devtools:"]
                .iter()
                .any(|scheme| document.starts_with(scheme));
            if event["method"] == "Network.requestWillBeSent" && !internal {
                let request = &event["params"]["request"];
                self.requests.push((
                    request["method"].as_str().unwrap_or_default().to_owned(),
                    request["url"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }

    /// The console's errors (uncaught exceptions, `console.error`, CSP refusals, failed loads).
    async fn console_errors(&mut self) -> Vec<Value> {
        self.drain_logs().await;
        self.console
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .cloned()
            .collect()
    }

    /// Fails unless the console is free of errors — after proving the log is read at all.
    async fn assert_console_clean(&mut self) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:#?}");
        let probe = format!("console-probe-{}", std::process::id());
        self.js("console.error(arguments[0]);", vec![json!(probe)])
            .await;
        let errors = self.console_errors().await;
        assert!(
            errors
                .iter()
                .any(|e| e["message"].as_str().unwrap_or_default().contains(&probe)),
            "the console log does not show a console.error: {errors:#?}"
        );
        self.console.clear();
    }

    /// Every request the page made went to `base` (nothing leaves 127.0.0.1).
    async fn assert_requests_stay_on(&mut self, base: &str) {
        self.drain_logs().await;
        let prefix = format!("{base}/");
        assert!(
            self.requests
                .iter()
                .any(|(_, url)| url.starts_with(&format!("{prefix}app.js?v="))),
            "the performance log does not show the page loading its script: {:#?}",
            self.requests
        );
        let away: Vec<_> = self
            .requests
            .iter()
            .filter(|(_, url)| !url.starts_with(&prefix))
            .collect();
        assert!(away.is_empty(), "requests away from {base}: {away:#?}");
    }

    /// Requests the page made so far whose URL contains `part`.
    async fn requests_to(&mut self, method: &str, part: &str) -> usize {
        self.drain_logs().await;
        self.requests
            .iter()
            .filter(|(m, url)| m == method && url.contains(part))
            .count()
    }

    /// Saves a screenshot of the page as `target/ui-screenshots/{name}.png`.
    async fn screenshot(&self) {
        self.screenshot_as(self.name).await;
    }

    /// The same, of an intermediate state worth seeing.
    async fn screenshot_as(&self, name: &str) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory")
            .join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        match self.client.screenshot().await {
            Ok(png) => std::fs::write(dir.join(format!("{name}.png")), png).unwrap(),
            Err(e) => eprintln!("no screenshot of {name}: {e}"),
        }
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = kill_group(&mut self.driver);
    }
}

fn kill_group(child: &mut Child) -> std::io::Result<()> {
    // chromedriver leads its process group (process_group(0)): the group is its and the
    // browser's processes.
    Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status()?;
    child.wait().map(|_| ())
}

/// Runs `body` with a browser; whatever happens, the final state is screenshot and the browser
/// closed, then a failure is passed on.
async fn with_browser<F>(name: &'static str, size: (u32, u32), body: F)
where
    F: for<'a> FnOnce(&'a mut Browser) -> futures::future::BoxFuture<'a, ()>,
{
    let _slot = BROWSER_SLOT.lock().await;
    let started = Instant::now();
    let mut browser = Browser::start(name, size.0, size.1).await;
    let outcome = std::panic::AssertUnwindSafe(body(&mut browser))
        .catch_unwind()
        .await;
    browser.screenshot().await;
    browser.close().await;
    eprintln!(
        "{name}: {:.1} s in the browser",
        started.elapsed().as_secs_f64()
    );
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The page's state as the tests read it.
const STATE_JS: &str = r##"
const q = (s) => document.querySelector(s);
const shown = (n) => Boolean(n) && !n.hidden && n.getClientRects().length > 0;
const text = (n) => (shown(n) ? n.textContent : null);
return {
  href: location.href,
  token: sessionStorage.getItem("xomcloud.token"),
  tokenPanel: shown(q("#token-panel")),
  tokenReason: text(q("#token-reason")),
  tokenHint: text(q("#token-hint")),
  form: shown(q("#job-form")),
  links: q("#links").value,
  invalid: q("#links").getAttribute("aria-invalid"),
  issues: [...document.querySelectorAll("#links-issues li")].map((li) => ({
    line: Number(li.dataset.line), text: li.textContent })),
  marks: [...document.querySelectorAll("#links-backdrop mark")].map((m) => m.textContent),
  formError: text(q("#form-error")),
  notice: text(q("#notice")),
  job: shown(q("#job")),
  jobId: q("#job").dataset.jobId || null,
  status: shown(q("#job")) ? q("#job").dataset.status || null : null,
  badge: q("#job-status").textContent,
  counts: q("#job-counts").textContent,
  progress: [q("#job-progress").value, q("#job-progress").max],
  jobError: text(q("#job-error")),
  zip: shown(q("#job-zip")) ? q("#job-zip").href : null,
  cancel: shown(q("#job-cancel")),
  rows: [...document.querySelectorAll("#job-tracks li")].map((li) => ({
    id: li.dataset.id,
    state: li.dataset.state,
    stateText: li.querySelector(".state").textContent,
    name: li.querySelector(".name").textContent,
    artist: li.querySelector(".artist").textContent,
    reason: text(li.querySelector(".reason")),
  })),
  recent: [...document.querySelectorAll("#recent-list li")].map((li) => ({
    id: li.dataset.id, text: li.textContent })),
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  width: window.innerWidth,
};
"##;

// ---- Helpers ----

fn stub_envs(delay: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SCDL_STUB_DELAY", delay.to_owned()),
        ("SCDL_STUB_SIZE", "20000".to_owned()),
        ("DOWNLOAD_CONCURRENCY", "1".to_owned()),
        ("TRACK_TIMEOUT_SECONDS", "60".to_owned()),
        ("TRACK_RETRY_PAUSE_SECONDS", "0".to_owned()),
    ]
}

fn start_server(dir: &Path, secret: Option<&str>, envs: &[(&'static str, String)]) -> Server {
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    serve(dir, secret, &envs)
}

fn page_token(secret: &str) -> String {
    xomcloud_authorizer::jwt::mint("web", secret.as_bytes(), 600).unwrap()
}

fn rows(state: &Value) -> Vec<Value> {
    state["rows"].as_array().cloned().unwrap_or_default()
}

fn row_states(state: &Value) -> Vec<String> {
    rows(state)
        .iter()
        .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn api_status(server: &Server, secret: &str, id: &str) -> Value {
    let res = reqwest::Client::new()
        .get(format!("{}/jobs/{id}", server.base))
        .bearer_auth(page_token(secret))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["data"].clone()
}

// ---- The tests ----

/// The README's flow: serve prints a link, the link signs the page in; three pasted links, one
/// not SoundCloud's (flagged before anything is sent), fixed, submitted; the rows progress to
/// done and failed with the stub's reason; the zip holds exactly the good tracks.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_runs_pasted_links_as_a_job_and_links_the_zip() {
    let dir = tempfile::tempdir().unwrap();
    // No API_SECRET_KEY: serve makes a secret and prints the page's link with a token.
    let server = start_server(dir.path(), None, &stub_envs("1.5"));
    let open = server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("open in a browser: "))
        .expect("the open-this line")
        .to_owned();
    let at = server
        .banner
        .iter()
        .position(|l| l.starts_with("open in a browser: "))
        .unwrap();
    assert!(
        server.banner[at - 1].starts_with("xomcloud listening on "),
        "the link comes right after the listening line: {:#?}",
        server.banner
    );
    let (page, token) = open.split_once("#token=").expect("a token in the fragment");
    let token = token.to_owned();
    assert_eq!(page, format!("{}/", server.base));
    // The link's token is the printed one, and never the secret.
    assert!(server
        .banner
        .iter()
        .any(|l| l == &format!("token (12 h): {token}")));
    let base = server.base.clone();

    with_browser("pasted_links_to_zip", (1100, 1400), |b| {
        async move {
            b.goto(&open).await;
            let state = b.until("the form", |s| s["form"] == true).await;
            assert_eq!(state["href"], format!("{base}/"), "the fragment stays in the bar");
            assert_eq!(state["token"], *token, "the token is in sessionStorage");
            assert_eq!(state["tokenPanel"], false);

            // Three links, the second not SoundCloud's: flagged in place, nothing sent.
            let bad = "https://example.com/stub/ok-2";
            b.type_into(
                "#links",
                &format!("https://soundcloud.com/stub/bench-1\n{bad}\nhttps://soundcloud.com/stub/notfound-3"),
            )
            .await;
            let state = b.until("the bad line flagged", |s| s["issues"].as_array().is_some_and(|i| i.len() == 1)).await;
            assert_eq!(state["issues"][0]["line"], 2);
            let issue = state["issues"][0]["text"].as_str().unwrap();
            assert!(issue.contains(bad), "{issue}");
            assert!(
                issue.contains("the host must be soundcloud.com or one of its subdomains www, m, on, api"),
                "the server's own reason: {issue}"
            );
            assert_eq!(state["marks"], json!([bad]), "the bad link is marked in place");
            assert_eq!(state["invalid"], "true");
            b.click("#submit").await;
            let state = b.until("the submit refused", |s| s["formError"].is_string()).await;
            assert!(state["formError"].as_str().unwrap().contains("nothing was sent"));
            assert_eq!(b.requests_to("POST", "/jobs").await, 0, "a job was created");
            assert_eq!(state["job"], false);

            // Fixed and submitted: the job's rows progress to done and failed.
            b.clear("#links").await;
            b.type_into(
                "#links",
                "https://soundcloud.com/stub/bench-1\nhttps://soundcloud.com/stub/bench-2 https://soundcloud.com/stub/notfound-3\n",
            )
            .await;
            let state = b.until("the fix accepted", |s| s["issues"] == json!([])).await;
            assert_eq!(state["marks"], json!([]));
            assert_eq!(state["invalid"], "false");
            b.click("#submit").await;
            b.until("the job shown", |s| s["jobId"].is_string()).await;
            assert_eq!(b.requests_to("POST", "/jobs").await, 1, "one job created");
            let mut seen: Vec<Vec<String>> = Vec::new();
            let mut running_cancel = false;
            let done = b
                .until("the job settled", |s| {
                    let states = row_states(s);
                    if !states.is_empty() && seen.last() != Some(&states) {
                        seen.push(states);
                    }
                    running_cancel |= s["status"] == "running" && s["cancel"] == true;
                    s["status"] == "done"
                })
                .await;
            assert!(running_cancel, "no Cancel button while running");
            assert_eq!(done["links"], "", "the text area is emptied once the job exists");
            let first: Vec<&str> = seen.iter().map(|s| s[0].as_str()).collect();
            assert!(
                first.contains(&"downloading") && first.last() == Some(&"done"),
                "row 1 went {first:?}"
            );
            assert!(
                seen.iter().any(|s| s[1] == "queued"),
                "row 2 was never seen queued: {seen:?}"
            );
            let rows = rows(&done);
            assert_eq!(row_states(&done), ["done", "done", "failed"]);
            // The server resolved the links (the yt-dlp stub's titles); a link it could not
            // resolve keeps the placeholder, so its row shows the link.
            assert_eq!(rows[0]["name"], "Title of bench-1");
            assert_eq!(rows[1]["name"], "Title of bench-2");
            assert_eq!(rows[2]["name"], "https://soundcloud.com/stub/notfound-3");
            assert_eq!(rows[2]["reason"], "Track not found (deleted, private or a wrong URL)");
            assert_eq!(rows[0]["reason"], Value::Null);
            assert_eq!(done["counts"], "3 of 3 finished: 2 done, 1 failed");
            assert_eq!(done["progress"][0].as_f64(), Some(3.0));
            assert_eq!(done["progress"][1].as_f64(), Some(3.0));
            assert_eq!(done["cancel"], false);
            assert_eq!(done["recent"].as_array().unwrap().len(), 1);
            assert!(done["recent"][0]["text"].as_str().unwrap().contains("done"));

            // The button's link is a zip of exactly the two good tracks.
            let zip = done["zip"].as_str().expect("a Download zip button");
            assert!(zip.starts_with(&format!("{base}/files/")), "{zip}");
            let res = reqwest::get(zip).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-type"], "application/zip");
            let entries = support::zips::entries(&res.bytes().await.unwrap());
            let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                ["Stub Artist - Title of bench-1.mp3", "Stub Artist - Title of bench-2.mp3"]
            );
            assert!(entries.iter().all(|(_, data)| data.len() == 20000));

            // Polling stopped with the job; nothing but this server was asked; no errors.
            let id = done["jobId"].as_str().unwrap().to_owned();
            let polls = b.requests_to("GET", &id).await;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert_eq!(b.requests_to("GET", &id).await, polls, "still polling a done job");
            b.assert_requests_stay_on(&base).await;
            b.assert_console_clean().await;
        }
        .boxed()
    })
    .await;
    drop(server);
}

/// A reload mid-job loses nothing: the job is shown again (its rows with their links) and
/// finishes. At a phone's width the page needs no sideways scrolling.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_mid_job_shows_the_job_until_it_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), Some(SECRET), &stub_envs("2"));
    let base = server.base.clone();
    with_browser("reload_mid_job_phone", (390, 844), |b| {
        async move {
            b.goto(&format!("{base}/#token={}", page_token(SECRET)))
                .await;
            b.until("the form", |s| s["form"] == true).await;
            b.type_into(
                "#links",
                "https://soundcloud.com/stub/bench-1\nhttps://soundcloud.com/stub/sets/bench-2",
            )
            .await;
            b.click("#submit").await;
            let running = b
                .until("row 1 downloading", |s| {
                    row_states(s).first().map(String::as_str) == Some("downloading")
                })
                .await;
            let id = running["jobId"].as_str().unwrap().to_owned();

            b.client.refresh().await.unwrap();
            let again = b
                .until("the job shown after the reload", |s| {
                    s["jobId"] == id.as_str() && !rows(s).is_empty()
                })
                .await;
            assert_ne!(
                again["status"], "done",
                "the reload came too late to prove anything"
            );
            assert_eq!(
                again["token"], running["token"],
                "the token survives a reload"
            );
            // The set link became its two tracks (the yt-dlp stub's), named by the server.
            let names: Vec<Value> = rows(&again).iter().map(|r| r["name"].clone()).collect();
            assert_eq!(
                names,
                [
                    "Title of bench-1",
                    "Title of bench-2-1",
                    "Title of bench-2-2"
                ]
            );
            assert_eq!(
                again["recent"][0]["id"], *id,
                "the job is in the recent list"
            );
            let done = b.until("the job done", |s| s["status"] == "done").await;
            assert_eq!(row_states(&done), ["done", "done", "done"]);
            assert!(done["zip"].is_string());
            assert!(
                done["width"].as_f64().unwrap() <= 400.0,
                "not a phone: {}",
                done["width"]
            );
            assert!(
                done["overflow"].as_f64().unwrap() <= 0.0,
                "sideways scrolling at 390 px: {}",
                done["overflow"]
            );
            b.assert_requests_stay_on(&base).await;
            b.assert_console_clean().await;
        }
        .boxed()
    })
    .await;
    drop(server);
}

/// Cancel mid-job: the rows stop (unfinished ones read cancelled), the job is cancelled on the
/// server too, and the page stops polling.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_mid_job_stops_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), Some(SECRET), &stub_envs("30"));
    let base = server.base.clone();
    let server = Arc::new(server);
    let srv = server.clone();
    with_browser("cancel_mid_job", (1100, 1000), |b| {
        async move {
            b.goto(&format!("{base}/#token={}", page_token(SECRET))).await;
            b.until("the form", |s| s["form"] == true).await;
            b.type_into(
                "#links",
                "https://soundcloud.com/stub/bench-1 https://soundcloud.com/stub/bench-2 https://soundcloud.com/stub/bench-3",
            )
            .await;
            b.click("#submit").await;
            let running = b
                .until("row 1 downloading, Cancel shown", |s| {
                    row_states(s).first().map(String::as_str) == Some("downloading")
                        && s["cancel"] == true
                })
                .await;
            let id = running["jobId"].as_str().unwrap().to_owned();
            b.click("#job-cancel").await;
            let cancelled = b.until("the job cancelled", |s| s["status"] == "cancelled").await;
            assert_eq!(cancelled["badge"], "cancelled");
            assert_eq!(row_states(&cancelled), ["cancelled", "cancelled", "cancelled"]);
            assert_eq!(cancelled["cancel"], false);
            assert_eq!(cancelled["zip"], Value::Null);
            assert_eq!(b.requests_to("DELETE", &id).await, 1);
            assert_eq!(api_status(&srv, SECRET, &id).await["status"], "cancelled");

            // The rows stay as they are and the page asks no more.
            let polls = b.requests_to("GET", &id).await;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let later = b.state().await;
            assert_eq!(later["rows"], cancelled["rows"]);
            assert_eq!(b.requests_to("GET", &id).await, polls, "still polling");
            b.assert_requests_stay_on(&base).await;
            b.assert_console_clean().await;
        }
        .boxed()
    })
    .await;
}

/// Without a token the page asks for one (with the hint); a token that is not one, an expired
/// one and one the server refuses (401) all lead back to the question; a good one works.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_asks_for_a_token_when_it_has_none_or_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), Some(SECRET), &stub_envs("0"));
    let base = server.base.clone();
    with_browser("bad_token", (1100, 1000), |b| {
        async move {
            b.goto(&format!("{base}/")).await;
            let state = b
                .until("the token question", |s| s["tokenPanel"] == true)
                .await;
            assert_eq!(state["form"], false);
            assert!(state["tokenHint"]
                .as_str()
                .unwrap()
                .contains("xomcloud token --sub you"));

            b.type_into("#token-input", "not-a-token\n").await;
            let state = b
                .until("not a token", |s| s["tokenReason"].is_string())
                .await;
            assert!(state["tokenReason"]
                .as_str()
                .unwrap()
                .contains("not a token"));

            let expired = xomcloud_authorizer::jwt::mint("web", SECRET.as_bytes(), 0).unwrap();
            b.clear("#token-input").await;
            b.type_into("#token-input", &format!("{expired}\n")).await;
            b.until("expired", |s| {
                s["tokenReason"]
                    .as_str()
                    .is_some_and(|r| r.contains("expired"))
            })
            .await;

            // Signed with another secret: only the server can tell (401).
            let forged = page_token("another-secret");
            b.clear("#token-input").await;
            b.type_into("#token-input", &format!("{forged}\n")).await;
            b.until("the form", |s| s["form"] == true).await;
            b.type_into("#links", "https://soundcloud.com/stub/ok-1")
                .await;
            b.click("#submit").await;
            let state = b
                .until("asked again after a 401", |s| s["tokenPanel"] == true)
                .await;
            assert!(
                state["tokenReason"]
                    .as_str()
                    .unwrap()
                    .contains("refused the token"),
                "{state:#}"
            );
            assert_eq!(
                state["token"],
                Value::Null,
                "the refused token is forgotten"
            );
            b.screenshot_as("bad_token_asked").await;
            assert_eq!(state["form"], false);

            // The good one, pasted as the whole link serve prints; the links are still there.
            let good = page_token(SECRET);
            b.type_into("#token-input", &format!("{base}/#token={good}\n"))
                .await;
            let state = b.until("the form again", |s| s["form"] == true).await;
            assert_eq!(state["token"], good.as_str());
            assert_eq!(state["links"], "https://soundcloud.com/stub/ok-1");
            b.click("#submit").await;
            let done = b.until("the job done", |s| s["status"] == "done").await;
            assert_eq!(row_states(&done), ["done"]);

            // The only console errors are the refused requests themselves.
            let errors = b.console_errors().await;
            let other: Vec<_> = errors
                .iter()
                .filter(|e| {
                    let m = e["message"].as_str().unwrap_or_default();
                    !(e["source"] == "network" && m.contains("/jobs") && m.contains("401"))
                })
                .collect();
            assert!(!errors.is_empty(), "the 401 is not in the console log");
            assert!(other.is_empty(), "console errors: {other:#?}");
            b.console.clear();
            b.assert_requests_stay_on(&base).await;
        }
        .boxed()
    })
    .await;
    drop(server);
}

/// The page's link rule is the server's: every case of `tests/fixtures/url-cases.json` (which
/// `tests/url_cases.rs` runs against `check_url`) gets the same verdict and reason in the
/// browser. The page's files come with their types, a strict CSP the browser enforces,
/// `nosniff` and cache headers.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_checks_links_like_the_server_and_is_served_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), Some(SECRET), &stub_envs("0"));
    let base = server.base.clone();

    // Headers, without the browser.
    let http = reqwest::Client::new();
    let mut versions = Vec::new();
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers().clone();
        assert_eq!(h["content-type"], kind, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(
            !csp.contains("unsafe") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(
            h.contains_key("cache-control") && h.contains_key("etag"),
            "{path}"
        );
        let etag = h["etag"].clone();
        let again = http
            .get(format!("{base}{path}"))
            .header("If-None-Match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path} revalidated");
        if path == "/" {
            assert_eq!(h["cache-control"], "no-cache");
            let html = res.text().await.unwrap();
            for asset in ["/app.js?v=", "/style.css?v="] {
                let at = html.find(asset).expect(asset);
                let end = at + html[at..].find('"').unwrap();
                versions.push(html[at..end].to_owned());
            }
        }
    }
    for versioned in &versions {
        let url = format!("{base}{versioned}");
        let res = http.get(&url).send().await.unwrap();
        assert_eq!(
            res.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{url}"
        );
    }

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/url-cases.json");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    with_browser("url_cases", (1100, 1000), |b| {
        async move {
            b.goto(&format!("{base}/#token={}", page_token(SECRET)))
                .await;
            b.until("the form", |s| s["form"] == true).await;
            let verdicts = b
                .js(
                    "return arguments[0].map((c) => window.xomcloud.checkUrl(c.url));",
                    vec![cases.clone()],
                )
                .await;
            let mut wrong = Vec::new();
            for (case, verdict) in cases
                .as_array()
                .unwrap()
                .iter()
                .zip(verdicts.as_array().unwrap())
            {
                let expected = if case["ok"] == true {
                    Value::Null
                } else {
                    case["why"].clone()
                };
                if *verdict != expected {
                    wrong.push(format!(
                        "{}: page {verdict}, server {expected}",
                        case["url"]
                    ));
                }
            }
            assert_eq!(
                verdicts.as_array().unwrap().len(),
                cases.as_array().unwrap().len()
            );
            assert!(
                wrong.is_empty(),
                "the page and check_url disagree:\n{}",
                wrong.join("\n")
            );

            // The text area flags exactly the refused lines among what a person would paste.
            let pasteable: Vec<&Value> = cases
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| {
                    let url = c["url"].as_str().unwrap();
                    !url.is_empty() && !url.chars().any(char::is_whitespace) && url.len() < 200
                })
                .collect();
            let text: Vec<&str> = pasteable
                .iter()
                .map(|c| c["url"].as_str().unwrap())
                .collect();
            b.js(
                "const t = document.querySelector('#links'); t.value = arguments[0]; \
                 t.dispatchEvent(new Event('input'));",
                vec![json!(text.join("\n"))],
            )
            .await;
            let state = b.state().await;
            let flagged: Vec<u64> = state["issues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["line"].as_u64().unwrap())
                .collect();
            let refused: Vec<u64> = pasteable
                .iter()
                .enumerate()
                .filter(|(_, c)| c["ok"] == false)
                .map(|(i, _)| i as u64 + 1)
                .collect();
            assert_eq!(flagged, refused);
            b.assert_console_clean().await;

            // The CSP holds in the browser: an inline script does not run.
            let ran = b
                .js(
                    "try { const s = document.createElement('script'); \
                     s.textContent = 'window.inlineRan = true'; document.head.append(s); } \
                     catch (e) {} return window.inlineRan === true;",
                    vec![],
                )
                .await;
            assert_eq!(ran, false, "an inline script ran");
            let refused = b.console_errors().await;
            assert!(
                refused.iter().any(|e| {
                    let m = e["message"].as_str().unwrap_or_default();
                    m.contains("Content Security Policy") || m.contains("TrustedScript")
                }),
                "the browser did not report the policy refusing the script: {refused:#?}"
            );
            b.console.clear();
            b.assert_requests_stay_on(&base).await;

            // The final state (the screenshot): a bad line marked in place.
            b.js(
                "const t = document.querySelector('#links'); t.value = arguments[0]; \
                 t.dispatchEvent(new Event('input'));",
                vec![json!("https://soundcloud.com/forss/flickermood\nhttps://soundcloud.com.evil.example/forss/flickermood\nhttps://on.soundcloud.com/AbCdEf123")],
            )
            .await;
            let state = b.state().await;
            assert_eq!(state["marks"], json!(["https://soundcloud.com.evil.example/forss/flickermood"]));
        }
        .boxed()
    })
    .await;
    drop(server);
}

/// Makes the page's next `count` calls of `method` to a URL starting with `path` answer 429 with
/// `Retry-After: seconds`, as the API's rate limits do (the calls never reach the server).
const FAKE_429_JS: &str = r##"
const [method, path, seconds, count] = arguments;
const real = window.fetch.bind(window);
let left = count;
window.fetch = (input, init = {}) => {
  if (left > 0 && (init.method || "GET") === method && String(input).startsWith(path)) {
    left -= 1;
    const body = JSON.stringify({ error: { code: "RATE_LIMITED", message: "Slow down" } });
    return Promise.resolve(new Response(body, { status: 429, headers: {
      "Content-Type": "application/json", "Retry-After": String(seconds) } }));
  }
  return real(input, init);
};
"##;

/// A 429 says when to retry, on submit and while polling, and the page waits that long.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_request_shows_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), Some(SECRET), &stub_envs("2"));
    let base = server.base.clone();
    with_browser("rate_limited", (1100, 1000), |b| {
        async move {
            b.goto(&format!("{base}/#token={}", page_token(SECRET)))
                .await;
            b.until("the form", |s| s["form"] == true).await;
            b.type_into("#links", "https://soundcloud.com/stub/bench-1")
                .await;
            b.js(
                FAKE_429_JS,
                vec![json!("POST"), json!("/jobs"), json!(2), json!(1)],
            )
            .await;
            b.click("#submit").await;
            let state = b
                .until("the 429 shown", |s| s["formError"].is_string())
                .await;
            let shown = state["formError"].as_str().unwrap();
            assert!(
                shown.contains("Too many requests: try again in 2 s")
                    && shown.contains("Slow down"),
                "{shown}"
            );
            // Submitting again at once sends nothing; after the wait it works.
            b.click("#submit").await;
            assert_eq!(b.state().await["job"], false);
            b.until("the 429 gone after 2 s", |s| s["formError"].is_null())
                .await;
            b.click("#submit").await;
            b.until("the job shown", |s| {
                s["status"] == "running" || s["status"] == "queued"
            })
            .await;
            assert_eq!(b.requests_to("POST", "/jobs").await, 1);

            // A 429 while polling: the notice says when, polling resumes after it.
            b.js(
                FAKE_429_JS,
                vec![json!("GET"), json!("/jobs/"), json!(2), json!(1)],
            )
            .await;
            let state = b
                .until("the polling 429 shown", |s| {
                    s["notice"]
                        .as_str()
                        .is_some_and(|n| n.contains("try again in 2 s"))
                })
                .await;
            assert_ne!(state["status"], "done");
            let done = b.until("the job done", |s| s["status"] == "done").await;
            assert_eq!(done["notice"], Value::Null, "the notice outlives the wait");
            b.assert_requests_stay_on(&base).await;
            b.assert_console_clean().await;
        }
        .boxed()
    })
    .await;
    drop(server);
}

/// The server going away mid-job shows "server unreachable"; the page keeps polling and picks
/// the job up again when the server is back (on the same address).
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_shown_and_polling_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let envs = stub_envs("2");
    let first = serve_at(dir.path(), "127.0.0.1:0", &envs);
    let base = first.base.clone();
    let addr = base.trim_start_matches("http://").to_owned();
    let first = Arc::new(Mutex::new(Some(first)));
    let holder = first.clone();
    let path = dir.path().to_owned();
    with_browser("server_unreachable", (1100, 1000), |b| {
        async move {
            b.goto(&format!("{base}/#token={}", page_token(SECRET)))
                .await;
            b.until("the form", |s| s["form"] == true).await;
            b.type_into(
                "#links",
                "https://soundcloud.com/stub/bench-1\nhttps://soundcloud.com/stub/bench-2",
            )
            .await;
            b.click("#submit").await;
            b.until("the job running", |s| s["status"] == "running")
                .await;
            // The server dies (a crash): the page says so and keeps trying.
            drop(holder.lock().unwrap().take());
            let state = b
                .until("server unreachable shown", |s| {
                    s["notice"]
                        .as_str()
                        .is_some_and(|n| n.contains("Server unreachable"))
                })
                .await;
            assert_ne!(state["status"], "done");
            b.screenshot_as("server_unreachable_notice").await;
            let back = serve_at(&path, &addr, &envs);
            let done = b
                .until("the job done after the restart", |s| s["status"] == "done")
                .await;
            assert_eq!(
                done["notice"],
                Value::Null,
                "the notice stays after recovery"
            );
            assert_eq!(row_states(&done), ["done", "done"]);
            drop(back);
            // Refused connections are logged by the browser itself; nothing else may be.
            let errors = b.console_errors().await;
            let other: Vec<_> = errors.iter().filter(|e| e["source"] != "network").collect();
            assert!(other.is_empty(), "console errors: {other:#?}");
            b.console.clear();
            b.assert_requests_stay_on(&base).await;
        }
        .boxed()
    })
    .await;
    drop(first);
}

/// `xomcloud serve` on `addr` with `SECRET`: the shared helper binds a fresh port, and this test
/// needs the same address twice.
struct Serving {
    child: Option<Child>,
    base: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn serve_at(cwd: &Path, addr: &str, envs: &[(&'static str, String)]) -> Serving {
    let start = Instant::now();
    loop {
        let mut child = support::serve::xomcloud(cwd)
            .args(["serve", "--addr", addr])
            .env("API_SECRET_KEY", SECRET)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start xomcloud serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(url) = line.trim_end().strip_prefix("xomcloud listening on ") {
                let base = url.to_owned();
                // Keep reading (and dropping) its output so it never blocks on a full pipe.
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while stdout.read_line(&mut sink).unwrap_or(0) > 0 {
                        sink.clear();
                    }
                });
                return Serving {
                    child: Some(child),
                    base,
                };
            }
            line.clear();
        }
        // It exited: the old address may not be free yet.
        let _ = child.wait();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "xomcloud serve could not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
