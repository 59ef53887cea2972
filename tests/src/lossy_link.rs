//! A TCP relay in front of a NATS server that loses one publish on the way in: what happens to
//! a message a client had written when its connection broke (async-nats drops its write buffer
//! and sends what was still queued on the next connection), made to happen on demand. Every
//! other byte passes unchanged in both directions. It notes every publish to the subjects it
//! watches (reply subject and message id), so a test can see how each was sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The relay; stops with the test's runtime.
pub struct LossyLink {
    port: u16,
    lost_line: Arc<std::sync::Mutex<Option<String>>>,
    seen: Arc<std::sync::Mutex<Vec<Publish>>>,
}

/// A publish to the watched subjects, relayed or lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Its reply subject (empty without one).
    pub reply: String,
    /// Its `Nats-Msg-Id` header, if any.
    pub msg_id: Option<String>,
    /// Whether the relay lost it.
    pub lost: bool,
}

/// Which publish to lose, counted over every connection through the relay.
struct Target {
    prefix: String,
    nth: usize,
    seen: AtomicUsize,
}

impl LossyLink {
    /// Relays to the NATS server at 127.0.0.1:`upstream`, losing the `nth` (from 1) `PUB` or
    /// `HPUB` whose subject starts with `prefix`.
    pub async fn start(upstream: u16, prefix: &str, nth: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let lost_line = Arc::new(std::sync::Mutex::new(None));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let target = Arc::new(Target { prefix: prefix.to_string(), nth, seen: AtomicUsize::new(0) });
        let noted = Noted { lost_line: lost_line.clone(), seen: seen.clone() };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                tokio::spawn(relay(client, server, target.clone(), noted.clone()));
            }
        });
        Self { port, lost_line, seen }
    }

    /// `nats://` URL of the relay.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// How many publishes it has lost (0 or 1).
    pub fn lost(&self) -> usize {
        self.seen.lock().map(|s| s.iter().filter(|p| p.lost).count()).unwrap_or_default()
    }

    /// The protocol line of the publish it lost (`HPUB <subject> <reply> …`), once it has
    /// lost one.
    pub fn lost_line(&self) -> Option<String> {
        self.lost_line.lock().ok()?.clone()
    }

    /// Every publish to the watched subjects so far, in the order the relay read them.
    pub fn publishes(&self) -> Vec<Publish> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What the relay notes, shared by its connections.
#[derive(Clone)]
struct Noted {
    lost_line: Arc<std::sync::Mutex<Option<String>>>,
    seen: Arc<std::sync::Mutex<Vec<Publish>>>,
}

/// The `Nats-Msg-Id` in an `HPUB`'s header block.
fn msg_id(header_block: &[u8]) -> Option<String> {
    String::from_utf8_lossy(header_block).split("\r\n").find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("Nats-Msg-Id").then(|| value.trim().to_string())
    })
}

async fn relay(client: TcpStream, server: TcpStream, target: Arc<Target>, noted: Noted) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    // Client to server: whole protocol operations, so one can be left out.
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::with_capacity(buf.len());
        let mut at = 0;
        while let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n").map(|p| at + p) {
            let line = &buf[at..end];
            // Fields are separated by spaces or tabs (the protocol allows either).
            let words: Vec<&[u8]> =
                line.split(|b| *b == b' ' || *b == b'\t').filter(|w| !w.is_empty()).collect();
            let is_pub = matches!(words.first(), Some(op) if op.eq_ignore_ascii_case(b"PUB") || op.eq_ignore_ascii_case(b"HPUB"));
            if !is_pub {
                out.extend_from_slice(&buf[at..end + 2]);
                at = end + 2;
                continue;
            }
            // The last word is the total size of what follows the line (headers and payload);
            // for HPUB the one before it the header block's.
            let number = |w: Option<&&[u8]>| -> usize {
                w.and_then(|w| std::str::from_utf8(w).ok()).and_then(|w| w.parse().ok()).unwrap_or_else(
                    || panic!("lossy link: unreadable sizes in {:?}", String::from_utf8_lossy(line)),
                )
            };
            let size = number(words.last());
            let whole = end + 2 + size + 2;
            if buf.len() < whole {
                break;
            }
            let subject = words.get(1).copied().unwrap_or_default();
            let watched = subject.starts_with(target.prefix.as_bytes());
            let matches = watched && target.seen.fetch_add(1, Ordering::SeqCst) + 1 == target.nth;
            if watched {
                // `HPUB <subject> [reply] <header size> <total size>`, `PUB <subject> [reply] <size>`.
                let hpub = words.first().is_some_and(|op| op.eq_ignore_ascii_case(b"HPUB"));
                let fixed = if hpub { 4 } else { 3 };
                let reply = if words.len() > fixed {
                    String::from_utf8_lossy(words[2]).into_owned()
                } else {
                    String::new()
                };
                let headers =
                    if hpub { number(words.len().checked_sub(2).and_then(|i| words.get(i))) } else { 0 };
                let msg_id = msg_id(&buf[end + 2..end + 2 + headers]);
                if let Ok(mut seen) = noted.seen.lock() {
                    seen.push(Publish { reply, msg_id, lost: matches });
                }
            }
            if matches {
                if let Ok(mut l) = noted.lost_line.lock() {
                    *l = Some(String::from_utf8_lossy(line).into_owned());
                }
            } else {
                out.extend_from_slice(&buf[at..whole]);
            }
            at = whole;
        }
        buf.drain(..at);
        if server_write.write_all(&out).await.is_err() {
            return;
        }
    }
}
