//! A thin typed client over the three endpoints, sharing one connection pool.
//!
//! Setup and verification calls return `anyhow` errors (they abort or fail the run), while the
//! measured reservation call returns an [`Outcome`] so a failure is counted, never retried.

use std::error::Error as StdError;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{StatusCode, Url};

use super::wire::{ErrorBody, ReserveRequest, SetStockRequest, StockView, INSUFFICIENT_STOCK};

/// A request that takes longer than this is a failure, so a wedged server cannot hang the run.
/// It stays below the histogram's 60 s ceiling so every recorded latency is exact.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How one measured reservation attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Any 2xx: the hold was granted (or replayed).
    Granted,
    /// 409 `insufficient_stock`: a correct "sold out" answer.
    Insufficient,
    /// Anything else, with a short description for the summary.
    Failed(String),
}

/// The node under test, reached through one shared `reqwest::Client`.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    reserve_url: String,
}

impl Api {
    /// Builds a client whose idle pool can keep one connection per worker, so the measurement
    /// does not pay for reconnects.
    pub fn new(target: &str, clients: usize) -> anyhow::Result<Self> {
        let url = Url::parse(target).with_context(|| format!("invalid --target {target:?}"))?;
        if url.scheme() != "http" {
            bail!("--target must be a plain http:// URL, got {target:?}");
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients.max(1))
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let base = target.trim_end_matches('/').to_owned();
        let reserve_url = format!("{base}/v1/reservations");
        Ok(Self {
            http,
            base,
            reserve_url,
        })
    }

    fn stock_url(&self, sku: &str, warehouse: &str) -> String {
        format!("{}/v1/stock/{sku}/{warehouse}", self.base)
    }

    /// Sets on-hand with a cycle count; any non-2xx answer is an error.
    pub async fn set_stock(
        &self,
        sku: &str,
        warehouse: &str,
        on_hand: u64,
        op_id: String,
    ) -> anyhow::Result<()> {
        let url = self.stock_url(sku, warehouse);
        let body = SetStockRequest { on_hand, op_id };
        let resp = self
            .http
            .put(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("PUT {url}: {}", describe(e)))?;
        // Drain the body so the connection returns to the pool for the next setup call.
        expect_success("PUT", &url, resp)
            .await?
            .bytes()
            .await
            .map_err(|e| anyhow::anyhow!("PUT {url}: reading body: {}", describe(e)))?;
        Ok(())
    }

    /// Reads the stock figures of one key.
    pub async fn get_stock(&self, sku: &str, warehouse: &str) -> anyhow::Result<StockView> {
        let url = self.stock_url(sku, warehouse);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {}", describe(e)))?;
        let resp = expect_success("GET", &url, resp).await?;
        resp.json()
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: bad body: {}", describe(e)))
    }

    /// One measured reservation attempt. The body is always read to the end, so the latency
    /// covers the whole answer and the connection goes back to the pool.
    pub async fn reserve(&self, body: &ReserveRequest) -> Outcome {
        let resp = match self.http.post(&self.reserve_url).json(body).send().await {
            Ok(resp) => resp,
            Err(e) => return Outcome::Failed(describe(e)),
        };
        let status = resp.status();
        match resp.bytes().await {
            Ok(bytes) => classify(status, &bytes),
            Err(e) => Outcome::Failed(format!("HTTP {status}, body: {}", describe(e))),
        }
    }
}

/// Maps a reservation answer to an outcome; only a well-formed 409 `insufficient_stock` is a
/// legitimate refusal, every other non-2xx is a failure.
pub fn classify(status: StatusCode, body: &[u8]) -> Outcome {
    if status.is_success() {
        return Outcome::Granted;
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(err) if status == StatusCode::CONFLICT && err.code == INSUFFICIENT_STOCK => {
            Outcome::Insufficient
        }
        Ok(err) => Outcome::Failed(format!("HTTP {status} {}", err.code)),
        Err(_) => Outcome::Failed(format!("HTTP {status}")),
    }
}

/// Turns a non-2xx answer into an error that quotes the server's own body.
async fn expect_success(
    method: &str,
    url: &str,
    resp: reqwest::Response,
) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    bail!("{method} {url}: HTTP {status}: {}", text.trim())
}

/// reqwest's `Display` hides the cause ("error sending request"); the chain says why. The URL
/// is dropped because every caller already names it (or, for reservations, it never varies).
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
