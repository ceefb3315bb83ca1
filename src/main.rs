//! The `stockring` binary: argument parsing, logging, signals. All logic lives in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use stockring::config::Config;

// glibc malloc showed up as ~13% of the request path's CPU (many small, short-lived
// allocations across threads); mimalloc is built for exactly that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "stockring",
    version,
    about = "Inventory reservations that never oversell"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Copy a node's database to FILE; safe while the node serves.
    Backup {
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        #[arg(long)]
        to: PathBuf,
    },
    /// Replace a stopped node's database with a backup.
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Inspect or change the cluster through any node's HTTP API.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Drive load at a node; prints throughput, latency percentiles and a JSON line.
    Bench(stockring::bench::BenchArgs),
    /// Start a local cluster of real nodes, run clients while injecting faults (kill -9,
    /// SIGSTOP), heal, and check the recorded history for per-key linearizability and
    /// C1-C3. Exit 0 only on a clean verdict (1 = a violation, 2 = the run failed).
    Chaos(stockring::chaos::ChaosArgs),
    /// In-memory HTTP server with the same API shapes: the HTTP ceiling for `bench`.
    #[command(hide = true)]
    BenchNullServer {
        #[arg(long, default_value = "127.0.0.1:8081")]
        http_addr: String,
        /// Also commit every change to SQLite in this directory (fsynced, group-committed)
        /// before answering: the floor of durability alone.
        #[arg(long)]
        durable_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members and their state, the Raft leader and term, vnodes per node, moves in progress.
    Status {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Decommission a node: its vnodes move to the others, then it stops.
    Leave {
        #[arg(long)]
        node: String,
        /// The cluster's cookie (the admin token of this endpoint).
        #[arg(long, env = "STOCKRING_CLUSTER__COOKIE", hide_env_values = true)]
        cookie: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// Return at once instead of waiting until the node has left.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML config file (see config/stockring.toml); STOCKRING_* variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `http_addr`.
    #[arg(long)]
    http_addr: Option<String>,
    /// Overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Backup { data_dir, to } => {
            init_logging("info");
            stockring::persistence::backup::backup(&data_dir, &to)
                .map(|()| println!("backed up {} to {}", data_dir.display(), to.display()))
                .map_err(Into::into)
        }
        Command::Restore { from, data_dir } => {
            init_logging("info");
            stockring::persistence::backup::restore(&from, &data_dir)
                .map(|()| println!("restored {} into {}", from.display(), data_dir.display()))
                .map_err(Into::into)
        }
        Command::Cluster(cmd) => runtime().and_then(|rt| rt.block_on(cluster_cli(cmd))),
        Command::Bench(args) => runtime().and_then(|rt| {
            rt.block_on(async move {
                let report = stockring::bench::run(args).await?;
                if report.flash_pass == Some(false) {
                    anyhow::bail!("flash sale check FAILED");
                }
                Ok(())
            })
        }),
        Command::Chaos(args) => {
            init_logging("warn");
            // On Ctrl-C or SIGTERM the run is dropped, and with it (when the runtime shuts
            // down) the tasks that own the node processes and the namespaces: their `Drop`
            // kills the nodes and removes the network.
            let outcome = runtime().and_then(|rt| {
                rt.block_on(async {
                    tokio::select! {
                        verdict = stockring::chaos::run(args) => verdict.map(Some),
                        () = shutdown_signal() => Ok(None),
                    }
                })
            });
            match outcome {
                Ok(None) => Err(anyhow::anyhow!(
                    "interrupted: the nodes were stopped and their network removed"
                )),
                Ok(Some(verdict)) => {
                    print!("{}", stockring::chaos::run::describe(&verdict));
                    return if verdict.clean {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    };
                }
                Err(e) => Err(e),
            }
        }
        Command::BenchNullServer {
            http_addr,
            durable_dir,
        } => {
            init_logging("info");
            runtime().and_then(|rt| {
                rt.block_on(async move {
                    let log = durable_dir
                        .as_deref()
                        .map(stockring::bench::DurableLog::open)
                        .transpose()?;
                    let listener = tokio::net::TcpListener::bind(&http_addr).await?;
                    println!(
                        "stockring null server listening on {}",
                        listener.local_addr()?
                    );
                    stockring::bench::serve_null(listener, log, shutdown_signal()).await
                })
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stockring: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(addr) = args.http_addr {
        config.http_addr = addr;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    init_logging(&config.log);
    runtime()?.block_on(async move {
        let server = stockring::server::start(config).await?;
        // Tests and scripts read the bound address (the config may ask for port 0).
        println!("stockring listening on {}", server.http_addr);
        server.run_until(shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn cluster_cli(cmd: ClusterCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match cmd {
        ClusterCommand::Status { http, json } => {
            let status: serde_json::Value = client
                .get(format!("http://{http}/v1/cluster"))
                .send()
                .await?
                .json()
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", stockring::cluster::format_status(&status));
            }
            Ok(())
        }
        ClusterCommand::Leave {
            node,
            cookie,
            http,
            no_wait,
        } => {
            let resp = client
                .post(format!("http://{http}/v1/cluster/leave"))
                .bearer_auth(cookie)
                .json(&serde_json::json!({ "node": node }))
                .send()
                .await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            if !status.is_success() {
                anyhow::bail!("leave refused ({status}): {body}");
            }
            println!("{node} is leaving; its vnodes are moving to the other nodes");
            if no_wait {
                return Ok(());
            }
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let s: serde_json::Value = client
                    .get(format!("http://{http}/v1/cluster"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let member = s["members"]
                    .as_array()
                    .and_then(|m| m.iter().find(|m| m["name"] == node.as_str()))
                    .cloned()
                    .unwrap_or_default();
                println!(
                    "  {node}: state {}, vnodes {}",
                    member["state"], member["vnodes"]
                );
                if member["state"] == "left" {
                    println!("{node} has left the cluster");
                    break;
                }
            }
            Ok(())
        }
    }
}
