//! A minimal W3C WebDriver client over the hyper already in the tree, driving Debian's
//! headless chromium through `chromedriver` (both installed by
//! `deploy/scripts/ensure-tools.sh --with-interop-clients`). WebDriver is JSON over HTTP; the
//! dozen commands the console test needs are simpler to speak directly than to add a Python
//! dependency tree (selenium and its transitive packages) or a Rust WebDriver crate.

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian puts chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian puts chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver, killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

/// One browser session.
pub struct Browser {
    port: u16,
    session: String,
}

/// A WebDriver call that failed.
#[derive(Debug)]
pub struct WebDriverError(pub String);

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

async fn call(
    port: u16,
    method: hyper::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, WebDriverError> {
    let err = |e: &dyn std::fmt::Display| WebDriverError(format!("{method} {path}: {e}"));
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| err(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| err(&e))?;
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method.clone())
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| err(&e))?;
    let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(request))
        .await
        .map_err(|e| err(&e))?
        .map_err(|e| err(&e))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| err(&e))?.to_bytes();
    let value: Value = serde_json::from_slice(&body).map_err(|e| err(&e))?;
    if !status.is_success() {
        return Err(WebDriverError(format!("{method} {path}: {status}: {}", value["value"]["message"])));
    }
    Ok(value["value"].clone())
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is ready.
    pub async fn start() -> Self {
        for (what, path) in [("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)] {
            assert!(
                Path::new(path).is_file(),
                "{path} not found: {what} is installed by `bash deploy/scripts/ensure-tools.sh --with-interop-clients` (the test command, `bash deploy/test.sh`, runs it)"
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let profile = tempfile::tempdir().expect("chromium profile dir");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self { child, port, _profile: profile };
        crate::wait::until("chromedriver ready", Duration::from_secs(30), || async move {
            let v = call(port, hyper::Method::GET, "/status", None).await.ok()?;
            v["ready"].as_bool().filter(|r| *r).map(|_| ())
        })
        .await;
        driver
    }

    /// A new headless browser session with a window of `width`×`height`.
    pub async fn browser(&self, width: u32, height: u32) -> Browser {
        static SESSIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let profile = self._profile.path().join(format!("p{n}"));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = call(self.port, hyper::Method::POST, "/session", Some(caps))
            .await
            .unwrap_or_else(|e| panic!("new chromium session: {e}"));
        let session = v["sessionId"].as_str().expect("sessionId").to_string();
        Browser { port: self.port, session }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    async fn cmd(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        call(self.port, method, &format!("/session/{}{path}", self.session), body).await
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.cmd(hyper::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.cmd(hyper::Method::GET, "/url", None)
            .await
            .expect("current url")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's HTML as the browser holds it.
    pub async fn source(&self) -> String {
        self.cmd(hyper::Method::GET, "/source", None)
            .await
            .expect("page source")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching a CSS selector, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(hyper::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
            .await
            .ok()?;
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// Every element matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .cmd(hyper::Method::POST, "/elements", Some(json!({"using": "css selector", "value": css})))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        v.as_array()
            .map(|a| a.iter().filter_map(|e| e[ELEMENT].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// The element matching a CSS selector; panics with the page when there is none.
    pub async fn expect(&self, css: &str) -> String {
        let found = self
            .cmd(hyper::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
            .await;
        match found.as_ref().ok().and_then(|v| v[ELEMENT].as_str()) {
            Some(e) => e.to_string(),
            None => panic!("no element {css} ({found:?}) on {}:\n{}", self.url().await, self.source().await),
        }
    }

    /// Clicks an element (following a link or submitting its form waits for the next page).
    pub async fn click(&self, element: &str) {
        self.cmd(hyper::Method::POST, &format!("/element/{element}/click"), Some(json!({})))
            .await
            .unwrap_or_else(|e| panic!("click: {e}"));
    }

    /// Types into an element.
    pub async fn type_text(&self, element: &str, text: &str) {
        self.cmd(hyper::Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text })))
            .await
            .unwrap_or_else(|e| panic!("type: {e}"));
    }

    /// An element's rendered text.
    pub async fn text(&self, element: &str) -> String {
        self.cmd(hyper::Method::GET, &format!("/element/{element}/text"), None)
            .await
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    /// The value of the cookie `name` (HttpOnly ones included: WebDriver sees every cookie).
    pub async fn cookie(&self, name: &str) -> Option<Value> {
        self.cmd(hyper::Method::GET, &format!("/cookie/{name}"), None).await.ok()
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd(hyper::Method::GET, "/screenshot", None).await.expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Resizes the window (e.g. to fit a long page before a screenshot).
    pub async fn resize(&self, width: u32, height: u32) {
        let _ = self
            .cmd(hyper::Method::POST, "/window/rect", Some(json!({"width": width, "height": height})))
            .await;
    }

    /// Ends the session.
    pub async fn quit(self) {
        let _ = self.cmd(hyper::Method::DELETE, "", None).await;
    }
}

/// `docs/console/<name>.png` in the repository.
pub fn docs_screenshot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("console")
        .join(format!("{name}.png"))
}
