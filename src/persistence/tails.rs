//! Which journal rows each key still needs: the rows written after the key's latest snapshot.
//!
//! The journal is append-only (rowid order), so a group commit writes a few sequential pages
//! however many keys it touches; no per-key B-tree is kept on disk. This index replaces it: it
//! lives in the writer thread, is rebuilt from the journal and snapshot versions on start, and
//! holds each live row's event bytes, so a key load or a compaction replays the tail from memory
//! instead of reading rows back one lookup each (those reads were ~5% of the node's CPU under a
//! uniform load). It costs the live rows' bytes: the compaction window bounds them. It also
//! gives the trim horizon: every journal row below the oldest live row of any key is covered by
//! a snapshot and can be deleted.

use crate::domain::placement::stored_hash;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One journal row of a key, as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub seq: i64,
    /// The key's version after the event.
    pub version: u64,
    /// The event as stored in the journal (`codec::encode_event`).
    pub event: Box<[u8]>,
}

#[derive(Default)]
pub struct Tails {
    /// Hashed, not ordered: it is looked up on every appended event, and comparing key names
    /// down a tree was a visible share of the writer's time.
    by_key: HashMap<Arc<str>, Vec<Row>>,
    /// The same keys in name order, for prefix lookups; changes only when a key gains or loses
    /// its tail.
    by_name: BTreeSet<Arc<str>>,
    /// (first live rowid, key) of every key with a tail: the oldest tails first.
    by_age: BTreeSet<(i64, Arc<str>)>,
    /// (placement hash, key) of every key with a tail: a vnode's keys are one hash range.
    by_hash: BTreeSet<(i64, Arc<str>)>,
    rows: u64,
}

impl Tails {
    /// Rows appended for `key`, in version order, after every row already recorded for it.
    pub fn append(&mut self, key: &Arc<str>, rows: impl IntoIterator<Item = Row>) {
        let tail = self.by_key.entry(key.clone()).or_default();
        let was_empty = tail.is_empty();
        for row in rows {
            if let Some(last) = tail.last() {
                assert!(
                    row.seq > last.seq && row.version == last.version + 1,
                    "journal rows of {key} out of order"
                );
            }
            tail.push(row);
            self.rows += 1;
        }
        if was_empty {
            if let Some(first) = tail.first() {
                self.by_age.insert((first.seq, key.clone()));
                self.by_hash.insert((stored_hash(key), key.clone()));
                self.by_name.insert(key.clone());
            }
        }
    }

    /// A snapshot of `key` at `version` covers its rows up to that version.
    pub fn covered(&mut self, key: &str, version: u64) {
        let Some((k, mut tail)) = self.by_key.remove_entry(key) else {
            return;
        };
        let first = tail[0].seq;
        let drop = tail.partition_point(|r| r.version <= version);
        if drop > 0 {
            tail.drain(..drop);
            self.rows -= drop as u64;
            self.by_age.remove(&(first, k.clone()));
            if let Some(next) = tail.first() {
                self.by_age.insert((next.seq, k.clone()));
            }
        }
        if tail.is_empty() {
            self.by_name.remove(&k);
            self.by_hash.remove(&(stored_hash(&k), k));
        } else {
            self.by_key.insert(k, tail);
        }
    }

    /// Keys with live rows whose placement hash (`stored_hash`) is in `[lo, hi)`.
    pub fn keys_in_hash_range(&self, (lo, hi): (i64, Option<i64>)) -> Vec<Arc<str>> {
        let from: Arc<str> = Arc::from("");
        self.by_hash
            .range((lo, from)..)
            .take_while(|(h, _)| hi.is_none_or(|hi| *h < hi))
            .map(|(_, k)| k.clone())
            .collect()
    }

    pub fn rows_of(&self, key: &str) -> &[Row] {
        self.by_key.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Keys whose oldest live row is below `rowid`, oldest first, at most `limit`, leaving out
    /// those `skip` names.
    pub fn older_than(
        &self,
        rowid: i64,
        limit: usize,
        skip: impl Fn(&str) -> bool,
    ) -> Vec<Arc<str>> {
        self.by_age
            .iter()
            .take_while(|(first, _)| *first < rowid)
            .filter(|(_, k)| !skip(k))
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Every journal row below this rowid is covered by a snapshot.
    pub fn trim_horizon(&self, next_rowid: i64) -> i64 {
        self.by_age.first().map_or(next_rowid, |(first, _)| *first)
    }

    /// Keys with live rows whose name starts with `prefix`.
    pub fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        self.by_name
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |k| k.starts_with(prefix))
    }

    pub fn live_rows(&self) -> u64 {
        self.rows
    }

    pub fn keys(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rows: &[(i64, u64)]) -> Vec<Row> {
        rows.iter()
            .map(|&(seq, version)| Row {
                seq,
                version,
                event: Box::default(),
            })
            .collect()
    }

    #[test]
    fn snapshots_cover_rows_and_move_the_horizon() {
        let (a, b): (Arc<str>, Arc<str>) = ("s/a".into(), "s/b".into());
        let mut t = Tails::default();
        t.append(&a, rows(&[(1, 1), (3, 2)]));
        t.append(&b, rows(&[(2, 1)]));
        t.append(&a, rows(&[(4, 3)]));
        assert_eq!(t.trim_horizon(5), 1);
        assert_eq!(t.older_than(3, 10, |_| false), vec![a.clone(), b.clone()]);
        assert_eq!(t.older_than(3, 10, |k| k == "s/a"), vec![b.clone()]);
        t.covered("s/a", 2);
        assert_eq!(t.rows_of("s/a"), rows(&[(4, 3)]));
        assert_eq!(t.trim_horizon(5), 2);
        t.covered("s/b", 1);
        t.covered("s/a", 3);
        assert_eq!(t.trim_horizon(5), 5);
        assert_eq!((t.live_rows(), t.keys()), (0, 0));
    }

    #[test]
    fn prefix_lookup_stays_within_the_sku() {
        let mut t = Tails::default();
        for (i, k) in ["s1/w1", "s1/w2", "s10/w1", "s2/w1"].iter().enumerate() {
            t.append(&Arc::from(*k), rows(&[(i as i64 + 1, 1)]));
        }
        let found: Vec<&str> = t.keys_with_prefix("s1/").map(|k| &**k).collect();
        assert_eq!(found, ["s1/w1", "s1/w2"]);
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn rows_must_come_in_version_order() {
        let mut t = Tails::default();
        let k: Arc<str> = "k".into();
        t.append(&k, rows(&[(1, 1), (2, 3)]));
    }
}
