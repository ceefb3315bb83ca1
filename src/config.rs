//! Node configuration: defaults, then a TOML file, then `STOCKRING_<FIELD>` environment
//! variables, then command-line flags; validated once into `Config`.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on (`host:port`; port 0 picks a free one).
    pub http_addr: String,
    /// Where the node keeps its SQLite database.
    pub data_dir: PathBuf,
    /// Most stock actors alive at once; beyond it the least recently used are passivated.
    pub max_active_actors: usize,
    /// An actor idle this long is passivated (its state stays on disk).
    pub idle_passivate_ms: u64,
    /// A key writes a snapshot (and trims its journal) after this many events.
    pub snapshot_every_events: u64,
    /// How long the outcome of a finished id is remembered for replays (C3).
    pub outcome_retention_ms: u64,
    /// A key whose oldest journal row is this many rows behind the newest is compacted by the
    /// writer (snapshot from durable state); bounds the journal and the start-up scan.
    pub journal_compact_window_rows: u64,
    /// Most requests in one group commit (one transaction, one fsync).
    pub group_commit_max_batch: usize,
    /// Requests that may wait for the writer before producers are slowed down.
    pub writer_queue: usize,
    /// Most requests in flight in the node before new ones get 503 `overloaded`.
    pub max_in_flight: usize,
    /// How long a request waits for its key's answer before a 503 `timeout` (the operation
    /// may still be applied; a retry with the same id replays it).
    pub answer_timeout_ms: u64,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `stockring=debug`.
    pub log: String,
    /// Cluster membership; off (a single node) unless `[cluster] enabled = true`.
    pub cluster: ClusterConfig,
}

/// `[cluster]` in the TOML file; environment variables are `STOCKRING_CLUSTER__<FIELD>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// This node's name: its identity in the cluster. A restart with the same name and data
    /// dir is the same node (no vnodes move); a new name is a join.
    pub node_name: String,
    /// `ip:port` for node-to-node traffic (ractor_cluster); other nodes dial it.
    pub cluster_addr: String,
    /// The HTTP address to publish for this node (defaults to `http_addr`).
    pub advertise_http: String,
    /// The seed nodes, `name@ip:port` (their cluster addresses). They form the Raft group
    /// that decides membership and ownership; the list must be the same on every node.
    pub seeds: Vec<String>,
    /// Shared secret for node-to-node authentication, and the bearer token of the cluster's
    /// admin endpoints (`POST /v1/cluster/leave`). At least 16 characters; the default is
    /// refused in cluster mode.
    pub cookie: String,
    /// Vnodes in the ring: a power of two, fixed when the cluster is created.
    pub vnodes: u32,
    pub heartbeat_ms: u64,
    /// A peer that misses this many heartbeats in a row is down.
    pub down_after_missed: u32,
    /// Most requests in flight to one peer (beyond: `overloaded`).
    pub max_in_flight_per_peer: usize,
    /// Largest node-to-node message; checked before sending.
    pub max_message_bytes: usize,
    /// Most vnode moves in flight at once, cluster-wide.
    pub max_moves: usize,
    /// A move not committed within this time is aborted (and planned again).
    pub move_timeout_ms: u64,
    /// Size of one handoff page.
    pub handoff_page_bytes: usize,
}

/// The shortest cluster cookie accepted.
const MIN_COOKIE_LEN: usize = 16;

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_name: String::new(),
            cluster_addr: "127.0.0.1:7100".into(),
            advertise_http: String::new(),
            seeds: Vec::new(),
            cookie: "stockring".into(),
            vnodes: 1024,
            heartbeat_ms: 500,
            down_after_missed: 4,
            max_in_flight_per_peer: 256,
            max_message_bytes: 16 << 20,
            max_moves: 64,
            move_timeout_ms: 30_000,
            handoff_page_bytes: 1 << 20,
        }
    }
}

impl ClusterConfig {
    /// The seeds as (name, cluster address).
    pub fn seed_list(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.seeds
            .iter()
            .map(|s| {
                s.split_once('@')
                    .map(|(n, a)| (n.to_owned(), a.to_owned()))
                    .ok_or_else(|| ConfigError::Invalid(format!("seed {s:?} is not name@ip:port")))
            })
            .collect()
    }

    pub fn is_seed(&self) -> bool {
        self.seed_list()
            .is_ok_and(|l| l.iter().any(|(n, _)| *n == self.node_name))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            max_active_actors: 100_000,
            idle_passivate_ms: 60_000,
            snapshot_every_events: 1_000,
            outcome_retention_ms: 24 * 3600 * 1000,
            journal_compact_window_rows: 100_000,
            group_commit_max_batch: 4_096,
            writer_queue: 65_536,
            max_in_flight: 16_384,
            answer_timeout_ms: 10_000,
            log: "info".into(),
            cluster: ClusterConfig::default(),
        }
    }
}

const FIELDS: &[&str] = &[
    "http_addr",
    "data_dir",
    "max_active_actors",
    "idle_passivate_ms",
    "snapshot_every_events",
    "outcome_retention_ms",
    "journal_compact_window_rows",
    "group_commit_max_batch",
    "writer_queue",
    "max_in_flight",
    "answer_timeout_ms",
    "log",
    "cluster",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults < `file` (if given) < `STOCKRING_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "{} does not exist",
                    file.display()
                )));
            }
            fig = fig.merge(Toml::file(file));
        }
        // figment hands the filter the variable's own case (`MAX_ACTIVE_ACTORS`).
        let known = |k: &figment::value::UncasedStr| {
            let top = k.as_str().split("__").next().unwrap_or_default();
            FIELDS.iter().any(|f| top.eq_ignore_ascii_case(f))
        };
        fig = fig.merge(
            Env::prefixed("STOCKRING_")
                .filter(known)
                .lowercase(true)
                .split("__"),
        );
        let config: Config = fig.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.max_active_actors == 0 {
            return bad("max_active_actors must be at least 1");
        }
        if self.snapshot_every_events == 0 {
            return bad("snapshot_every_events must be at least 1");
        }
        if self.group_commit_max_batch == 0 || self.writer_queue < self.group_commit_max_batch {
            return bad("need 1 <= group_commit_max_batch <= writer_queue");
        }
        if self.journal_compact_window_rows == 0
            || self.journal_compact_window_rows > i64::MAX as u64
        {
            return bad("journal_compact_window_rows must be at least 1");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1");
        }
        if self.answer_timeout_ms < 10 {
            return bad("answer_timeout_ms must be at least 10");
        }
        if self.idle_passivate_ms < 10 {
            return bad("idle_passivate_ms must be at least 10");
        }
        let c = &self.cluster;
        if c.enabled {
            if c.cookie == ClusterConfig::default().cookie || c.cookie.len() < MIN_COOKIE_LEN {
                return bad(
                    "cluster.cookie must be a secret of at least 16 characters, not the default: \
                     anyone who knows it can join the cluster and propose control commands",
                );
            }
            if crate::domain::Sku::parse(&c.node_name).is_err() {
                return bad("cluster.node_name must be a valid id ([A-Za-z0-9._:-], 1..=128)");
            }
            if c.cluster_addr.parse::<std::net::SocketAddr>().is_err() {
                return bad("cluster.cluster_addr must be ip:port");
            }
            let seeds = c.seed_list()?;
            if seeds.is_empty() {
                return bad("cluster.seeds must name at least one seed");
            }
            if !crate::cluster::ring::is_valid_vnode_count(c.vnodes) {
                return bad("cluster.vnodes must be a power of two up to 65536");
            }
            if c.heartbeat_ms < 10 || c.down_after_missed == 0 {
                return bad("cluster.heartbeat_ms >= 10 and cluster.down_after_missed >= 1");
            }
            if c.max_in_flight_per_peer == 0 || c.max_moves == 0 {
                return bad("cluster.max_in_flight_per_peer and cluster.max_moves must be >= 1");
            }
            // A handoff page is filled until it reaches `handoff_page_bytes`, so it can pass
            // that by one item: a record segment (< 2 * SEGMENT_BYTES) plus its key. A cap
            // below that would refuse some key's page on every try, and its move would abort
            // and restart forever.
            let page_max = c.handoff_page_bytes + 2 * crate::persistence::codec::SEGMENT_BYTES;
            if c.handoff_page_bytes == 0 || c.max_message_bytes < page_max + 64 * 1024 {
                return bad(
                    "cluster.max_message_bytes must be at least handoff_page_bytes + 576 KiB \
                     (a page can pass handoff_page_bytes by one 512 KiB record segment)",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                "max_active_actors = 7\nidle_passivate_ms = 500\n",
            )?;
            jail.set_env("STOCKRING_IDLE_PASSIVATE_MS", "900");
            jail.set_env("STOCKRING_UNRELATED", "ignored");
            let c = Config::load(Some(Path::new("node.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.max_active_actors, 7);
            assert_eq!(c.idle_passivate_ms, 900);
            assert_eq!(c.http_addr, "127.0.0.1:8080");
            jail.set_env("STOCKRING_CLUSTER__NODE_NAME", "n7");
            let c = Config::load(Some(Path::new("node.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.cluster.node_name, "n7");
            jail.set_env("STOCKRING_MAX_IN_FLIGHT", "0");
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }

    /// A cluster node refuses the default (or a short) cookie: with it, anyone who can reach
    /// the cluster port can join and propose control commands.
    #[test]
    fn a_cluster_node_refuses_a_guessable_cookie() {
        let node = |cookie: &str| Config {
            cluster: ClusterConfig {
                enabled: true,
                node_name: "n1".into(),
                seeds: vec!["n1@127.0.0.1:7100".into()],
                cookie: cookie.into(),
                ..ClusterConfig::default()
            },
            ..Config::default()
        };
        assert!(node("stockring").validate().is_err(), "the default cookie");
        assert!(node("short").validate().is_err(), "a short cookie");
        assert!(node("").validate().is_err(), "no cookie");
        assert!(node("a-long-enough-secret").validate().is_ok());
        // A single node needs none.
        assert!(Config::default().validate().is_ok());
    }

    /// The message cap leaves room for a full handoff page plus the one segment that can
    /// take it past `handoff_page_bytes`; with less, a key with a large segment never moves.
    #[test]
    fn the_message_cap_fits_a_handoff_page_and_a_segment() {
        let node = |max_message_bytes: usize, handoff_page_bytes: usize| Config {
            cluster: ClusterConfig {
                enabled: true,
                node_name: "n1".into(),
                seeds: vec!["n1@127.0.0.1:7100".into()],
                cookie: "a-long-enough-secret".into(),
                max_message_bytes,
                handoff_page_bytes,
                ..ClusterConfig::default()
            },
            ..Config::default()
        };
        let segment = crate::persistence::codec::SEGMENT_BYTES;
        let least = 64 * 1024 + 2 * segment;
        assert!(node(16 << 20, 1 << 20).validate().is_ok(), "the defaults");
        assert!(node(least + 4096, 4096).validate().is_ok());
        assert!(node(least + 4095, 4096).validate().is_err());
        // Half the cap for the page was the old rule: it let a 64 KiB cap through.
        assert!(node(64 * 1024, 32 * 1024).validate().is_err());
        assert!(node(1 << 20, 0).validate().is_err(), "an empty page");
    }
}
