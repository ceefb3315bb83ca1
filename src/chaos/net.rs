//! Network partitions between real processes: each node runs in its own network namespace,
//! joined to the others by a bridge (veth pairs), so that packets between two nodes can be
//! dropped (`iptables -j DROP` inside the receiver's namespace) while the runner, in the host
//! namespace, still reaches every node (as Jepsen's clients do). Needs root and `ip`,
//! `iptables`; without them the runner says so and runs the process faults only.

use anyhow::{bail, Context};
use std::process::Command;

pub struct Netns {
    /// Prefix of every name this run creates (namespaces, bridge, veths).
    tag: String,
    bridge: String,
    /// Third octet of the run's 10.77.x.0/24.
    net: u32,
    namespaces: Vec<String>,
    forward_rule: bool,
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Why namespaces cannot be used here, if they cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root".into());
        }
        for tool in ["ip", "iptables"] {
            let found = Command::new(tool)
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Some(format!("`{tool}` is not installed"));
            }
        }
        None
    }

    /// Removes what runs that were killed (no `Drop`) left: namespaces, bridges and FORWARD
    /// rules named `sr<pid>...` whose process is gone. Returns the tags it cleared.
    pub fn clear_stale() -> Vec<String> {
        let listed = Command::new("ip")
            .args(["-o", "link", "show", "type", "bridge"])
            .output();
        let Ok(listed) = listed else {
            return Vec::new();
        };
        let mut cleared = Vec::new();
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            // "12: sr7780br: <BROADCAST,...": the bridge's name is the second field.
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let Some(pid) = name
                .strip_prefix("sr")
                .and_then(|rest| rest.strip_suffix("br"))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            // A killed run whose parent never reaped it stays in /proc as a zombie ("Z").
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(") ")
                    .next()
                    .is_some_and(|s| !s.starts_with('Z'))
            });
            if alive && pid != std::process::id() % 10_000 {
                continue;
            }
            let tag = format!("sr{pid}");
            let stale = Netns {
                bridge: name.to_owned(),
                net: 0,
                namespaces: (0..64).map(|i| format!("{tag}n{i}")).collect(),
                forward_rule: true,
                tag: tag.clone(),
            };
            drop(stale);
            cleared.push(tag);
        }
        cleared
    }

    /// A namespace per node on a bridge; node `i` gets 10.77.x.(10 + i).
    pub fn create(nodes: usize) -> anyhow::Result<Self> {
        for tag in Self::clear_stale() {
            println!("chaos: removed the network a killed run left ({tag}*)");
        }
        let id = std::process::id() % 10_000;
        let tag = format!("sr{id}");
        let mut me = Self {
            bridge: format!("{tag}br"),
            net: 100 + id % 150,
            tag,
            namespaces: Vec::new(),
            forward_rule: false,
        };
        me.build(nodes).context("building the partition network")?;
        Ok(me)
    }

    fn build(&mut self, nodes: usize) -> anyhow::Result<()> {
        let br = self.bridge.clone();
        sh(&["ip", "link", "add", &br, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.77.{}.1/24", self.net),
            "dev",
            &br,
        ])?;
        sh(&["ip", "link", "set", &br, "up"])?;
        // Docker sets the FORWARD policy to DROP, and with br_netfilter bridged frames pass
        // through it: let this bridge's traffic through.
        sh(&[
            "iptables", "-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ])?;
        self.forward_rule = true;
        for i in 0..nodes {
            let ns = format!("{}n{i}", self.tag);
            sh(&["ip", "netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let veth = format!("{}v{i}", self.tag);
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            sh(&["ip", "link", "set", &veth, "master", &br, "up"])?;
            let addr = format!("{}/24", self.ip(i));
            sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.net, 10 + i)
    }

    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// Node `to` stops receiving packets from node `from` (one direction).
    pub fn drop_from(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let src = self.ip(from);
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.namespaces[to],
            "iptables",
            "-A",
            "INPUT",
            "-s",
            &src,
            "-j",
            "DROP",
        ])
    }

    /// Every cut removed.
    pub fn heal(&self) -> anyhow::Result<()> {
        for ns in &self.namespaces {
            sh(&["ip", "netns", "exec", ns, "iptables", "-F", "INPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Nodes a killed run left behind still live in its namespaces: stop them first.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: kill(2) has no memory preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
        if self.forward_rule {
            let br = self.bridge.clone();
            let _ = sh(&[
                "iptables", "-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
            ]);
        }
    }
}
