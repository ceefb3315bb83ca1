//! Request metrics with cached handles. `metrics::counter!(name, labels...)` builds a key and
//! looks it up in the registry on every call; on the request path that cost about a tenth of
//! the API's CPU. Handles are cheap to clone and the label sets are small and bounded (route
//! templates, methods, statuses, op and outcome names), so they are looked up once and kept.

use axum::http::Method;
use metrics::{Counter, Histogram};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

struct HttpHandles {
    method: Method,
    status: u16,
    duration: Histogram,
    requests: Counter,
}

/// Records one HTTP request under its route template (never the concrete path).
pub fn record_http(route: &str, method: &Method, status: u16, seconds: f64) {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<HttpHandles>>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !cache.contains_key(route) {
        cache.insert(route.to_owned(), Vec::new());
    }
    let Some(entries) = cache.get_mut(route) else {
        return;
    };
    let index = match entries
        .iter()
        .position(|h| h.status == status && h.method == method)
    {
        Some(i) => i,
        None => {
            let (m, r, s) = (
                method.as_str().to_owned(),
                route.to_owned(),
                status.to_string(),
            );
            entries.push(HttpHandles {
                method: method.clone(),
                status,
                duration: metrics::histogram!("stockring_http_request_duration_seconds", "method" => m.clone(), "route" => r.clone()),
                requests: metrics::counter!("stockring_http_requests_total", "method" => m, "route" => r, "status" => s),
            });
            entries.len() - 1
        }
    };
    entries[index].duration.record(seconds);
    entries[index].requests.increment(1);
}

/// Counts one ledger operation by its outcome code.
pub fn record_operation(op: &'static str, outcome: &'static str) {
    static CACHE: OnceLock<Mutex<HashMap<(&'static str, &'static str), Counter>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    cache
        .entry((op, outcome))
        .or_insert_with(
            || metrics::counter!("stockring_operations_total", "op" => op, "outcome" => outcome),
        )
        .increment(1);
}
