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
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `stockring=debug`.
    pub log: String,
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
            log: "info".into(),
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
    "log",
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
            FIELDS.iter().any(|f| k.as_str().eq_ignore_ascii_case(f))
        };
        fig = fig.merge(Env::prefixed("STOCKRING_").filter(known).lowercase(true));
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
        if self.idle_passivate_ms < 10 {
            return bad("idle_passivate_ms must be at least 10");
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
            jail.set_env("STOCKRING_MAX_IN_FLIGHT", "0");
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }
}
