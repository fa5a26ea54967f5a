//! A real headless Chromium driven over WebDriver: Debian's `chromium` and `chromium-driver`
//! (`scripts/test.sh` installs them). `chromedriver --port=0` picks its port and prints it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::client::{http1, send};

/// The browser binary (Debian's).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The driver binary (Debian's `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process with one headless Chromium session; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. `--no-sandbox`: the tests run as
    /// root, where Chromium refuses its sandbox; `--disable-dev-shm-usage`: containers give
    /// /dev/shm 64 MB, too little for the renderer.
    pub async fn start() -> Self {
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let stdout = driver.stdout.take().expect("chromedriver stdout");
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
                line.split("started successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
            });
            // Keep draining so the driver never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port
        })
        .await
        .expect("reader")
        .expect("chromedriver printed its port");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
        };
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,900"],
            },
        }}});
        let answer = browser.call(Method::POST, "/session", capabilities).await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        browser
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(match body {
                Value::Null => Bytes::new(),
                body => Bytes::from(body.to_string()),
            }))
            .expect("request");
        let answer = send(&http1(), req).await.expect("chromedriver answers");
        let json: Value = serde_json::from_slice(&answer.body).expect("WebDriver JSON");
        assert!(
            answer.status.is_success(),
            "WebDriver {path}: {} {json}",
            answer.status
        );
        json["value"].clone()
    }

    /// Navigates to `url`.
    pub async fn goto(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.call(Method::POST, &path, json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call(Method::POST, &path, json!({"script": script, "args": args}))
            .await
    }

    /// Saves a PNG screenshot of the page to `file`.
    pub async fn screenshot(&self, file: &Path) {
        let path = format!("/session/{}/screenshot", self.session);
        let png = self.call(Method::GET, &path, Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("base64 PNG");
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).expect("artifact directory");
        }
        std::fs::write(file, bytes).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium (killing the driver would leave it running):
        // a blocking DELETE, as drop cannot await.
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let timeout = Some(std::time::Duration::from_secs(10));
            let _ = stream.set_read_timeout(timeout);
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
