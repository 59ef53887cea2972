//! `kakehashi cert verify`, run as the real `kakehashi` binary: cards issued here with the card
//! library (a key generated per test) in every input form, each failure class with its message
//! and exit code, the specification's official example, and the issuer's key set and revocation
//! list fetched over HTTPS from a server in the test (certificates made at run time).

use kakehashi_ctl::commands::cert::exit;
use kakehashi_issuer::shc::{jws::sign_compact, payload::build_payload};
use kakehashi_issuer::{
    derive_rid, issue_card, Dose, HealthCard, Holder, IssueOptions, IssuerKey, Jwks, RevocationList,
    VaccinationRecord, VaccineCode, CVX_SYSTEM,
};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{self, rustls};

const ISSUER: &str = "https://city-shibuya.example.jp/shc";

/// The `kakehashi` binary: `KH_KAKEHASHI_BIN` when set, else built once (cargo builds only this
/// crate's binaries for its tests, not those of `kakehashi-ctl`) into the target directory this
/// test runs from, with the same profile, so it is never a stale binary.
fn kakehashi_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KH_KAKEHASHI_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let profile_dir = dir.file_name().and_then(|n| n.to_str()).expect("profile dir").to_string();
        let profile = if profile_dir == "debug" { "dev".to_string() } else { profile_dir };
        let target_dir = dir.parent().expect("target dir");
        let mut cargo = Command::new(env!("CARGO"));
        // Not the variables cargo sets for this test process: build scripts that track one
        // (ring tracks CARGO_MANIFEST_DIR) would rebuild for this build and again for the next
        // `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || name == "OUT_DIR"
            {
                cargo.env_remove(name.as_ref());
            }
        }
        let status = cargo
            .args(["build", "--quiet", "-p", "kakehashi-ctl", "--bin", "kakehashi", "--profile", &profile])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the kakehashi binary failed");
        dir.join(format!("kakehashi{}", std::env::consts::EXE_SUFFIX))
    })
}

/// A finished `kakehashi` run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts a failure with `code` and one stderr line containing `needle`.
    fn fails(&self, code: u8, needle: &str) {
        assert_eq!(
            self.code,
            i32::from(code),
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        let line = self.stderr.lines().find(|l| l.starts_with("kakehashi: ")).unwrap_or_default();
        assert!(
            line.contains("INVALID") || line.contains("cannot check"),
            "failure line should say INVALID or cannot check: {}",
            self.stderr
        );
        assert!(line.contains(needle), "expected {needle:?} in the failure line: {}", self.stderr);
        assert!(!self.stdout.contains("VALID"), "a failed card must not print VALID: {}", self.stdout);
    }

    fn valid(&self) {
        assert_eq!(self.code, 0, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert_eq!(self.stdout.lines().last(), Some("VALID"), "{}", self.stdout);
    }
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(kakehashi_bin());
    c.args(["cert", "verify"]).args(args);
    // Nothing from the environment of whoever runs the tests.
    for var in ["KAKEHASHI_CA", "KAKEHASHI_CERT", "KAKEHASHI_KEY", "SSL_CERT_FILE", "SSL_CERT_DIR"] {
        c.env_remove(var);
    }
    c
}

fn kakehashi(args: &[&str]) -> Run {
    Run::from(command(args).output().expect("run kakehashi"))
}

fn kakehashi_stdin(args: &[&str], input: &[u8]) -> Run {
    let mut child = command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    Run::from(child.wait_with_output().expect("wait"))
}

/// For the HTTPS tests, which serve from the same runtime meanwhile.
async fn kakehashi_async(args: &[&str]) -> Run {
    let out = tokio::process::Command::from(command(args)).output().await.expect("run kakehashi");
    Run::from(out)
}

fn now() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    i64::try_from(d.as_secs()).expect("time")
}

fn record() -> VaccinationRecord {
    let dose = |date: &str, lot: &str| Dose {
        vaccine: VaccineCode { system: CVX_SYSTEM.into(), code: "207".into() },
        occurrence: date.into(),
        lot_number: Some(lot.into()),
        performer: Some("Shibuya Health Center".into()),
    };
    VaccinationRecord {
        holder: Holder {
            family: "Yamada".into(),
            given: vec!["Hanako".into()],
            birth_date: "1985-04-12".into(),
        },
        doses: vec![dose("2021-06-01", "FA1234"), dose("2021-06-29", "FB5678")],
    }
}

fn options(issuer: &str) -> IssueOptions {
    IssueOptions { issuer: issuer.into(), nbf: now() - 60, exp: None, rid: None }
}

fn card(key: &IssuerKey, opts: &IssueOptions) -> HealthCard {
    issue_card(key, &record(), opts).expect("issue card")
}

fn jwks_of(keys: &[&IssuerKey]) -> Jwks {
    Jwks { keys: keys.iter().map(|k| k.public_jwk()).collect() }
}

/// A temp dir with files written into it.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("temp dir"))
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let p = self.0.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p.to_str().expect("utf-8 path").to_string()
    }
}

#[test]
fn valid_card_in_every_input_form() {
    let key = IssuerKey::generate();
    let card = card(&key, &options(ISSUER));
    let dir = Dir::new();
    let jwks = dir.write("jwks.json", jwks_of(&[&key]).to_json());
    let png = card.qr().expect("qr").to_png(4).expect("png");
    let inputs = [
        dir.write("card.png", &png),
        dir.write("card.smart-health-card", card.to_file_json()),
        dir.write("card-shc.txt", format!("{}\n", card.numeric)),
        dir.write("card-jws.txt", &card.jws),
        card.numeric.clone(),
    ];
    for input in &inputs {
        let run = kakehashi(&["--jwks", &jwks, input]);
        run.valid();
        for needed in [
            ISSUER,
            key.kid(),
            "Yamada, Hanako",
            "1985-04-12",
            "2021-06-01",
            "2021-06-29",
            "CVX 207",
            "FA1234",
            "FB5678",
            "Shibuya Health Center",
            "expires:     never",
        ] {
            assert!(run.stdout.contains(needed), "{needed:?} missing for {input}:\n{}", run.stdout);
        }
    }
    let run = kakehashi_stdin(&["--jwks", &jwks, "-"], &png);
    run.valid();
    assert!(run.stdout.contains("Yamada, Hanako"), "{}", run.stdout);

    let run = kakehashi(&["--jwks", &jwks, "--json", &inputs[0]]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("--json prints JSON");
    assert_eq!(v["issuer"], ISSUER);
    assert_eq!(v["kid"], key.kid());
    assert_eq!(v["record"]["holder"]["family"], "Yamada");
    assert_eq!(v["record"]["holder"]["birth_date"], "1985-04-12");
    let doses = v["record"]["doses"].as_array().expect("doses");
    assert_eq!(doses.len(), 2);
    assert_eq!(doses[1]["lot_number"], "FB5678");
    assert_eq!(doses[0]["vaccine"]["code"], "207");

    // --issuer: the right one passes, another is refused.
    kakehashi(&["--jwks", &jwks, "--issuer", ISSUER, &inputs[1]]).valid();
    kakehashi(&["--jwks", &jwks, "--issuer", "https://other.example.jp", &inputs[1]])
        .fails(exit::WRONG_ISSUER, "wrong issuer");
}

#[test]
fn tampered_card_fails_the_signature() {
    let key = IssuerKey::generate();
    let card = card(&key, &options(ISSUER));
    let dir = Dir::new();
    let jwks = dir.write("jwks.json", jwks_of(&[&key]).to_json());
    // One character of the payload changed for another base64url character: still decodes, no
    // longer what was signed.
    let mut parts: Vec<String> = card.jws.split('.').map(str::to_string).collect();
    let mid = parts[1].len() / 2;
    let c = parts[1].as_bytes()[mid];
    let replacement = if c == b'A' { "B" } else { "A" };
    parts[1].replace_range(mid..=mid, replacement);
    let tampered = parts.join(".");
    assert_ne!(tampered, card.jws);
    let file = dir.write("tampered.txt", &tampered);
    kakehashi(&["--jwks", &jwks, &file]).fails(exit::BAD_SIGNATURE, "signature");
    // The same through the QR code path.
    let numeric = kakehashi_issuer::shc::numeric::encode(&tampered).expect("encode");
    kakehashi(&["--jwks", &jwks, &numeric]).fails(exit::BAD_SIGNATURE, "tampered");
}

#[test]
fn wrong_key_set_is_an_unknown_key() {
    let key = IssuerKey::generate();
    let other = IssuerKey::generate();
    let card = card(&key, &options(ISSUER));
    let dir = Dir::new();
    let jwks = dir.write("other.json", jwks_of(&[&other]).to_json());
    kakehashi(&["--jwks", &jwks, &card.numeric]).fails(exit::UNKNOWN_KEY, "unknown key");
}

#[test]
fn not_yet_valid_and_expired() {
    let key = IssuerKey::generate();
    let dir = Dir::new();
    let jwks = dir.write("jwks.json", jwks_of(&[&key]).to_json());
    let future = card(&key, &IssueOptions { nbf: now() + 3600, ..options(ISSUER) });
    kakehashi(&["--jwks", &jwks, &future.numeric]).fails(exit::NOT_YET_VALID, "not yet valid");

    let nbf = 1_700_000_000;
    let expiring = card(&key, &IssueOptions { nbf, exp: Some(nbf + 86_400), ..options(ISSUER) });
    let file = dir.write("expiring.smart-health-card", expiring.to_file_json());
    let during = (nbf + 3600).to_string();
    let run = kakehashi(&["--jwks", &jwks, "--now", &during, &file]);
    run.valid();
    assert!(run.stdout.contains("expires:     2023-11-15T22:13:20Z"), "{}", run.stdout);
    // Before nbf by --now, and after exp by --now and by the clock.
    kakehashi(&["--jwks", &jwks, "--now", &(nbf - 3600).to_string(), &file])
        .fails(exit::NOT_YET_VALID, "valid from 2023-11-14T22:13:20Z");
    kakehashi(&["--jwks", &jwks, "--now", &(nbf + 2 * 86_400).to_string(), &file])
        .fails(exit::EXPIRED, "expired");
    kakehashi(&["--jwks", &jwks, &file]).fails(exit::EXPIRED, "expired: on 2023-11-15T22:13:20Z");
}

#[test]
fn revoked_with_a_revocation_list() {
    let key = IssuerKey::generate();
    let dir = Dir::new();
    let jwks = dir.write("jwks.json", jwks_of(&[&key]).to_json());
    let secret = b"per-issuer secret of the test";
    let rid = derive_rid(secret, "pseudonym-1");
    let card = card(&key, &IssueOptions { rid: Some(rid.clone()), ..options(ISSUER) });

    let mut list = RevocationList::new(key.kid());
    list.revoke(&derive_rid(secret, "pseudonym-2"), None).expect("revoke other");
    let other_only = dir.write("crl-other.json", list.to_json());
    let run = kakehashi(&["--jwks", &jwks, "--crl", &other_only, &card.numeric]);
    run.valid();
    assert!(run.stdout.contains("not revoked (--crl, ctr 1)"), "{}", run.stdout);

    list.revoke(&rid, None).expect("revoke");
    let crl = dir.write("crl.json", list.to_json());
    kakehashi(&["--jwks", &jwks, "--crl", &crl, &card.numeric]).fails(exit::REVOKED, "revoked");

    // Without the list the card is valid, and the report says revocation was not checked only
    // when the key announces a list.
    kakehashi(&["--jwks", &jwks, &card.numeric]).valid();
    let mut announced = jwks_of(&[&key]);
    announced.keys[0].crl_version = Some(2);
    let announced = dir.write("jwks-crl.json", announced.to_json());
    let run = kakehashi(&["--jwks", &announced, &card.numeric]);
    run.valid();
    assert!(run.stdout.contains("revocation:  NOT checked"), "{}", run.stdout);
    kakehashi(&["--jwks", &announced, "--crl", &crl, &card.numeric]).fails(exit::REVOKED, "revoked");
    // A list older than the key's crlVersion cannot decide.
    let stale = dir.write("crl-stale.json", {
        let mut l = RevocationList::new(key.kid());
        l.revoke("AAAA", None).expect("revoke");
        l.to_json()
    });
    kakehashi(&["--jwks", &announced, "--crl", &stale, &card.numeric]).fails(exit::CANNOT_CHECK, "ctr 1");
}

/// The QR code (version 1-L) of the text `hello`, one character per module.
const HELLO_QR: [&str; 21] = [
    "#######..#.##.#######",
    "#.....#.##.#..#.....#",
    "#.###.#.##..#.#.###.#",
    "#.###.#..#.#..#.###.#",
    "#.###.#.#...#.#.###.#",
    "#.....#.#..##.#.....#",
    "#######.#.#.#.#######",
    "........#####........",
    "##.#..##.##...###.##.",
    ".#####.###....#....##",
    "..##.####.#.##...##.#",
    "...#.#..#..#.....#.##",
    "....#.##.##.#.#.#....",
    "........####...##.#.#",
    "#######.###..#.#.###.",
    "#.....#..#####.##....",
    "#.###.#..#.#..###...#",
    "#.###.#.#.##...#.####",
    "#.###.#..##.#...#.#.#",
    "#.....#.###..##......",
    "#######.#.###..#.#.#.",
];

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A greyscale PNG of `rows` (`#` dark) with a 4-module quiet zone, `px` pixels per module;
/// written by hand (stored DEFLATE blocks) so the test needs no image library.
fn png_of(rows: &[&str], px: usize) -> Vec<u8> {
    let modules = rows.len() + 8;
    let side = modules * px;
    let mut raw = Vec::new();
    for y in 0..side {
        raw.push(0); // filter: none
        for x in 0..side {
            let (my, mx) = ((y / px).wrapping_sub(4), (x / px).wrapping_sub(4));
            let dark = rows.get(my).and_then(|r| r.as_bytes().get(mx)).is_some_and(|&c| c == b'#');
            raw.push(if dark { 0 } else { 255 });
        }
    }
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in chunks.iter().enumerate() {
        z.push(u8::from(i + 1 == chunks.len()));
        let len = u16::try_from(block.len()).expect("block");
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&u32::try_from(data.len()).expect("len").to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let side = u32::try_from(side).expect("side").to_be_bytes();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&side);
    ihdr.extend_from_slice(&side);
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn inputs_that_are_not_health_cards() {
    let key = IssuerKey::generate();
    let dir = Dir::new();
    let jwks = dir.write("jwks.json", jwks_of(&[&key]).to_json());
    // A QR code that reads "hello": not a SMART Health Card (and not "no QR code").
    let hello = dir.write("hello.png", png_of(&HELLO_QR, 4));
    kakehashi(&["--jwks", &jwks, &hello])
        .fails(exit::NOT_SHC, "not a SMART Health Card: the image's QR code");
    // A blank PNG: readable, no QR code.
    let blank: Vec<&str> = vec!["....................."; 21];
    let blank = dir.write("blank.png", png_of(&blank, 4));
    kakehashi(&["--jwks", &jwks, &blank]).fails(exit::UNREADABLE_IMAGE, "no readable QR code");
    // Not an image at all (JPEG-like binary), and a PNG cut short.
    let jpeg = dir
        .write("photo.jpg", [0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0xc3]);
    kakehashi(&["--jwks", &jwks, &jpeg]).fails(exit::UNREADABLE_IMAGE, "unreadable image");
    let cut = png_of(&HELLO_QR, 4);
    let cut = dir.write("cut.png", &cut[..cut.len() / 2]);
    kakehashi(&["--jwks", &jwks, &cut]).fails(exit::UNREADABLE_IMAGE, "unreadable image");
    // Text that is none of the forms, and shc:/ with bad digits.
    let text = dir.write("note.txt", "hello");
    kakehashi(&["--jwks", &jwks, &text]).fails(exit::NOT_SHC, "not a SMART Health Card");
    kakehashi(&["--jwks", &jwks, "shc:/999"]).fails(exit::NOT_SHC, "invalid shc:/ data");
    // A missing file is an ordinary error (exit 1), naming the file.
    let run = kakehashi(&["--jwks", &jwks, "/nonexistent/card.png"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("/nonexistent/card.png"), "{}", run.stderr);
}

fn fixture(name: &str) -> String {
    format!("{}/../services/issuer/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_specifications_example_is_valid() {
    let jwks = fixture("issuer.jwks.public.json");
    let run = kakehashi(&["--jwks", &jwks, &fixture("example-00-f-qr-code-numeric-value-0.txt")]);
    run.valid();
    for needed in [
        "issuer:      https://smarthealth.cards/examples/issuer",
        "3Kfdg-XwP-7gXyywtUfUADwBumDOPKMQx-iELL11W9s",
        "Anyperson, John B.",
        "1951-01-20",
        "2021-01-01",
        "lot 0000001",
        "ABC General Hospital",
    ] {
        assert!(run.stdout.contains(needed), "{needed:?} missing:\n{}", run.stdout);
    }
    // Example 03 is revoked by the official list (checked at a time before its exp).
    let run = kakehashi(&[
        "--jwks",
        &jwks,
        "--crl",
        &fixture("crl-3Kfdg-XwP-7gXyywtUfUADwBumDOPKMQx-iELL11W9s.json"),
        "--now",
        "1668545500",
        &fixture("example-03-d-jws.txt"),
    ]);
    run.fails(exit::REVOKED, "revoked");
}

/// A tiny HTTPS server: `GET <path>` answers the body registered for the path (404 otherwise)
/// and records the paths asked for.
struct Https {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn serve_https(server: &kakehashi_ctl::pki::Issued, routes: HashMap<String, Vec<u8>>) -> Https {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("server key"),
        )
        .expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let routes = Arc::new(routes);
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, routes, seen) = (acceptor.clone(), routes.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                seen.lock().expect("lock").push(path.clone());
                let (status, body) = match routes.get(&path) {
                    Some(body) => ("200 OK", body.clone()),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Https { port, requests }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_the_key_set_and_revocation_list_over_https() {
    let ca = kakehashi_ctl::pki::Ca::generate("cert verify test CA").expect("CA");
    let server = ca.issue_server(&["127.0.0.1".into(), "localhost".into()]).expect("server certificate");
    let dir = Dir::new();
    let ca_file = dir.write("ca.pem", &ca.certificate().cert_pem);
    let other_ca = kakehashi_ctl::pki::Ca::generate("another CA").expect("CA");
    let other_ca_file = dir.write("other-ca.pem", &other_ca.certificate().cert_pem);

    let key = IssuerKey::generate();
    let secret = b"issuer secret";
    let mut jwks = jwks_of(&[&key]);
    jwks.keys[0].crl_version = Some(1);
    let mut crl = RevocationList::new(key.kid());
    crl.revoke(&derive_rid(secret, "revoked-person"), None).expect("revoke");

    // The port is only known once the server listens: bind it, then issue for that origin.
    let mut routes = HashMap::new();
    routes.insert("/shc/.well-known/jwks.json".to_string(), jwks.to_json().into_bytes());
    routes.insert(format!("/shc/.well-known/crl/{}.json", key.kid()), crl.to_json().into_bytes());
    routes.insert("/big/.well-known/jwks.json".to_string(), vec![b' '; (1 << 20) + 10]);
    let https = serve_https(&server, routes).await;
    let iss = format!("https://127.0.0.1:{}/shc", https.port);

    let good = card(&key, &IssueOptions { rid: Some(derive_rid(secret, "someone")), ..options(&iss) });
    let run = kakehashi_async(&["--ca", &ca_file, &good.numeric]).await;
    run.valid();
    assert!(run.stdout.contains("Yamada, Hanako"), "{}", run.stdout);
    assert!(run.stdout.contains("from the issuer's /.well-known/jwks.json"), "{}", run.stdout);
    assert!(run.stdout.contains("not revoked (the issuer's list, ctr 1)"), "{}", run.stdout);
    assert_eq!(
        *https.requests.lock().expect("lock"),
        vec!["/shc/.well-known/jwks.json".to_string(), format!("/shc/.well-known/crl/{}.json", key.kid())]
    );

    // The fetched revocation list is applied.
    let revoked =
        card(&key, &IssueOptions { rid: Some(derive_rid(secret, "revoked-person")), ..options(&iss) });
    kakehashi_async(&["--ca", &ca_file, &revoked.numeric]).await.fails(exit::REVOKED, "revoked");

    // Without the CA that signed the server's certificate, nothing is trusted.
    kakehashi_async(&["--ca", &other_ca_file, &good.numeric]).await.fails(exit::CANNOT_CHECK, "TLS");
    // A key set larger than the limit is refused.
    let big = card(&key, &options(&format!("https://127.0.0.1:{}/big", https.port)));
    kakehashi_async(&["--ca", &ca_file, &big.numeric])
        .await
        .fails(exit::CANNOT_CHECK, "larger than 1048576 bytes");
    // No key set at the issuer: 404.
    let none = card(&key, &options(&format!("https://127.0.0.1:{}/nothing", https.port)));
    kakehashi_async(&["--ca", &ca_file, &none.numeric]).await.fails(exit::CANNOT_CHECK, "HTTP status 404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_issuer_is_not_fetched_from() {
    // A listener on the card's http:// origin: the verifier must never connect to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let iss = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let key = IssuerKey::generate();
    // issue_card refuses an http issuer, so sign such a payload directly.
    let payload = build_payload(&iss, now() - 60, None, None, record().to_bundle());
    let jws = sign_compact(&key, payload.to_string().as_bytes()).expect("sign");
    let dir = Dir::new();
    let file = dir.write("http-issuer.txt", &jws);
    kakehashi_async(&[&file]).await.fails(exit::WRONG_ISSUER, "is not an https URL");
    let accepted = tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the verifier connected to the http:// issuer");
    // Offline with its key set, the library refuses it too.
    let jwks = dir.write("jwks.json", jwks_of(&[&key]).to_json());
    kakehashi_async(&["--jwks", &jwks, &file]).await.fails(exit::WRONG_ISSUER, "https");
}
