//! Checking the actors' hash chains, and reading records back without repeats.

use super::{chain_name, AuditRecord, ChainHead, GENESIS};
use std::collections::BTreeMap;

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
}

/// Checks every actor's chain against itself and against its anchored head; returns the first
/// broken link of each broken chain. `records` are (KH_AUDIT stream sequence, record); `heads`
/// must have been read before them. Records older than `expiry_horizon_us` (now minus the
/// stream's retention; 0 when nothing expires) may be gone by expiry: a chain may begin after
/// them, and a head naming one may have no records left.
pub fn verify(
    records: &[(u64, AuditRecord)],
    heads: &[ChainHead],
    expiry_horizon_us: i64,
) -> Vec<BrokenLink> {
    let mut chains: BTreeMap<String, Vec<&(u64, AuditRecord)>> = BTreeMap::new();
    for r in records {
        chains.entry(chain_name(&r.1.actor, &r.1.chain)).or_default().push(r);
    }
    let heads: BTreeMap<String, &ChainHead> =
        heads.iter().map(|h| (chain_name(&h.actor, &h.chain), h)).collect();
    for name in heads.keys() {
        chains.entry(name.clone()).or_default();
    }
    let mut broken = Vec::new();
    for (name, mut chain) in chains {
        chain.sort_by_key(|(_, r)| r.seq);
        if let Some(b) = check_chain(&name, &chain, heads.get(&name).copied(), expiry_horizon_us) {
            broken.push(b);
        }
    }
    broken
}

/// The first broken link of one actor's chain (sorted by sequence), if any.
fn check_chain(
    actor: &str,
    chain: &[&(u64, AuditRecord)],
    head: Option<&ChainHead>,
    expiry_horizon_us: i64,
) -> Option<BrokenLink> {
    let expired = |t: i64| t != 0 && t < expiry_horizon_us;
    let link = |seq, stream_seq, problem| BrokenLink { actor: actor.to_string(), seq, stream_seq, problem };
    let mut prev: Option<&AuditRecord> = None;
    for (stream_seq, r) in chain.iter().map(|x| (&x.0, &x.1)) {
        // The chain's first record present may follow records removed by retention.
        let starts_after_expiry = prev.is_none() && r.seq > 1 && expired(r.prev_time_us);
        let expected_seq = prev.map_or(if starts_after_expiry { r.seq } else { 1 }, |p| p.seq + 1);
        // A record published again after a lost confirmation is stored twice, byte for byte.
        if prev == Some(r) {
            continue;
        }
        if prev.is_some_and(|p| p.seq == r.seq) {
            return Some(link(
                r.seq,
                Some(*stream_seq),
                format!("a second, different record {} (forged)", r.seq),
            ));
        }
        if r.seq != expected_seq {
            let problem = format!("record {expected_seq} is missing (next present is {})", r.seq);
            return Some(link(expected_seq, None, problem));
        }
        let problem = if r.hash != r.compute_hash() {
            Some("content does not match its hash (altered)")
        } else if !starts_after_expiry && r.prev_hash != prev.map_or(GENESIS, |p| p.hash.as_str()) {
            Some("does not link to its predecessor's hash")
        } else if head.is_some_and(|h| h.seq == r.seq && h.hash != r.hash) {
            Some("differs from the anchored chain head (chain rewritten)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Some(link(r.seq, Some(*stream_seq), problem.to_string()));
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
            Some(link(last + 1, None, problem))
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
}
