//! A key on disk (schema v5 on): a small snapshot row and the key's remembered records in
//! immutable segments.
//!
//! - `snapshots(key, version, state, hash, changed, gen, segments, gen_records, gen_bytes)`:
//!   `state` is the key's scalars (`StockScalars`: counts, version, clock, forgotten horizon),
//!   a few dozen bytes whatever the key has seen; the other columns say where its records are:
//!   segments `0..segments` of generation `gen`, holding `gen_records` record states in
//!   `gen_bytes` bytes.
//! - `segments(key, gen, seg, records, hash, changed)`: record states (reservations, held or
//!   finished, and op outcomes), each segment about `codec::SEGMENT_BYTES` at most, never
//!   changed once written.
//!
//! A key is its snapshot plus its records read in segment order, a later state of an id
//! replacing an earlier one and a finished record older than the forgotten horizon dropped
//! (`StockState::from_log`), plus its journal tail. A snapshot write appends one segment with
//! the records the events since the last write touched (`RecordWrite::Append`), so its cost
//! follows the events, not the ids the key remembers; once the stored record states are
//! mostly dead (replaced by later states, or forgotten), it writes every live record as a new
//! generation instead and deletes the old one (`RecordWrite::Rewrite`): amortized, each
//! record state is rewritten at most about once.

use super::codec;
use super::store::{LoadedKey, StorageError};
use super::tails::Row;
use crate::domain::ledger::{RecordKey, StockState};
use crate::domain::placement::stored_hash;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeSet;

/// Where a key's records are: segments `0..count` of generation `gen`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentLog {
    pub gen: u64,
    pub count: u64,
    /// Record states stored in this generation (live or dead).
    pub records: u64,
    pub bytes: u64,
}

/// The records part of a snapshot write.
#[derive(Debug)]
pub enum RecordWrite {
    /// Segments appended to the key's current generation: the records changed since its
    /// last write.
    Append {
        segments: Vec<Vec<u8>>,
        records: u64,
    },
    /// Every live record, as a new generation; the old one is deleted.
    Rewrite {
        segments: Vec<Vec<u8>>,
        records: u64,
    },
}

/// What the writer stores for a key's snapshot.
#[derive(Debug)]
pub struct KeyWrite {
    pub scalars: Vec<u8>,
    pub records: RecordWrite,
}

/// A generation is rewritten once it stores more than twice the live records plus this many.
const REWRITE_SLACK: u64 = 64;

impl KeyWrite {
    /// The write of `state`: the `touched` records appended to the `stored_records` the key's
    /// generation holds, or, once that would leave the generation more than half dead, every
    /// live record as a new one.
    pub fn of<'a>(
        state: &StockState,
        touched: impl IntoIterator<Item = &'a RecordKey>,
        stored_records: u64,
    ) -> Self {
        let scalars = codec::encode_scalars(&state.scalars());
        let appended: Vec<_> = touched.into_iter().map(|k| state.record(k)).collect();
        let live = state.record_count();
        let after = stored_records + appended.len() as u64;
        let records = if after > 2 * live + REWRITE_SLACK {
            RecordWrite::Rewrite {
                segments: codec::encode_segments(state.records()),
                records: live,
            }
        } else {
            RecordWrite::Append {
                records: appended.len() as u64,
                segments: codec::encode_segments(appended),
            }
        };
        Self { scalars, records }
    }

    /// The whole state as a new generation.
    pub fn full(state: &StockState) -> Self {
        Self {
            scalars: codec::encode_scalars(&state.scalars()),
            records: RecordWrite::Rewrite {
                segments: codec::encode_segments(state.records()),
                records: state.record_count(),
            },
        }
    }

    /// Record states this write stores (what the key's generation grows by, or holds after
    /// a rewrite).
    pub fn records(&self) -> u64 {
        match &self.records {
            RecordWrite::Append { records, .. } | RecordWrite::Rewrite { records, .. } => *records,
        }
    }

    pub fn rewrites(&self) -> bool {
        matches!(self.records, RecordWrite::Rewrite { .. })
    }
}

/// A key's snapshot row.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub version: u64,
    pub scalars: Vec<u8>,
    pub log: SegmentLog,
    /// Its change number: a new one with every write of the row.
    pub changed: i64,
}

pub fn read_key(conn: &Connection, key: &str) -> Result<Option<StoredKey>, StorageError> {
    Ok(conn
        .prepare_cached(
            "SELECT version, state, changed, gen, segments, gen_records, gen_bytes
             FROM snapshots WHERE key = ?1",
        )?
        .query_row(params![key], |r| {
            Ok(StoredKey {
                version: r.get::<_, i64>(0)? as u64,
                scalars: r.get(1)?,
                changed: r.get(2)?,
                log: SegmentLog {
                    gen: r.get::<_, i64>(3)? as u64,
                    count: r.get::<_, i64>(4)? as u64,
                    records: r.get::<_, i64>(5)? as u64,
                    bytes: r.get::<_, i64>(6)? as u64,
                },
            })
        })
        .optional()?)
}

/// The stored size of a key's records (0: no snapshot), without reading them.
pub fn stored_bytes(conn: &Connection, key: &str) -> Result<Option<u64>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT gen_bytes FROM snapshots WHERE key = ?1")?
        .query_row(params![key], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|b| b as u64))
}

/// The segments `log` names, in order; a missing one is corruption.
pub fn read_segments(
    conn: &Connection,
    key: &str,
    log: &SegmentLog,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seg, records FROM segments WHERE key = ?1 AND gen = ?2 AND seg < ?3 ORDER BY seg",
    )?;
    let rows = stmt.query_map(params![key, log.gen as i64, log.count as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::with_capacity(log.count as usize);
    for row in rows {
        let (seg, blob) = row?;
        if seg != out.len() as i64 {
            break;
        }
        out.push(blob);
    }
    if out.len() as u64 != log.count {
        return Err(StorageError::MissingSegment {
            key: key.to_owned(),
            gen: log.gen,
            seg: out.len() as u64,
        });
    }
    Ok(out)
}

/// Rebuilds one key from its stored snapshot and segments (`None`: it has none) and its
/// committed journal rows past the snapshot, checking that no version is missing.
pub fn rebuild(
    key: &str,
    stored: Option<(&StoredKey, &[Vec<u8>])>,
    rows: &[Row],
) -> Result<LoadedKey, StorageError> {
    let corrupt = |source| StorageError::Corrupt {
        what: key.to_owned(),
        source,
    };
    let (mut state, stored_records) = match stored {
        Some((snapshot, segments)) => {
            let scalars = codec::decode_scalars(&snapshot.scalars).map_err(corrupt)?;
            let mut records = Vec::new();
            for blob in segments {
                records.extend(codec::decode_segment(blob).map_err(corrupt)?);
            }
            let state = StockState::from_log(scalars, records)
                .map_err(|e| corrupt(codec::CodecError::Invalid(e.0)))?;
            (state, snapshot.log.records)
        }
        None => (StockState::default(), 0),
    };
    let mut tail_events = 0;
    let mut touched = BTreeSet::new();
    let from_snapshot = state.version();
    for row in rows.iter().filter(|r| r.version > from_snapshot) {
        let expected = state.version() + 1;
        if row.version != expected {
            return Err(StorageError::JournalGap {
                key: key.to_owned(),
                expected,
                found: row.version,
            });
        }
        let event = codec::decode_event(&row.event).map_err(corrupt)?;
        event.touched(|k| {
            touched.insert(k);
        });
        state.apply_event(&event);
        tail_events += 1;
    }
    Ok(LoadedKey {
        state,
        tail_events,
        touched,
        stored_records,
    })
}

/// Loads one key: snapshot, segments, then `rows` (the committed rows the tail index holds).
pub fn load_key(conn: &Connection, key: &str, rows: &[Row]) -> Result<LoadedKey, StorageError> {
    let Some(snapshot) = read_key(conn, key)? else {
        return rebuild(key, None, rows);
    };
    let segments = read_segments(conn, key, &snapshot.log)?;
    rebuild(key, Some((&snapshot, &segments)), rows)
}

/// Stores a snapshot of `key` at `version` unless a newer one is stored (then `Ok(false)`).
/// Every row written gets the next change number from `changed` (what a handoff resends).
pub fn put_key(
    tx: &Connection,
    key: &str,
    version: u64,
    write: &KeyWrite,
    changed: &mut i64,
) -> Result<bool, StorageError> {
    let stored = read_key(tx, key)?;
    if stored.as_ref().is_some_and(|s| s.version > version) {
        return Ok(false);
    }
    let old = stored.map(|s| s.log).unwrap_or_default();
    let (mut log, segments) = match &write.records {
        RecordWrite::Append { segments, records } => (
            SegmentLog {
                records: old.records + records,
                ..old
            },
            segments,
        ),
        RecordWrite::Rewrite { segments, records } => {
            tx.prepare_cached("DELETE FROM segments WHERE key = ?1 AND gen <= ?2")?
                .execute(params![key, old.gen as i64])?;
            let fresh = SegmentLog {
                gen: old.gen + 1,
                count: 0,
                records: *records,
                bytes: 0,
            };
            (fresh, segments)
        }
    };
    let hash = stored_hash(key);
    for blob in segments {
        *changed += 1;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO segments (key, gen, seg, records, hash, changed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            key,
            log.gen as i64,
            log.count as i64,
            blob,
            hash,
            *changed
        ])?;
        log.count += 1;
        log.bytes += blob.len() as u64;
    }
    *changed += 1;
    put_row(tx, key, version, &write.scalars, &log, *changed)?;
    Ok(true)
}

/// Writes a key's snapshot row as given.
pub fn put_row(
    tx: &Connection,
    key: &str,
    version: u64,
    scalars: &[u8],
    log: &SegmentLog,
    changed: i64,
) -> Result<(), StorageError> {
    tx.prepare_cached(
        "INSERT INTO snapshots
             (key, version, state, hash, changed, gen, segments, gen_records, gen_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(key) DO UPDATE SET version = excluded.version, state = excluded.state,
             changed = excluded.changed, gen = excluded.gen, segments = excluded.segments,
             gen_records = excluded.gen_records, gen_bytes = excluded.gen_bytes",
    )?
    .execute(params![
        key,
        version as i64,
        scalars,
        stored_hash(key),
        changed,
        log.gen as i64,
        log.count as i64,
        log.records as i64,
        log.bytes as i64
    ])?;
    Ok(())
}
