//! Server-side sessions: the browser holds only a random session id (cookie: HttpOnly,
//! SameSite=Strict, Secure over TLS); the department's token stays here and is sent to the
//! registry on each page. A certificate login stores no secret: only the certificate the
//! session is bound to, which every request of it must present again. Sessions expire when idle and after a maximum age; logout ends one.
//! Each session carries a CSRF token every POST form must echo.

use rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "kh_console";

/// How a login proved its department.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The bearer token the registry accepts for the department, sent on every call.
    Token(String),
    /// A client certificate (DER of the leaf the browser presented and the console's client CA
    /// verified). The console calls the registry as its delegate for the department; every
    /// request of the session must come over a connection presenting this same certificate.
    Certificate(Vec<u8>),
}

/// Who is logged in.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// What the department proved itself with.
    pub credential: Credential,
    /// The department the registry says the token is ("" in development mode).
    pub department: String,
    /// Whether the registry says it is an administrator.
    pub admin: bool,
}

// Never prints the token, whatever logs a session.
impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credential = match self.credential {
            Credential::Token(_) => "token <redacted>",
            Credential::Certificate(_) => "client certificate",
        };
        f.debug_struct("Login")
            .field("credential", &credential)
            .field("department", &self.department)
            .field("admin", &self.admin)
            .finish()
    }
}

/// One session: a login form shown (no login yet), or a logged-in department.
#[derive(Debug, Clone)]
pub struct Session {
    /// Echoed by every POST form of the session.
    pub csrf: String,
    /// The login, once the token was accepted.
    pub login: Option<Login>,
    created: Instant,
    last_seen: Instant,
}

/// Session lifetime limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Ends after this long without a request.
    pub idle: Duration,
    /// Ends this long after it was created, however active.
    pub max_age: Duration,
    /// Most sessions held.
    pub max_sessions: usize,
}

/// Every session of this console process (sessions do not survive a restart: people log in
/// again, and no token is ever written to disk).
#[derive(Debug)]
pub struct Sessions {
    limits: Limits,
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes from the operating system, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits, map: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave a half-written session (each change is
        // one insert or remove), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) < self.limits.idle
            && now.duration_since(s.created) < self.limits.max_age
    }

    /// Starts a session (a fresh id; the old one, if any, is ended — a login never keeps an id
    /// that existed before it, so a planted id is worthless). Returns the id and the session.
    pub fn start(&self, login: Option<Login>, replacing: Option<&str>) -> (String, Session) {
        let now = Instant::now();
        let id = random_token();
        let session = Session { csrf: random_token(), login, created: now, last_seen: now };
        let mut map = self.lock();
        if let Some(old) = replacing {
            map.remove(old);
        }
        if map.len() >= self.limits.max_sessions {
            map.retain(|_, s| self.live(s, now));
        }
        while map.len() >= self.limits.max_sessions {
            // Full of live sessions: the least recently used one goes, login forms first.
            let oldest =
                map.iter().min_by_key(|(_, s)| (s.login.is_some(), s.last_seen)).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session of `id`, touched; expired ones are removed and answer `None`.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let live = map.get(id).is_some_and(|s| self.live(s, now));
        if !live {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// The live session of `id`, not touched (nothing is removed either).
    pub fn peek(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        self.lock().get(id).filter(|s| self.live(s, now)).cloned()
    }

    /// Ends a session (logout, or a token the registry no longer accepts).
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Sessions held (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn age(&self, id: &str, by: Duration) {
        if let Some(s) = self.lock().get_mut(id) {
            s.last_seen = s.last_seen.checked_sub(by).unwrap_or(s.last_seen);
            s.created = s.created.checked_sub(by).unwrap_or(s.created);
        }
    }
}

/// The `Set-Cookie` value for a session id.
pub fn set_cookie(id: &str, secure: bool, max_age: Duration) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", if secure { "; Secure" } else { "" })
}

/// The session id in a `Cookie` header, if it has one of the right shape.
pub fn cookie_id(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> Sessions {
        Sessions::new(Limits {
            idle: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
            max_sessions: max,
        })
    }

    fn login() -> Login {
        Login { credential: Credential::Token("t".into()), department: "mhlw".into(), admin: false }
    }

    #[test]
    fn ids_are_random_and_logins_replace_the_old_id() {
        let s = store(10);
        let (anon, first) = s.start(None, None);
        let (user, second) = s.start(Some(login()), Some(&anon));
        assert_ne!(anon, user);
        assert_ne!(first.csrf, second.csrf, "a new session gets a new CSRF token");
        assert!(s.get(&anon).is_none(), "the pre-login id is gone");
        assert_eq!(s.get(&user).and_then(|x| x.login), Some(login()));
        assert_eq!(anon.len(), 64);
        assert!(!format!("{:?}", s.get(&user)).contains("\"t\""), "the token is never in Debug output");
    }

    #[test]
    fn sessions_expire_when_idle_or_old_and_end_on_logout() {
        let s = store(10);
        let (a, _) = s.start(Some(login()), None);
        s.age(&a, Duration::from_secs(61));
        assert!(s.get(&a).is_none(), "idle for longer than the limit");
        let (b, _) = s.start(Some(login()), None);
        s.end(&b);
        assert!(s.get(&b).is_none(), "logged out");
    }

    #[test]
    fn a_full_store_drops_login_forms_before_logins() {
        let s = store(2);
        let (user, _) = s.start(Some(login()), None);
        let (_form, _) = s.start(None, None);
        let (_third, _) = s.start(None, None);
        assert_eq!(s.len(), 2);
        assert!(s.get(&user).is_some(), "the logged-in session survives");
    }

    #[test]
    fn csrf_comparison_and_cookies() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        let id = random_token();
        let c = set_cookie(&id, true, Duration::from_secs(5));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"));
        assert!(!set_cookie(&id, false, Duration::from_secs(5)).contains("Secure"));
        let header = format!("other=1; {COOKIE}={id}; x=y");
        assert_eq!(cookie_id(&header), Some(id.as_str()));
        assert_eq!(cookie_id("kh_console=short"), None, "malformed ids are ignored");
    }
}
