// Shared by several test crates; each uses a subset of the helpers.
#![allow(dead_code)]

//! Test harness: one in-process stockring node per test (own temp data dir, own port) and one
//! request helper, `check`, that asserts the status and the error `code` of an answer.

use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stockring::config::Config;
use stockring::server::RunningServer;
use tempfile::TempDir;

/// The `code` argument of `check` for a success (2xx bodies carry no `code`).
pub const OK: &str = "";
/// No request body.
pub const NONE: Value = Value::Null;
/// A TTL no test outlives.
pub const LONG: u64 = 600_000;

/// A running node and an HTTP client pointed at it.
pub struct Node {
    server: RunningServer,
    dir: TempDir,
    base: String,
    http: reqwest::Client,
}

impl Node {
    /// Starts a node on a fresh temp data dir and waits until `/ready` is 200.
    pub async fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir")).await
    }

    /// Starts a node on an existing data dir (e.g. one returned by `stop`).
    pub async fn start_in(dir: TempDir) -> Self {
        Self::start_with_wall(
            dir,
            std::sync::Arc::new(stockring::actors::clock::SystemWall),
        )
        .await
    }

    /// Starts a node whose wall clock is `wall` (tests step it).
    pub async fn start_with_wall(
        dir: TempDir,
        wall: std::sync::Arc<dyn stockring::actors::clock::Wall>,
    ) -> Self {
        let config = Config {
            http_addr: "127.0.0.1:0".into(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let server = stockring::server::start_with_wall(config, wall)
            .await
            .expect("server starts");
        let base = format!("http://{}", server.http_addr);
        let node = Self {
            server,
            dir,
            base,
            http: reqwest::Client::new(),
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = self.http.get(format!("{}/ready", self.base)).send().await;
            if matches!(ready, Ok(r) if r.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "node not ready within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The node itself, for tests that send what no HTTP client can (order line ids).
    pub fn node(&self) -> &stockring::actors::Node {
        &self.server.node
    }

    /// The node's data dir (for tests that look at or change its database directly).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops the node cleanly; returns its data dir (deleted when dropped).
    pub async fn stop(self) -> TempDir {
        drop(self.http);
        self.server.stop().await.expect("clean stop");
        self.dir
    }

    /// Stops the node and starts a new one on the same data dir.
    pub async fn restart(self) -> Self {
        let dir = self.stop().await;
        Self::start_in(dir).await
    }

    /// Sends `req` ("METHOD /path") with `body` as JSON (`Value::Null`: no body).
    pub async fn send(&self, req: &str, body: Value) -> (u16, Value) {
        let mut rb = self.request(req);
        if !body.is_null() {
            rb = rb.json(&body);
        }
        answer(req, rb).await
    }

    /// Sends `req` with raw bytes and the given content type (or none).
    pub async fn send_raw(
        &self,
        req: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> (u16, Value) {
        let mut rb = self.request(req).body(body.into());
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        answer(req, rb).await
    }

    /// Sends `req` and asserts `status` and `code` (`OK` for a success); returns the body.
    pub async fn check(&self, req: &str, body: Value, status: u16, code: &str) -> Value {
        let (got, reply) = self.send(req, body).await;
        expect(req, got, &reply, status, code);
        reply
    }

    /// Like `check`, with a raw JSON text body.
    pub async fn check_raw(&self, req: &str, text: &str, status: u16, code: &str) -> Value {
        let (got, reply) = self.send_raw(req, Some("application/json"), text).await;
        let what = format!("{req} with a {}-byte body", text.len());
        expect(&what, got, &reply, status, code);
        reply
    }

    /// Checks one case written `"STATUS CODE METHOD /path [raw JSON body]"` (code `-`: success).
    pub async fn check_case(&self, case: &str) -> Value {
        let mut parts = case.splitn(5, ' ');
        let mut next = || parts.next().unwrap_or_default();
        let (status, code, method, path, body) = (next(), next(), next(), next(), next());
        let status = status
            .parse()
            .unwrap_or_else(|_| panic!("case {case:?}: no status"));
        let code = if code == "-" { OK } else { code };
        let req = format!("{method} {path}");
        let (got, reply) = self.send_raw(&req, Some("application/json"), body).await;
        expect(case, got, &reply, status, code);
        reply
    }

    /// A plain-text GET (for `/metrics`).
    pub async fn text(&self, path: &str) -> (u16, String) {
        let resp = self
            .request(&format!("GET {path}"))
            .send()
            .await
            .expect("request sent");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// `GET /v1/stock/{sku}/{wh}`, which must be 200.
    pub async fn stock(&self, sku: &str, wh: &str) -> Value {
        self.check(&format!("GET /v1/stock/{sku}/{wh}"), Value::Null, 200, OK)
            .await
    }

    /// The stock figures of a key: `[on_hand, reserved, available, safety_stock]`.
    pub async fn figures(&self, sku: &str, wh: &str) -> [u64; 4] {
        figures(&self.stock(sku, wh).await)
    }

    /// Commits reservation `id` on `at` ("sku/warehouse"); asserts `status` and `code`.
    pub async fn commit(&self, id: &str, at: &str, status: u16, code: &str) -> Value {
        self.finish("commit", id, at, status, code).await
    }

    /// Releases reservation `id` on `at` ("sku/warehouse"); asserts `status` and `code`.
    pub async fn release(&self, id: &str, at: &str, status: u16, code: &str) -> Value {
        self.finish("release", id, at, status, code).await
    }

    async fn finish(&self, what: &str, id: &str, at: &str, status: u16, code: &str) -> Value {
        let (sku, wh) = at.split_once('/').expect("\"sku/warehouse\"");
        let req = format!("POST /v1/reservations/{id}/{what}");
        self.check(&req, key(sku, wh), status, code).await
    }

    /// A cycle count that must succeed.
    pub async fn count(&self, sku: &str, wh: &str, on_hand: u64, op_id: &str) -> Value {
        let body = json!({ "on_hand": on_hand, "op_id": op_id });
        self.check(&format!("PUT /v1/stock/{sku}/{wh}"), body, 200, OK)
            .await
    }

    /// Polls `GET /v1/stock/{sku}/{wh}` until its figures are `want` (within 5 s).
    pub async fn await_figures(&self, sku: &str, wh: &str, want: [u64; 4]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = figures(&self.stock(sku, wh).await);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sku}/{wh} stayed at {got:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A receipt that must succeed.
    pub async fn receive(&self, sku: &str, wh: &str, qty: u64, op_id: &str) -> Value {
        let body = json!({ "qty": qty, "op_id": op_id });
        self.check(
            &format!("POST /v1/stock/{sku}/{wh}/receipts"),
            body,
            200,
            OK,
        )
        .await
    }

    /// A safety-stock change that must succeed.
    pub async fn safety(&self, sku: &str, wh: &str, safety_stock: u64, op_id: &str) -> Value {
        let body = json!({ "safety_stock": safety_stock, "op_id": op_id });
        self.check(
            &format!("PUT /v1/stock/{sku}/{wh}/safety-stock"),
            body,
            200,
            OK,
        )
        .await
    }

    /// A reservation that must be created (201).
    pub async fn reserve(&self, body: Value) -> Value {
        self.check("POST /v1/reservations", body, 201, OK).await
    }

    fn request(&self, req: &str) -> reqwest::RequestBuilder {
        let (method, path) = req.split_once(' ').expect("request as \"METHOD /path\"");
        let method = Method::from_bytes(method.as_bytes()).expect("HTTP method");
        self.http.request(method, format!("{}{}", self.base, path))
    }
}

async fn answer(req: &str, rb: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{req}: request failed: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{req}: {status} with a non-JSON body ({e}): {text}"))
    };
    (status, body)
}

/// Asserts an answer: never a 5xx, the expected status, and for an error a `{code, message}` body.
pub fn expect(what: &str, got: u16, reply: &Value, status: u16, code: &str) {
    assert!(got < 500, "{what}: server error {got}: {reply}");
    assert_eq!(got, status, "{what}: unexpected status; body {reply}");
    if code.is_empty() {
        assert!(
            reply.get("code").is_none(),
            "{what}: a success with an error code: {reply}"
        );
    } else {
        assert_eq!(reply["code"], code, "{what}: unexpected code; body {reply}");
        assert!(
            reply["message"].is_string(),
            "{what}: error without a message: {reply}"
        );
    }
}

/// The body of `POST /v1/reservations`, with a `LONG` TTL.
pub fn hold(sku: &str, wh: &str, qty: u64, reservation_id: &str) -> Value {
    hold_ttl(sku, wh, qty, reservation_id, LONG)
}

/// The body of `POST /v1/reservations`.
pub fn hold_ttl(sku: &str, wh: &str, qty: u64, id: &str, ttl_ms: u64) -> Value {
    json!({ "sku": sku, "warehouse": wh, "qty": qty, "reservation_id": id, "ttl_ms": ttl_ms })
}

/// The body of a reservation commit or release.
pub fn key(sku: &str, wh: &str) -> Value {
    json!({ "sku": sku, "warehouse": wh })
}

/// An order line.
pub fn line(sku: &str, qty: u64, warehouses: &[&str]) -> Value {
    json!({ "sku": sku, "qty": qty, "warehouses": warehouses })
}

/// The wall clock in ms, the clock the node's holds expire by.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The stock figures of a `GET` body, without the version.
pub fn figures(v: &Value) -> [u64; 4] {
    ["on_hand", "reserved", "available", "safety_stock"]
        .map(|f| v[f].as_u64().unwrap_or_else(|| panic!("{f} in {v}")))
}
