//! The trace index's tables: event id → the `KH_AUDIT` sequences of the records holding its
//! hops, one table per day of record time (so expiry drops whole tables), and how far into
//! `KH_AUDIT` the index has read.

use redb::{Database, MultimapTableDefinition, MultimapTableHandle, ReadableDatabase, TableDefinition};
use std::path::Path;

/// Errors of the index's embedded store.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file could not be opened or created.
    #[error("trace index {path}: {source}")]
    Open { path: String, source: redb::DatabaseError },
    /// No temporary file could be made for an index without a path (`TMPDIR`).
    #[error("trace index: no temporary file: {0}")]
    Temporary(std::io::Error),
    /// A read or write failed.
    #[error("trace index: {0}")]
    Store(#[from] redb::Error),
}

/// Progress: `applied` → the last `KH_AUDIT` sequence indexed.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const APPLIED: &str = "applied";
/// `stream_created` → the creation time of the `KH_AUDIT` indexed (Unix ns).
const CREATED: &str = "stream_created";
/// `reads` → which record forms the index was built reading ([`READS`]; 0 when absent).
const READS_KEY: &str = "reads";
/// The record forms this index reads: 1 was JSON only; 2 is protobuf and JSON (2026-12-03). An
/// index built by a reader of fewer forms skipped the records it could not read, so it is
/// rebuilt ([`Store::reads`]).
pub const READS: u64 = 2;
/// Tables of ids are named `ids.<day>`, day = record time in days since the Unix epoch.
const IDS_PREFIX: &str = "ids.";
const DAY_US: i64 = 86_400 * 1_000_000;

/// One `KH_AUDIT` record as the index sees it: its sequence, time and the events it names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// Stream sequence of the record.
    pub seq: u64,
    /// The record's time (Unix µs); says which day's table holds it.
    pub time_us: i64,
    /// The event ids of its hops (repeats allowed).
    pub event_ids: Vec<String>,
}

/// The embedded store.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the index file at `path`, or an unnamed temporary file when `path` is
    /// none (not memory: the index grows with the trail), with at most `cache_bytes` of cache.
    pub fn open(path: Option<&Path>, cache_bytes: usize) -> Result<Self, IndexError> {
        let mut builder = Database::builder();
        builder.set_cache_size(cache_bytes);
        let db = match path {
            Some(p) => builder
                .create(p)
                .map_err(|source| IndexError::Open { path: p.display().to_string(), source })?,
            None => {
                // Unlinked at once: the disk is given back when the process ends, however it ends.
                let file = tempfile::tempfile().map_err(IndexError::Temporary)?;
                let open = |source| IndexError::Open { path: "(temporary file)".into(), source };
                builder
                    .create_with_backend(redb::backends::FileBackend::new(file).map_err(open)?)
                    .map_err(open)?
            }
        };
        Ok(Self { db })
    }

    /// The last `KH_AUDIT` sequence indexed (0: none).
    pub fn applied(&self) -> Result<u64, redb::Error> {
        self.meta(APPLIED)
    }

    /// Indexes `records` and notes `applied` as read, in one transaction; `durable` makes the
    /// commit reach the disk (else it does with the next durable one: the index is rebuilt from
    /// the stream after a crash from wherever the last durable commit left it).
    pub fn apply(&self, records: &[Indexed], applied: u64, durable: bool) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        if !durable {
            // Only refused with persistent savepoints, which the index never makes.
            let _ = txn.set_durability(redb::Durability::None);
        }
        {
            let mut open_day: Option<(i64, redb::MultimapTable<&str, u64>)> = None;
            for r in records {
                let day = r.time_us.div_euclid(DAY_US);
                if open_day.as_ref().is_none_or(|(d, _)| *d != day) {
                    let name = format!("{IDS_PREFIX}{day}");
                    open_day = Some((day, txn.open_multimap_table(MultimapTableDefinition::new(&name))?));
                }
                if let Some((_, table)) = open_day.as_mut() {
                    for id in &r.event_ids {
                        table.insert(id.as_str(), r.seq)?;
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(APPLIED, applied)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The `KH_AUDIT` sequences of the records naming `event_id`, in order.
    pub fn lookup(&self, event_id: &str) -> Result<Vec<u64>, redb::Error> {
        let txn = self.db.begin_read()?;
        let mut seqs = Vec::new();
        for handle in txn.list_multimap_tables()? {
            if !handle.name().starts_with(IDS_PREFIX) {
                continue;
            }
            let table = txn.open_multimap_table(MultimapTableDefinition::<&str, u64>::new(handle.name()))?;
            for seq in table.get(event_id)? {
                seqs.push(seq?.value());
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        Ok(seqs)
    }

    /// Drops the tables of days wholly before `horizon_us` (Unix µs): their records have
    /// expired from `KH_AUDIT`. Returns how many were dropped.
    pub fn prune(&self, horizon_us: i64) -> Result<usize, redb::Error> {
        let horizon_day = horizon_us.div_euclid(DAY_US);
        let txn = self.db.begin_write()?;
        let old: Vec<String> = txn
            .list_multimap_tables()?
            .filter_map(|h| {
                let day: i64 = h.name().strip_prefix(IDS_PREFIX)?.parse().ok()?;
                (day < horizon_day).then(|| h.name().to_string())
            })
            .collect();
        for name in &old {
            txn.delete_multimap_table(MultimapTableDefinition::<&str, u64>::new(name))?;
        }
        txn.commit()?;
        Ok(old.len())
    }

    /// Which stream the index was built from: its creation time (Unix ns; 0 = none yet).
    pub fn stream_created(&self) -> Result<u64, redb::Error> {
        self.meta(CREATED)
    }

    /// Which record forms the index was built reading ([`READS`]; 0 for an index from before
    /// this was noted, which read JSON only).
    pub fn reads(&self) -> Result<u64, redb::Error> {
        self.meta(READS_KEY)
    }

    /// Forgets everything and notes `created` as the stream now indexed, read by this version
    /// ([`READS`]): the one the index was built from is gone (recreated, or another), or was
    /// read by a version that skipped records it could not read, so it is read from its start.
    pub fn reset_for(&self, created: u64) -> Result<(), redb::Error> {
        self.prune(i64::MAX)?;
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(APPLIED, 0)?;
            meta.insert(CREATED, created)?;
            meta.insert(READS_KEY, READS)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// A number of the `meta` table (0 when absent).
    fn meta(&self, key: &str) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, day: i64, ids: &[&str]) -> Indexed {
        Indexed { seq, time_us: day * DAY_US + 5, event_ids: ids.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn ids_map_to_the_sequences_of_every_record_naming_them_across_days() {
        let s = Store::open(None, 1 << 20).expect("opens");
        assert_eq!(s.applied().expect("reads"), 0);
        s.apply(&[rec(1, 10, &["a", "b"]), rec(2, 10, &["a", "a"])], 2, false).expect("applies");
        s.apply(&[rec(7, 11, &["a"]), rec(8, 11, &["c"])], 9, true).expect("applies");
        assert_eq!(s.lookup("a").expect("reads"), [1, 2, 7]);
        assert_eq!(s.lookup("b").expect("reads"), [1]);
        assert_eq!(s.lookup("zzz").expect("reads"), Vec::<u64>::new());
        assert_eq!(s.applied().expect("reads"), 9);
    }

    #[test]
    fn pruning_drops_whole_days_before_the_horizon_and_keeps_the_rest() {
        let s = Store::open(None, 1 << 20).expect("opens");
        s.apply(&[rec(1, 10, &["a"]), rec(2, 11, &["a"]), rec(3, 12, &["b"])], 3, false).expect("applies");
        // A horizon inside day 11 keeps day 11 (some of its records are younger than it).
        assert_eq!(s.prune(11 * DAY_US + 3).expect("prunes"), 1);
        assert_eq!(s.lookup("a").expect("reads"), [2]);
        assert_eq!(s.lookup("b").expect("reads"), [3]);
        assert_eq!(s.stream_created().expect("reads"), 0);
        assert_eq!(s.reads().expect("reads"), 0, "an index from before the forms were noted");
        s.reset_for(77).expect("resets");
        assert_eq!(s.reads().expect("reads"), READS);
        assert_eq!(s.lookup("b").expect("reads"), Vec::<u64>::new());
        assert_eq!(s.applied().expect("reads"), 0);
        assert_eq!(s.stream_created().expect("reads"), 77);
    }

    #[test]
    fn a_file_index_keeps_what_was_committed_durably_across_a_reopen() {
        let dir = std::env::temp_dir().join(format!("kh-index-{}-{}", std::process::id(), line!()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("trace.redb");
        {
            let s = Store::open(Some(&path), 1 << 20).expect("opens");
            s.apply(&[rec(4, 3, &["x"])], 4, true).expect("applies");
        }
        let s = Store::open(Some(&path), 1 << 20).expect("reopens");
        assert_eq!(s.applied().expect("reads"), 4);
        assert_eq!(s.lookup("x").expect("reads"), [4]);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
