//! The flash-sale correctness check: many clients race for one key's stock, and the server must
//! grant exactly the stock there is: no oversell, no undersell, no failures.

use super::client::Api;
use super::report::Tally;
use super::workload::WAREHOUSE;

/// Whether the run passed, and a one-line account of why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub pass: bool,
    pub detail: String,
}

/// Judges a finished flash run. It passes iff the number of grants is `min(stock, attempts)`,
/// the server's own `reserved` figure agrees (the answers were not lies), and nothing ended in
/// an error other than `insufficient_stock`. A failed final read is a FAIL, not an error: the
/// load already ran, and the caller still wants the report.
pub async fn judge(api: &Api, sku: &str, stock: u64, attempts: u64, tally: &Tally) -> Verdict {
    let expected = stock.min(attempts);
    let reserved = api
        .get_stock(sku, WAREHOUSE)
        .await
        .map(|view| view.reserved);
    let mut problems = Vec::new();
    if tally.ok != expected {
        problems.push(format!("granted {} but expected {expected}", tally.ok));
    }
    match &reserved {
        Ok(r) if *r != expected => {
            problems.push(format!("server reserved {r}, expected {expected}"))
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("final GET failed: {e:#}")),
    }
    if tally.errors > 0 {
        problems.push(format!("{} requests failed", tally.errors));
    }
    let reserved_text = reserved
        .as_ref()
        .map_or_else(|_| "?".to_owned(), u64::to_string);
    let summary = format!(
        "stock {stock}, attempts {attempts}: granted {}, insufficient {}, errors {}, reserved {}",
        tally.ok, tally.insufficient, tally.errors, reserved_text,
    );
    if problems.is_empty() {
        Verdict {
            pass: true,
            detail: summary,
        }
    } else {
        Verdict {
            pass: false,
            detail: format!("{summary}; {}", problems.join("; ")),
        }
    }
}
