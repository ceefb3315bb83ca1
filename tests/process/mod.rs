//! Runs the real `stockring` binary as a child process for tests that need real signals.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct NodeProcess {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
}

impl NodeProcess {
    /// Starts `stockring serve` on a free port and waits until `/ready` answers 200.
    pub async fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> NodeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stockring"));
        cmd.args(["serve", "--http-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("STOCKRING_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn stockring");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("stockring listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("node did not report its address");
        let node = NodeProcess {
            child,
            base: format!("http://{addr}"),
            data_dir: data_dir.to_owned(),
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no drain, no snapshot, no final checkpoint.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "node exited with {status} after SIGTERM");
    }

    /// `GET /v1/stock/{sku}/{warehouse}` as JSON.
    pub async fn view(&self, sku: &str, warehouse: &str) -> serde_json::Value {
        let url = format!("{}/v1/stock/{sku}/{warehouse}", self.base);
        reqwest::get(url)
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// Value of an unlabelled Prometheus metric, 0 when not yet exported.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
