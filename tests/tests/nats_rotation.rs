//! Rotating a NATS identity as `docs/security.md` says: `--rotate` keeps the old key accepted
//! beside the new one until `--retire`, each step followed by a server reload, so the identity
//! moves to its new key without an outage and the old key is refused afterwards.

use kakehashi_ctl::nats_config::department_identity;
use kakehashi_runtime::nats_auth::NatsAuthConfig;
use kakehashi_tests::NatsServer;
use std::path::Path;
use std::time::Duration;

const DEPT: &str = "city-x";

async fn connects(nats: &NatsServer, creds: &Path) -> bool {
    let auth = NatsAuthConfig { credentials: Some(creds.to_path_buf()), ..Default::default() };
    auth.options("rotation-test").expect("credentials").connect(nats.url()).await.is_ok()
}

/// Waits (bounded) until connecting with `creds` gives `expected`: a reload is asynchronous.
async fn until_connects(nats: &NatsServer, creds: &Path, expected: bool, what: &str) {
    kakehashi_tests::wait::until(what, Duration::from_secs(10), || async {
        (connects(nats, creds).await == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn rotate_keeps_the_old_key_until_retire_and_retire_refuses_it() {
    let nats = NatsServer::start();
    nats.expect_violations();
    let current = nats.department_creds(DEPT);
    let dir = tempfile::tempdir().expect("dir");
    let old = dir.path().join("old.creds");
    std::fs::copy(&current, &old).expect("keep the old credentials");
    assert!(connects(&nats, &old).await, "the original key works");

    let identity = department_identity(DEPT);
    nats.regenerate_and_reload(&[&identity], &[]);
    let new_text = std::fs::read_to_string(&current).expect("new credentials");
    assert_ne!(new_text, std::fs::read_to_string(&old).expect("old"), "--rotate wrote a new key");
    until_connects(&nats, &current, true, "the new key to be accepted").await;
    assert!(connects(&nats, &old).await, "the old key stays accepted until retired");

    nats.regenerate_and_reload(&[], &[&identity]);
    until_connects(&nats, &old, false, "the retired key to be refused").await;
    assert!(connects(&nats, &current).await, "the new key keeps working");
    // Another identity was never touched.
    assert!(connects(&nats, &nats.department_creds("mhlw")).await);
}
