//! A department that never gives up: a background subscriber that acks everything it receives,
//! counts every delivery by event id, and reconnects whenever its Subscribe stream breaks (to
//! whichever registry endpoint the test last pointed it at).

use crate::bus::{delivered_id, OpenError, Subscriber};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a collector has seen.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Deliveries per event id.
    pub counts: HashMap<String, u32>,
    /// Ids in the order first received.
    pub first_seen: Vec<String>,
    /// All deliveries, duplicates included.
    pub deliveries: u64,
    /// Deliveries with attempt > 1.
    pub redelivered: u64,
    /// Ids delivered again with `attempt == 1`: silent duplicates, which the bus must never
    /// produce.
    pub unmarked_repeats: Vec<String>,
    /// Subscribe streams opened.
    pub sessions: u32,
    /// Why streams ended or failed to open (first few).
    pub breaks: Vec<String>,
}

impl Tally {
    /// Distinct ids received.
    pub fn unique(&self) -> usize {
        self.counts.len()
    }

    /// Ids received more than once, with their counts.
    pub fn duplicates(&self) -> Vec<(String, u32)> {
        let mut d: Vec<_> =
            self.counts.iter().filter(|(_, n)| **n > 1).map(|(i, n)| (i.clone(), *n)).collect();
        d.sort();
        d
    }

    /// Ids of `expected` never received.
    pub fn missing<'a>(&self, expected: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        expected.into_iter().filter(|id| !self.counts.contains_key(*id)).cloned().collect()
    }

    /// Received ids that are not in `expected`.
    pub fn unexpected(&self, expected: &HashSet<String>) -> Vec<String> {
        self.counts.keys().filter(|id| !expected.contains(*id)).cloned().collect()
    }

    /// One line for the test output.
    pub fn summary(&self) -> String {
        format!(
            "{} deliveries, {} distinct ids, {} ids delivered more than once, {} redeliveries (attempt > 1), {} unmarked repeats, {} sessions",
            self.deliveries,
            self.unique(),
            self.duplicates().len(),
            self.redelivered,
            self.unmarked_repeats.len(),
            self.sessions
        )
    }
}

/// A background subscriber; stops when dropped.
pub struct Collector {
    tally: Arc<Mutex<Tally>>,
    endpoint: watch::Sender<String>,
    task: JoinHandle<()>,
}

impl Collector {
    /// Starts collecting `department`'s subscription `name` from `endpoint`.
    pub fn start(endpoint: &str, department: &str, name: &str, max_in_flight: u32) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (endpoint_tx, endpoint_rx) = watch::channel(endpoint.to_string());
        let task = tokio::spawn(run(
            tally.clone(),
            endpoint_rx,
            department.to_string(),
            name.to_string(),
            max_in_flight,
        ));
        Self { tally, endpoint: endpoint_tx, task }
    }

    /// Where to reconnect the next time the stream breaks.
    pub fn reconnect_to(&self, endpoint: &str) {
        let _ = self.endpoint.send(endpoint.to_string());
    }

    /// A snapshot of what was seen.
    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Distinct ids so far.
    pub fn unique(&self) -> usize {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).counts.len()
    }

    /// Waits until at least `n` distinct ids arrived.
    pub async fn wait_unique(&self, n: usize, limit: Duration) {
        crate::wait::until(&format!("{n} distinct events at the subscriber"), limit, || async move {
            (self.unique() >= n).then_some(())
        })
        .await
    }

    /// Waits until every id in `expected` arrived; on timeout panics listing how many are missing.
    pub async fn wait_all(&self, expected: &[String], limit: Duration) -> Tally {
        self.try_wait_all(expected, limit).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until every id in `expected` arrived; on timeout says how many are missing.
    pub async fn try_wait_all(&self, expected: &[String], limit: Duration) -> Result<Tally, String> {
        let polled = tokio::time::timeout(limit, async {
            loop {
                {
                    let t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
                    if expected.iter().all(|id| t.counts.contains_key(id)) {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let t = self.tally();
        if polled.is_err() {
            let missing = t.missing(expected);
            return Err(format!(
                "after {limit:?}, {} of {} events never reached the subscriber (first: {:?}); {}; breaks: {:?}",
                missing.len(),
                expected.len(),
                missing.iter().take(3).collect::<Vec<_>>(),
                t.summary(),
                t.breaks
            ));
        }
        Ok(t)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    tally: Arc<Mutex<Tally>>,
    endpoint: watch::Receiver<String>,
    department: String,
    name: String,
    max_in_flight: u32,
) {
    let note = |t: &Arc<Mutex<Tally>>, why: String| {
        let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
        if t.breaks.len() < 20 {
            t.breaks.push(why);
        }
    };
    loop {
        let ep = endpoint.borrow().clone();
        let mut sub = match Subscriber::open(&ep, &department, &name, max_in_flight).await {
            Ok(s) => s,
            Err(e) => {
                if let OpenError::Status(s) = &e {
                    note(&tally, format!("open at {ep}: {}", s.message()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tally.lock().unwrap_or_else(|p| p.into_inner()).sessions += 1;
        loop {
            match sub.message().await {
                Ok(Some(d)) => {
                    let id = delivered_id(&d);
                    {
                        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                        t.deliveries += 1;
                        if d.attempt > 1 {
                            t.redelivered += 1;
                        }
                        let n = t.counts.entry(id.clone()).or_insert(0);
                        *n += 1;
                        if *n == 1 {
                            t.first_seen.push(id);
                        } else if d.attempt <= 1 {
                            t.unmarked_repeats.push(id);
                        }
                    }
                    sub.ack(vec![d.delivery_id]).await;
                }
                Ok(None) => {
                    note(&tally, format!("stream at {ep} ended"));
                    break;
                }
                Err(s) => {
                    note(&tally, format!("stream at {ep}: {:?} {}", s.code(), s.message()));
                    break;
                }
            }
        }
    }
}
