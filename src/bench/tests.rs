//! End-to-end checks of the load generator against the null server on a loopback port.

use std::time::Duration;

use reqwest::StatusCode;

use super::client::{classify, Outcome};
use super::report::Tally;
use super::*;

/// Starts the null server on an ephemeral port and returns its base URL.
async fn spawn_null() -> String {
    spawn_null_with(None).await
}

async fn spawn_null_with(log: Option<DurableLog>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, null_router(log)).await });
    format!("http://{addr}")
}

fn args(target: String, workload: Workload) -> BenchArgs {
    BenchArgs {
        target,
        workload,
        clients: 8,
        duration_s: 1,
        keys: 50,
        stock: 100,
        attempts: 400,
        zipf_s: 1.1,
        json_only: true,
        run_id: None,
        skip_seed: false,
        id_len: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flash_grants_exactly_the_stock() {
    let target = spawn_null().await;
    let report = run(args(target, Workload::Flash)).await.expect("run");
    assert_eq!(report.flash_pass, Some(true), "{:?}", report.flash_detail);
    assert_eq!(
        (report.requests, report.ok, report.insufficient),
        (400, 100, 300)
    );
    assert_eq!(report.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_durable_null_server_commits_every_grant_before_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = DurableLog::open(dir.path()).expect("open log");
    let target = spawn_null_with(Some(log)).await;
    let report = run(args(target, Workload::Flash)).await.expect("run");
    assert_eq!(report.flash_pass, Some(true), "{:?}", report.flash_detail);
    // One row per seeded key and per attempt (grant or refusal), each committed before its
    // answer left.
    let conn = rusqlite::Connection::open(dir.path().join("null.db")).expect("reopen");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 1 + 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flash_with_more_stock_than_attempts_grants_every_attempt() {
    let target = spawn_null().await;
    let mut a = args(target, Workload::Flash);
    a.stock = 1_000;
    let report = run(a).await.expect("run");
    assert_eq!(report.flash_pass, Some(true), "{:?}", report.flash_detail);
    assert_eq!((report.ok, report.insufficient), (400, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timed_workloads_run_without_errors() {
    let target = spawn_null().await;
    for workload in [Workload::Uniform, Workload::Zipf] {
        let report = run(args(target.clone(), workload)).await.expect("run");
        assert!(report.ok > 0, "{workload:?}: {report:?}");
        assert_eq!(
            report.errors + report.insufficient,
            0,
            "{workload:?}: {report:?}"
        );
        assert!(report.elapsed_s >= 1.0 && report.throughput_rps > 0.0);
        assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
        assert_eq!(report.flash_pass, None);
    }
}

/// A node that accepts setup but sheds every reservation with a retryable 503.
async fn spawn_shedding() -> String {
    use axum::routing::{post, put};
    let shed = || async {
        let body = r#"{"code":"overloaded","message":"try later"}"#;
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, body)
    };
    let router = axum::Router::new()
        .route("/v1/stock/{sku}/{warehouse}", put(|| async { "{}" }))
        .route("/v1/reservations", post(shed));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_counted_not_retried_and_fail_the_flash() {
    let target = spawn_shedding().await;
    let report = run(args(target, Workload::Flash)).await.expect("run");
    assert_eq!((report.requests, report.errors, report.ok), (400, 400, 0));
    assert_eq!(report.flash_pass, Some(false));
    let detail = report.flash_detail.unwrap_or_default();
    assert!(detail.contains("400 requests failed"), "{detail}");
}

#[tokio::test]
async fn unreachable_server_is_a_setup_error() {
    // Bind then drop, so the port is very likely closed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let err = run(args(format!("http://{addr}"), Workload::Uniform))
        .await
        .expect_err("must fail");
    assert!(format!("{err:#}").contains("setup failed"), "{err:#}");
}

#[tokio::test]
async fn bad_arguments_are_refused_before_any_request() {
    let mut a = args("http://127.0.0.1:9".to_owned(), Workload::Zipf);
    a.zipf_s = -1.0;
    assert!(run(a).await.is_err());
    let mut a = args("https://127.0.0.1:9".to_owned(), Workload::Uniform);
    a.keys = 10;
    assert!(run(a).await.is_err(), "https is not supported");
    let mut a = args("http://127.0.0.1:9".to_owned(), Workload::Uniform);
    a.clients = 0;
    assert!(run(a).await.is_err());
}

#[test]
fn only_a_well_formed_409_insufficient_stock_is_a_refusal() {
    let insufficient = br#"{"code":"insufficient_stock","message":"no","available":0}"#;
    let busy = br#"{"code":"overloaded","message":"later"}"#;
    assert_eq!(classify(StatusCode::CREATED, b"{}"), Outcome::Granted);
    assert_eq!(classify(StatusCode::OK, b""), Outcome::Granted);
    assert_eq!(
        classify(StatusCode::CONFLICT, insufficient),
        Outcome::Insufficient
    );
    assert!(matches!(
        classify(StatusCode::CONFLICT, b"oops"),
        Outcome::Failed(_)
    ));
    assert!(matches!(
        classify(StatusCode::CONFLICT, busy),
        Outcome::Failed(_)
    ));
    let unavailable = classify(StatusCode::SERVICE_UNAVAILABLE, busy);
    assert_eq!(
        unavailable,
        Outcome::Failed("HTTP 503 Service Unavailable overloaded".into())
    );
}

#[test]
fn tallies_merge_counts_and_latencies() {
    let mut a = Tally::new().expect("tally");
    let mut b = Tally::new().expect("tally");
    a.record(Outcome::Granted, Duration::from_micros(100));
    b.record(Outcome::Insufficient, Duration::from_micros(300));
    b.record(Outcome::Failed("boom".into()), Duration::from_secs(120));
    a.merge(b).expect("merge");
    assert_eq!((a.ok, a.insufficient, a.errors, a.requests()), (1, 1, 1, 3));
    assert_eq!(a.first_error.as_deref(), Some("boom"));
    let report = BenchReport::new(Workload::Uniform, 2, &a, Duration::from_secs(1));
    assert!(
        report.max_us >= 59_000_000,
        "latency beyond 60 s is clamped, not dropped"
    );
    let line = report.json_line().expect("json");
    assert!(
        line.starts_with(r#"{"bench":{"workload":"uniform","#),
        "{line}"
    );
    assert!(!line.contains('\n'));
}
