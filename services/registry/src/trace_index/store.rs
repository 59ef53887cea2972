//! The trace index's tables: (event key, `KH_AUDIT` sequence) for every record holding a hop
//! of the event, one table per day of record time (so expiry drops whole tables), and how far
//! into `KH_AUDIT` the index has read.

use redb::{
    Database, MultimapTableDefinition, MultimapTableHandle, ReadableDatabase, TableDefinition, TableHandle,
};
use sha2::{Digest, Sha256};
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
/// `reads` → which build of the index this is ([`BUILD`]; 0 when absent). Named when the
/// builds differed only in the record forms they read.
const BUILD_KEY: &str = "reads";
/// This build of the index: 1 read JSON records only; 2 read protobuf and JSON, in multimap
/// tables `ids.<day>` keyed by the id string; 3 (2026-12-03) keys tables `hops.<day>` by
/// (event key, sequence), where inserting costs ≈ 0.6 µs per hop instead of ≈ 1.1. An index
/// of an older build is rebuilt from the stream ([`Store::build`]): builds before 2 skipped
/// the records they could not read, and 2's tables are not read any more.
pub const BUILD: u64 = 3;
/// Tables are named `hops.<day>`, day = record time in days since the Unix epoch.
const HOPS_PREFIX: &str = "hops.";
/// Build 2's multimap tables (`ids.<day>`), dropped when the index is rebuilt.
const OLD_IDS_PREFIX: &str = "ids.";
const DAY_US: i64 = 86_400 * 1_000_000;

/// A day's table, open for writing.
type DayTable<'txn> = redb::Table<'txn, (u128, u64), ()>;

/// The day's table `name`: (event key, `KH_AUDIT` sequence) → nothing.
fn hops(name: &str) -> TableDefinition<'_, (u128, u64), ()> {
    TableDefinition::new(name)
}

/// The index key of an event id: a UUID's 128 bits, or for any other id (such as a ULID) the
/// first 128 bits of its SHA-256. Two ids sharing a key only make a lookup read a record more:
/// readers keep the hops of the id they asked for.
pub fn event_key(id: &str) -> u128 {
    match uuid::Uuid::try_parse(id) {
        Ok(u) => u.as_u128(),
        Err(_) => {
            let digest = Sha256::digest(id.as_bytes());
            let mut first = [0u8; 16];
            first.copy_from_slice(&digest[..16]);
            u128::from_be_bytes(first)
        }
    }
}

/// One `KH_AUDIT` record as the index sees it: its sequence, time and the events it names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// Stream sequence of the record.
    pub seq: u64,
    /// The record's time (Unix µs); says which day's table holds it.
    pub time_us: i64,
    /// The [`event_key`]s of its hops' events (repeats allowed).
    pub event_keys: Vec<u128>,
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
            let mut open_day: Option<(i64, DayTable)> = None;
            for r in records {
                let day = r.time_us.div_euclid(DAY_US);
                if open_day.as_ref().is_none_or(|(d, _)| *d != day) {
                    let name = format!("{HOPS_PREFIX}{day}");
                    open_day = Some((day, txn.open_table(hops(&name))?));
                }
                if let Some((_, table)) = open_day.as_mut() {
                    for key in &r.event_keys {
                        table.insert((*key, r.seq), ())?;
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(APPLIED, applied)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The `KH_AUDIT` sequences of the records naming `event_id` (or an id sharing its
    /// [`event_key`]), in order.
    pub fn lookup(&self, event_id: &str) -> Result<Vec<u64>, redb::Error> {
        let key = event_key(event_id);
        let txn = self.db.begin_read()?;
        let mut seqs = Vec::new();
        for handle in txn.list_tables()? {
            if !handle.name().starts_with(HOPS_PREFIX) {
                continue;
            }
            let table = txn.open_table(hops(handle.name()))?;
            for entry in table.range((key, 0)..=(key, u64::MAX))? {
                seqs.push(entry?.0.value().1);
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
            .list_tables()?
            .filter_map(|h| {
                let day: i64 = h.name().strip_prefix(HOPS_PREFIX)?.parse().ok()?;
                (day < horizon_day).then(|| h.name().to_string())
            })
            .collect();
        for name in &old {
            txn.delete_table(hops(name))?;
        }
        txn.commit()?;
        Ok(old.len())
    }

    /// Which stream the index was built from: its creation time (Unix ns; 0 = none yet).
    pub fn stream_created(&self) -> Result<u64, redb::Error> {
        self.meta(CREATED)
    }

    /// Which build of the index this is ([`BUILD`]; 0 for an index from before this was
    /// noted, which read JSON records only).
    pub fn build(&self) -> Result<u64, redb::Error> {
        self.meta(BUILD_KEY)
    }

    /// Forgets everything and notes `created` as the stream now indexed, by this build
    /// ([`BUILD`]): the one the index was built from is gone (recreated, or another), or the
    /// index is of an older build, so the stream is read from its start.
    pub fn reset_for(&self, created: u64) -> Result<(), redb::Error> {
        self.prune(i64::MAX)?;
        let txn = self.db.begin_write()?;
        // An older build's tables.
        let old: Vec<String> = txn
            .list_multimap_tables()?
            .filter(|h| h.name().starts_with(OLD_IDS_PREFIX))
            .map(|h| h.name().to_string())
            .collect();
        for name in &old {
            txn.delete_multimap_table(MultimapTableDefinition::<&str, u64>::new(name))?;
        }
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(APPLIED, 0)?;
            meta.insert(CREATED, created)?;
            meta.insert(BUILD_KEY, BUILD)?;
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
        Indexed { seq, time_us: day * DAY_US + 5, event_keys: ids.iter().map(|s| event_key(s)).collect() }
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
        assert_eq!(s.build().expect("reads"), 0, "an index from before the builds were noted");
        s.reset_for(77).expect("resets");
        assert_eq!(s.build().expect("reads"), BUILD);
        assert_eq!(s.lookup("b").expect("reads"), Vec::<u64>::new());
        assert_eq!(s.applied().expect("reads"), 0);
        assert_eq!(s.stream_created().expect("reads"), 77);
    }

    #[test]
    fn uuids_are_keyed_by_their_bits_and_other_ids_by_a_digest() {
        let uuid = "0190f5a4-7c3e-7b1a-9d2e-3f4a5b6c7d8e";
        assert_eq!(event_key(uuid), 0x0190f5a4_7c3e_7b1a_9d2e_3f4a5b6c7d8e);
        let ulid = "01HZX3K9Q8W6V5T4R3P2N1M0JA";
        assert_ne!(event_key(ulid), event_key("01HZX3K9Q8W6V5T4R3P2N1M0JB"));
        let s = Store::open(None, 1 << 20).expect("opens");
        s.apply(&[rec(1, 10, &[uuid, ulid]), rec(2, 10, &[ulid])], 2, false).expect("applies");
        assert_eq!(s.lookup(uuid).expect("reads"), [1]);
        assert_eq!(s.lookup(ulid).expect("reads"), [1, 2]);
    }

    #[test]
    fn rebuilding_drops_the_tables_of_the_build_keyed_by_id_strings() {
        let s = Store::open(None, 1 << 20).expect("opens");
        {
            // What build 2 left: a multimap table per day, and its build number.
            let txn = s.db.begin_write().expect("write");
            {
                let mut old = txn
                    .open_multimap_table(MultimapTableDefinition::<&str, u64>::new("ids.20000"))
                    .expect("old table");
                old.insert("e1", 5).expect("insert");
                txn.open_table(META).expect("meta").insert(BUILD_KEY, 2).expect("meta");
            }
            txn.commit().expect("commit");
        }
        assert_eq!(s.build().expect("reads"), 2);
        s.reset_for(1).expect("resets");
        assert_eq!(s.build().expect("reads"), BUILD);
        let txn = s.db.begin_read().expect("read");
        assert_eq!(txn.list_multimap_tables().expect("tables").count(), 0, "build 2's tables are gone");
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
