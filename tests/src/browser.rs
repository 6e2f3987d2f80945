//! Headless Chromium (Debian package `chromium`, installed by `scripts/test`) driven over the
//! DevTools protocol through a pipe (`--remote-debugging-pipe`: JSON messages ending in a NUL
//! byte on file descriptors 3 and 4), so no WebSocket client is needed.
//!
//! A [`Browser`] opens pages, evaluates JavaScript in them, takes screenshots and records every
//! problem the DevTools console would show: uncaught exceptions (`Runtime.exceptionThrown`),
//! `console.error`/`console.warn`/`console.assert` calls (`Runtime.consoleAPICalled`), and
//! browser-side errors and warnings such as failed loads or Content-Security-Policy violations
//! (`Log.entryAdded`). [`Browser::console_problems`] lists them.
//!
//! A missing Chromium is a test failure with a message that says to run `scripts/test`, never a
//! skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Environment variable naming the Chromium binary (default: `chromium` on `PATH`).
pub const CHROMIUM_ENV: &str = "SPINDLE_CHROMIUM";

/// Longest wait for one DevTools answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary: `$SPINDLE_CHROMIUM`, else `chromium` (Debian), `chromium-browser` or
/// `google-chrome` on `PATH`.
///
/// # Panics
/// When none is found — the test fails and says to run `scripts/test`.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os(CHROMIUM_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{CHROMIUM_ENV}={} does not exist", p.display());
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(found) = std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|c| c.is_file())
        {
            return found;
        }
    }
    panic!(
        "headless Chromium not found on PATH (nor {CHROMIUM_ENV}); run scripts/test, which installs the \
         Debian package `chromium`"
    )
}

/// Where test artifacts (screenshots) go: `$CARGO_TARGET_DIR/artifacts`, else
/// `<workspace>/target/artifacts`; created.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A headless Chromium with one page open, and what its console reported.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
    problems: Vec<String>,
    loaded: bool,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium headless with a `width`×`height` window and a fresh profile, and attaches
    /// to its page with the console recorded.
    ///
    /// # Panics
    /// When Chromium is missing or does not answer.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let chromium = chromium();
        let profile = tempfile::tempdir().expect("temporary profile directory");
        let log = profile.path().join("chromium.log");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-extensions".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--hide-scrollbars".into(),
            "--remote-debugging-pipe".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
            "about:blank".into(),
        ];
        // fd 3: what Chromium reads (our stdin pipe); fd 4: what it writes (our stdout pipe).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 </dev/null >/dev/null")
            .arg(&chromium)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_or_else(|_| Stdio::null(), Stdio::from))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let to = child.stdin.take().expect("stdin is piped");
        let from = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut b = Browser {
            child,
            to,
            from,
            next_id: 0,
            session: String::new(),
            problems: Vec::new(),
            loaded: false,
            profile,
        };
        let targets = b.call_browser("Target.getTargets", json!({})).await;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets}"))
            .to_string();
        let attached = b
            .call_browser("Target.attachToTarget", json!({"targetId": page, "flatten": true}))
            .await;
        b.session = attached["sessionId"].as_str().expect("a session id").to_string();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.call(domain, json!({})).await;
        }
        b
    }

    /// Chromium's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }

    async fn send(&mut self, method: &str, params: Value, session: bool) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if session {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON");
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .await
            .unwrap_or_else(|e| panic!("writing to Chromium: {e}\n{}", self.log()));
        self.to.flush().await.expect("flush");
        self.next_id
    }

    /// Reads one message (within `timeout`); records console problems from events.
    async fn read(&mut self, timeout: Duration) -> Option<Value> {
        let mut buf = Vec::new();
        let n = match tokio::time::timeout(timeout, self.from.read_until(0, &mut buf)).await {
            Err(_) => return None,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("reading from Chromium: {e}\n{}", self.log()),
        };
        assert!(n > 0, "Chromium closed its DevTools pipe\n{}", self.log());
        if buf.last() == Some(&0) {
            buf.pop();
        }
        let msg: Value = serde_json::from_slice(&buf).unwrap_or_else(|e| panic!("DevTools message: {e}"));
        self.note(&msg);
        Some(msg)
    }

    fn note(&mut self, msg: &Value) {
        let p = &msg["params"];
        match msg["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("");
                self.problems.push(format!(
                    "uncaught exception at {}:{}: {text}",
                    d["url"].as_str().unwrap_or(""),
                    d["lineNumber"]
                ));
            }
            Some("Runtime.consoleAPICalled") if matches!(p["type"].as_str(), Some("error" | "warning" | "assert")) => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map_or_else(|| a["value"].to_string(), str::to_string)
                    })
                    .collect();
                self.problems.push(format!(
                    "console.{}: {}",
                    p["type"].as_str().unwrap_or(""),
                    args.join(" ")
                ));
            }
            Some("Log.entryAdded") if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) => {
                let e = &p["entry"];
                self.problems.push(format!(
                    "{} {}: {} ({})",
                    e["source"].as_str().unwrap_or(""),
                    e["level"].as_str().unwrap_or(""),
                    e["text"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or("")
                ));
            }
            Some("Page.loadEventFired") => self.loaded = true,
            _ => {}
        }
    }

    async fn answer(&mut self, id: u64, method: &str) -> Value {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.read(left).await else {
                panic!("no answer to {method} within {CALL_TIMEOUT:?}\n{}", self.log());
            };
            if msg["id"].as_u64() == Some(id) {
                if let Some(err) = msg.get("error") {
                    panic!("{method} failed: {err}");
                }
                return msg["result"].clone();
            }
        }
    }

    async fn call_browser(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, false).await;
        self.answer(id, method).await
    }

    /// Calls DevTools `method` on the page and returns its result.
    ///
    /// # Panics
    /// When it fails or does not answer within [`CALL_TIMEOUT`].
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, true).await;
        self.answer(id, method).await
    }

    /// Sends `headers` with every request of the page from now on (e.g. `Authorization`).
    pub async fn set_headers(&mut self, headers: Value) {
        self.call("Network.enable", json!({})).await;
        self.call("Network.setExtraHTTPHeaders", json!({"headers": headers}))
            .await;
    }

    /// Opens `url` and waits for its load event.
    ///
    /// # Panics
    /// When navigation fails or the page does not load within [`CALL_TIMEOUT`].
    pub async fn open(&mut self, url: &str) {
        self.loaded = false;
        let nav = self.call("Page.navigate", json!({"url": url})).await;
        assert!(nav.get("errorText").is_none(), "navigating to {url}: {nav}");
        let deadline = Instant::now() + CALL_TIMEOUT;
        while !self.loaded {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                self.read(left).await.is_some(),
                "{url} did not load within {CALL_TIMEOUT:?}"
            );
        }
    }

    /// The value of JavaScript `expression` in the page (promises awaited).
    ///
    /// # Panics
    /// When it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating `{expression}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// The page's document as HTML now (through the DOM domain, so it works with scripts
    /// disabled too).
    pub async fn html(&mut self) -> String {
        let doc = self.call("DOM.getDocument", json!({"depth": 0})).await;
        let node = doc["root"]["nodeId"].clone();
        let html = self.call("DOM.getOuterHTML", json!({"nodeId": node})).await;
        html["outerHTML"].as_str().unwrap_or_default().to_string()
    }

    /// Turns the page's JavaScript off (`true`) or on for the next loads.
    pub async fn scripts_disabled(&mut self, disabled: bool) {
        self.call("Emulation.setScriptExecutionDisabled", json!({"value": disabled}))
            .await;
    }

    /// Evaluates `expression` until it is `true`, or `timeout` passes; whether it became true.
    /// Console events are recorded meanwhile.
    pub async fn wait_for(&mut self, expression: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression).await == json!(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Take in events for a while.
            let pause = Instant::now() + Duration::from_millis(200);
            while let Some(left) = pause.checked_duration_since(Instant::now()) {
                if self.read(left).await.is_none() {
                    break;
                }
            }
        }
    }

    /// Lets the page run for `d`, recording console events.
    pub async fn idle(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if self.read(left).await.is_none() {
                break;
            }
        }
    }

    /// Saves a PNG screenshot of the whole page to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Every console problem so far: uncaught exceptions, `console.error`/`warn`/`assert`, and
    /// browser errors and warnings (failed loads, CSP violations).
    pub fn console_problems(&self) -> &[String] {
        &self.problems
    }

    /// Closes Chromium.
    pub async fn close(mut self) {
        let _ = self.send("Browser.close", json!({}), false).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Standard base64 (with padding) to bytes.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len().max(1)]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGVsbG8hIQ=="), b"hello!!");
        assert_eq!(super::base64_decode("YWJj"), b"abc");
    }
}
