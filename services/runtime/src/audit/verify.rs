//! Checking the actors' hash chains, and reading records back without repeats.

use super::{chain_name, AuditRecord, ChainHead, GENESIS};
use std::collections::{BTreeMap, HashMap};

/// A broken link found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The broken chain: its actor, and which of the actor's chains when it has a start
    /// ([`chain_name`]).
    pub actor: String,
    /// Sequence number of the first record that does not check out.
    pub seq: u64,
    /// Stream sequence of that record in `KH_AUDIT`, when it exists.
    pub stream_seq: Option<u64>,
    /// What is wrong.
    pub problem: String,
    /// Whether only the chain's newest records are missing, behind its anchored head: what a
    /// replica a moment behind the head's also shows, so worth reading again before alarming.
    pub at_end: bool,
}

/// Audit records reduced to what [`verify_trail`] checks — about a tenth of their memory — in
/// the order they were read.
#[derive(Debug, Default)]
pub struct Trail {
    /// Chain names ([`chain_name`]), indexed by `Link::chain`.
    names: Vec<String>,
    /// actor → chain → index in `names`: found without building the name per record.
    index: HashMap<String, HashMap<String, usize>>,
    links: Vec<Link>,
}

/// One record as the chain check sees it.
#[derive(Debug, Clone, Copy)]
struct Link {
    chain: usize,
    /// Its content hashes to its `hash`.
    intact: bool,
    seq: u64,
    stream_seq: u64,
    prev_time_us: i64,
    /// `None` when the stored hash is not a SHA-256 in hex (so not intact either).
    hash: Option<[u8; 32]>,
    prev_hash: Prev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prev {
    Genesis,
    Hash([u8; 32]),
    Invalid,
}

fn digest(hex_text: &str) -> Option<[u8; 32]> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut d).ok().map(|()| d)
}

impl Trail {
    /// Adds a record read at `stream_seq` of `KH_AUDIT`.
    pub fn push(&mut self, stream_seq: u64, r: &AuditRecord) {
        let chain = self.chain_index(&r.actor, &r.chain);
        let prev_hash = match r.prev_hash.as_str() {
            GENESIS => Prev::Genesis,
            h => digest(h).map_or(Prev::Invalid, Prev::Hash),
        };
        self.links.push(Link {
            chain,
            intact: r.is_intact(),
            seq: r.seq,
            stream_seq,
            prev_time_us: r.prev_time_us,
            hash: digest(&r.hash),
            prev_hash,
        });
    }

    /// Records added.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The chains the records belong to ([`chain_name`]).
    pub fn chain_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    fn chain_index(&mut self, actor: &str, chain: &str) -> usize {
        if let Some(&i) = self.index.get(actor).and_then(|chains| chains.get(chain)) {
            return i;
        }
        let i = self.names.len();
        self.names.push(chain_name(actor, chain));
        self.index.entry(actor.to_string()).or_default().insert(chain.to_string(), i);
        i
    }
}

/// [`verify_trail`] over whole records.
pub fn verify(
    records: &[(u64, AuditRecord)],
    heads: &[ChainHead],
    expiry_horizon_us: i64,
) -> Vec<BrokenLink> {
    let mut trail = Trail::default();
    for (stream_seq, r) in records {
        trail.push(*stream_seq, r);
    }
    verify_trail(&trail, heads, expiry_horizon_us)
}

/// Checks every chain against itself and against its anchored head; returns the first broken
/// link of each broken chain. `heads` must have been read before the records. Records older
/// than `expiry_horizon_us` (now minus the stream's retention; 0 when nothing expires) may be
/// gone by expiry: a chain may begin after them, and a head naming one may have no records left.
pub fn verify_trail(trail: &Trail, heads: &[ChainHead], expiry_horizon_us: i64) -> Vec<BrokenLink> {
    let mut names: BTreeMap<&str, Option<usize>> =
        trail.names.iter().enumerate().map(|(i, n)| (n.as_str(), Some(i))).collect();
    let head_names: Vec<(String, &ChainHead)> =
        heads.iter().map(|h| (chain_name(&h.actor, &h.chain), h)).collect();
    for (name, _) in &head_names {
        names.entry(name.as_str()).or_insert(None);
    }
    let mut by_chain: Vec<Vec<&Link>> = vec![Vec::new(); trail.names.len()];
    for l in &trail.links {
        by_chain[l.chain].push(l);
    }
    let mut broken = Vec::new();
    for (name, index) in names {
        let mut chain = index.map(|i| std::mem::take(&mut by_chain[i])).unwrap_or_default();
        // Stable: repeats keep their read order.
        chain.sort_by_key(|l| l.seq);
        let head = head_names.iter().find(|(n, _)| n == name).map(|(_, h)| *h);
        if let Some(b) = check_chain(name, &chain, head, expiry_horizon_us) {
            broken.push(b);
        }
    }
    broken
}

/// The first broken link of one chain (sorted by sequence), if any.
fn check_chain(
    name: &str,
    chain: &[&Link],
    head: Option<&ChainHead>,
    expiry_horizon_us: i64,
) -> Option<BrokenLink> {
    let expired = |t: i64| t != 0 && t < expiry_horizon_us;
    let link = |seq, stream_seq, problem| BrokenLink {
        actor: name.to_string(),
        seq,
        stream_seq,
        problem,
        at_end: false,
    };
    let head_hash = head.map(|h| digest(&h.hash));
    let mut prev: Option<&Link> = None;
    for &r in chain {
        // The chain's first record present may follow records removed by retention.
        let starts_after_expiry = prev.is_none() && r.seq > 1 && expired(r.prev_time_us);
        let expected_seq = prev.map_or(if starts_after_expiry { r.seq } else { 1 }, |p| p.seq + 1);
        // A record published again after a lost confirmation is stored twice, byte for byte:
        // same sequence, same hash, both intact (the hash covers the whole content).
        if prev.is_some_and(|p| p.seq == r.seq && p.hash == r.hash && p.intact && r.intact) {
            continue;
        }
        if prev.is_some_and(|p| p.seq == r.seq) {
            let problem = format!("a second, different record {} (forged)", r.seq);
            return Some(link(r.seq, Some(r.stream_seq), problem));
        }
        if r.seq != expected_seq {
            let problem = format!("record {expected_seq} is missing (next present is {})", r.seq);
            return Some(link(expected_seq, None, problem));
        }
        let expected_prev = prev.map_or(Prev::Genesis, |p| p.hash.map_or(Prev::Invalid, Prev::Hash));
        let problem = if !r.intact {
            Some("content does not match its hash (altered)")
        } else if !starts_after_expiry && (r.prev_hash != expected_prev || r.prev_hash == Prev::Invalid) {
            Some("does not link to its predecessor's hash")
        } else if head.is_some_and(|h| h.seq == r.seq) && head_hash != Some(r.hash) {
            Some("differs from the anchored chain head (chain rewritten)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Some(link(r.seq, Some(r.stream_seq), problem.to_string()));
        }
        prev = Some(r);
    }
    let last = prev.map_or(0, |p| p.seq);
    match head {
        // Every record of an idle actor can have expired, its head's included.
        Some(h) if prev.is_none() && expired(h.record_time_us) => None,
        Some(h) if h.seq > last => {
            let problem = if h.seq == last + 1 {
                format!("record {} is missing at the end (it is the anchored head)", h.seq)
            } else {
                format!(
                    "records {}..{} are missing at the end (the anchored head is record {})",
                    last + 1,
                    h.seq,
                    h.seq
                )
            };
            Some(BrokenLink { at_end: true, ..link(last + 1, None, problem) })
        }
        _ => None,
    }
}

/// Drops repeated copies of a record (same actor, sequence and content) from records read
/// back: the writer publishes a record again when its confirmation is lost, without a
/// `Nats-Msg-Id`, so a record may be stored twice. Differing records are all kept.
pub fn drop_repeats(records: &mut Vec<(u64, AuditRecord)>) {
    let mut seen = std::collections::HashSet::new();
    records.retain(|(_, r)| seen.insert(r.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditRecord, ChainHead, GENESIS};

    fn chain(n: u64) -> Vec<(u64, AuditRecord)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    event_id: format!("e{seq}"),
                    hop: "validated".into(),
                    actor: "a".into(),
                    seq,
                    prev_hash: prev.clone(),
                    ..Default::default()
                };
                r.hash = r.compute_hash();
                prev = r.hash.clone();
                (seq + 100, r)
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert!(verify(&chain(5), &[], 0).is_empty());
    }

    #[test]
    fn a_record_stored_twice_is_one_link_and_is_read_back_once() {
        let mut c = chain(5);
        let again = (200, c[2].1.clone());
        c.push(again);
        assert!(verify(&c, &[], 0).is_empty(), "{:?}", verify(&c, &[], 0));
        drop_repeats(&mut c);
        assert_eq!(c.len(), 5);
    }

    #[test]
    fn a_second_different_record_under_one_sequence_is_named() {
        let mut c = chain(5);
        let mut forged = c[2].1.clone();
        forged.outcome = "error".into();
        forged.hash = forged.compute_hash();
        c.push((200, forged));
        let b = verify(&c, &[], 0);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!((b[0].seq, b[0].stream_seq), (3, Some(200)));
        assert!(b[0].problem.contains("second, different"), "{}", b[0].problem);
        drop_repeats(&mut c);
        assert_eq!(c.len(), 6, "differing records are all kept");
    }

    #[test]
    fn altered_record_is_named() {
        let mut c = chain(5);
        c[2].1.outcome = "ok-but-forged".into();
        let b = verify(&c, &[], 0);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].seq, b[0].stream_seq), (3, Some(103)));
        assert!(b[0].problem.contains("altered"));
    }

    #[test]
    fn deleted_record_is_named() {
        let mut c = chain(5);
        c.remove(1);
        let b = verify(&c, &[], 0);
        assert_eq!((b[0].seq, b[0].stream_seq), (2, None));
        assert!(b[0].problem.contains("missing"));
        assert!(!b[0].at_end, "a record missing between others is no replica's lag");
    }

    #[test]
    fn rehashed_forgery_breaks_the_next_link() {
        let mut c = chain(5);
        c[1].1.outcome = "forged".into();
        c[1].1.hash = c[1].1.compute_hash();
        let b = verify(&c, &[], 0);
        assert_eq!(b[0].seq, 3, "the successor no longer links to the forged record");
    }

    fn head_of(c: &[(u64, AuditRecord)], seq: u64) -> ChainHead {
        let r = &c[(seq - 1) as usize].1;
        ChainHead {
            actor: r.actor.clone(),
            chain: r.chain.clone(),
            seq,
            hash: r.hash.clone(),
            record_time_us: r.time_us,
            time_us: 0,
        }
    }

    #[test]
    fn a_chain_at_or_beyond_its_anchored_head_verifies() {
        let c = chain(5);
        assert!(verify(&c, &[head_of(&c, 5)], 0).is_empty());
        assert!(verify(&c, &[head_of(&c, 3)], 0).is_empty(), "records after the last anchoring are fine");
    }

    #[test]
    fn deleting_the_newest_records_is_named_against_the_anchored_head() {
        let mut c = chain(5);
        let head = head_of(&c, 5);
        c.truncate(3);
        assert!(verify(&c, &[], 0).is_empty(), "the chain alone cannot tell");
        let b = verify(&c, std::slice::from_ref(&head), 0);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!((b[0].seq, b[0].stream_seq), (4, None));
        assert!(b[0].problem.contains("records 4..5 are missing at the end"), "{}", b[0].problem);
        assert!(b[0].at_end, "what a replica behind the head's also shows: read again first");
        let b = verify(&[], &[head], 0);
        assert_eq!((b[0].actor.as_str(), b[0].seq), ("a", 1), "a chain deleted whole: {b:?}");
    }

    #[test]
    fn a_rewritten_chain_is_named_at_its_anchored_head() {
        let head = head_of(&chain(5), 4);
        // The whole chain re-forged consistently: every link checks out on its own.
        let mut c = chain(5);
        let mut prev = GENESIS.to_string();
        for (_, r) in c.iter_mut() {
            r.outcome = "rewritten".into();
            r.prev_hash = prev.clone();
            r.hash = r.compute_hash();
            prev = r.hash.clone();
        }
        assert!(verify(&c, &[], 0).is_empty(), "the chain alone cannot tell");
        let b = verify(&c, &[head], 0);
        assert_eq!((b[0].seq, b[0].stream_seq), (4, Some(104)), "{b:?}");
        assert!(b[0].problem.contains("anchored chain head"), "{}", b[0].problem);
    }

    /// A chain whose record `seq` was written at `seq * 1000` µs.
    fn timed_chain(n: u64) -> Vec<(u64, AuditRecord)> {
        let mut c = chain(n);
        let mut prev = (GENESIS.to_string(), 0);
        for (_, r) in c.iter_mut() {
            r.time_us = r.seq as i64 * 1000;
            r.prev_hash = prev.0.clone();
            r.prev_time_us = prev.1;
            r.hash = r.compute_hash();
            prev = (r.hash.clone(), r.time_us);
        }
        c
    }

    #[test]
    fn a_chain_whose_beginning_expired_verifies_and_an_early_deletion_does_not() {
        let mut c = timed_chain(5);
        c.drain(..2);
        assert!(verify(&c, &[], 2500).is_empty(), "records 1 and 2 are older than the horizon");
        let b = verify(&c, &[], 1500);
        assert_eq!((b[0].seq, b[0].stream_seq), (1, None), "record 2 cannot have expired yet: {b:?}");
        assert!(verify(&c, &[], 0)[0].problem.contains("record 1 is missing"));
    }

    #[test]
    fn a_head_whose_records_all_expired_is_not_a_deletion() {
        let c = timed_chain(5);
        let head = head_of(&c, 5);
        let head = ChainHead { record_time_us: 5000, ..head };
        assert!(verify(&[], std::slice::from_ref(&head), 6000).is_empty());
        assert_eq!(verify(&[], std::slice::from_ref(&head), 4000)[0].seq, 1, "not yet expired: deleted");
    }

    #[test]
    fn one_actor_with_two_chains_verifies_each_and_names_the_broken_one() {
        let with_chain = |name: &str| -> Vec<(u64, AuditRecord)> {
            let mut prev = GENESIS.to_string();
            chain(3)
                .into_iter()
                .map(|(q, mut r)| {
                    r.chain = name.into();
                    r.prev_hash = prev.clone();
                    r.hash = r.compute_hash();
                    prev = r.hash.clone();
                    (q + if name == "2" { 1000 } else { 0 }, r)
                })
                .collect()
        };
        let mut c = with_chain("1");
        c.extend(with_chain("2"));
        assert!(verify(&c, &[], 0).is_empty(), "same actor, sequences 1..3 twice: {:?}", verify(&c, &[], 0));
        c.retain(|(_, r)| !(r.chain == "2" && r.seq == 2));
        let b = verify(&c, &[], 0);
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!((b[0].actor.as_str(), b[0].seq), ("a [2]", 2));
    }

    #[test]
    fn a_copy_with_altered_content_but_the_original_hash_is_not_taken_for_a_repeat() {
        let mut c = chain(5);
        let mut altered = c[2].1.clone();
        altered.outcome = "error".into();
        c.push((200, altered));
        let b = verify(&c, &[], 0);
        assert_eq!((b[0].seq, b[0].stream_seq), (3, Some(200)), "{b:?}");
        assert!(b[0].problem.contains("second, different"), "{}", b[0].problem);
    }
}
