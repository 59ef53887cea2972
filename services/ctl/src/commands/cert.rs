//! `kakehashi cert verify`: the verifier for anyone. Reads a SMART Health Card from a PNG of its
//! QR code, a `.smart-health-card` file, `shc:/…` text or a JWS; takes the issuer's JWK Set from
//! a file (`--jwks`, offline) or fetches `<iss>/.well-known/jwks.json` over HTTPS; checks it with
//! [`kakehashi_issuer::Verifier`] and prints the holder and doses, or the check that failed with
//! its own exit code ([`exit`]). Needs no bus.

use std::path::Path;

use crate::https_client::{FetchError, Fetcher};
use kakehashi_issuer::shc::payload::is_https_url;
use kakehashi_issuer::shc::verify::{peek_unverified, UnverifiedClaims, VerifyOptions};
use kakehashi_issuer::{Jwks, RevocationList, VerifiedCard, Verifier, VerifyError};

use crate::cli::{CertCommand, CertVerifyArgs, Conn};
use crate::error::CtlError;
use crate::output::emit;

/// Exit codes of `kakehashi cert verify`. 0 is a valid card; 1 is any other error of the CLI
/// (an unreadable `--jwks`/`--crl` file, a missing input file); 2 is a usage error (clap).
pub mod exit {
    /// The input is not a SMART Health Card (not `shc:/`, JWS, card file or PNG; bad `shc:/`
    /// digits; a QR code holding something else).
    pub const NOT_SHC: u8 = 10;
    /// The image cannot be read (not a PNG, corrupt) or holds no readable QR code.
    pub const UNREADABLE_IMAGE: u8 = 11;
    /// The JWS, its header, payload or FHIR Bundle is not of the required form.
    pub const MALFORMED: u8 = 12;
    /// The signature does not verify: the card was altered (tampered) or signed by another key.
    pub const BAD_SIGNATURE: u8 = 13;
    /// The signing key (`kid`) is not in the issuer's key set.
    pub const UNKNOWN_KEY: u8 = 14;
    /// `iss` is not an https URL, or not the `--issuer` required.
    pub const WRONG_ISSUER: u8 = 15;
    /// `nbf` is in the future.
    pub const NOT_YET_VALID: u8 = 16;
    /// `exp` has passed.
    pub const EXPIRED: u8 = 17;
    /// The issuer's revocation list revokes the card.
    pub const REVOKED: u8 = 18;
    /// The card could not be checked: the issuer's key set or revocation list could not be
    /// fetched, or the revocation list is older than the key set says.
    pub const CANNOT_CHECK: u8 = 19;
}

/// Runs a `kakehashi cert` subcommand.
pub async fn run(conn: &Conn, json_mode: bool, cmd: CertCommand) -> Result<(), CtlError> {
    match cmd {
        CertCommand::Verify(a) => verify(conn, json_mode, a).await,
    }
}

/// Where the revocation status of a valid card comes from, for the report.
enum Revocation {
    /// A list for the signing key was applied.
    Checked { ctr: u64, fetched: bool },
    /// The key announces no revocation list (`crlVersion` absent).
    NotPublished,
    /// The key has `crlVersion`, but no list was given (offline) or the given list is for
    /// another key.
    NotChecked(String),
}

/// Runs `kakehashi cert verify`.
pub async fn verify(conn: &Conn, json_mode: bool, a: CertVerifyArgs) -> Result<(), CtlError> {
    let input = read_input(&a.input).await?;
    let given_crl = match &a.crl {
        Some(path) => Some(load_crl(path)?),
        None => None,
    };

    // The key set: from the file, or from the issuer the card names (not trusted yet: only used
    // to know where to look; the signature check below decides).
    let mut claims: Option<UnverifiedClaims> = None;
    let mut fetcher: Option<Fetcher> = None;
    let jwks = match &a.jwks {
        Some(path) => load_jwks(path)?,
        None => {
            let c = peek_unverified(&input).map_err(rejected)?;
            check_fetchable_issuer(&c.iss, a.issuer.as_deref())?;
            let f = Fetcher::new(conn.ca.as_deref())?;
            let url = format!("{}/.well-known/jwks.json", c.iss);
            let body = f.get(&url).await.map_err(cannot_check)?;
            let jwks = std::str::from_utf8(&body)
                .map_err(|e| e.to_string())
                .and_then(|t| Jwks::from_json(t).map_err(|e| e.to_string()))
                .map_err(|e| cannot_check_msg(format!("{url}: not a JWK Set: {e}")))?;
            claims = Some(c);
            fetcher = Some(f);
            jwks
        }
    };

    // The revocation list: given, or fetched when the key announces one and we are online.
    let mut fetched_crl = None;
    if let (None, Some(c), Some(f)) = (&given_crl, &claims, &fetcher) {
        if jwks.find(&c.kid).is_some_and(|k| k.crl_version.is_some()) {
            if !c.kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(rejected(VerifyError::Malformed(format!("kid {:?} is not base64url", c.kid))));
            }
            let url = format!("{}/.well-known/crl/{}.json", c.iss, c.kid);
            let body = f.get(&url).await.map_err(cannot_check)?;
            let list = std::str::from_utf8(&body)
                .map_err(|e| e.to_string())
                .and_then(|t| RevocationList::from_json(t).map_err(|e| e.to_string()))
                .map_err(|e| cannot_check_msg(format!("{url}: not a revocation list: {e}")))?;
            if list.kid != c.kid {
                return Err(cannot_check_msg(format!(
                    "{url}: the revocation list is for key {}, not {}",
                    list.kid, c.kid
                )));
            }
            fetched_crl = Some(list);
        }
    }

    let options = VerifyOptions { now: a.now, expected_issuer: a.issuer.clone(), ..VerifyOptions::default() };
    let mut verifier = Verifier::new(jwks.clone()).with_options(options);
    let list_used = fetched_crl.as_ref().map(|l| (l, true)).or(given_crl.as_ref().map(|l| (l, false)));
    if let Some((list, _)) = list_used {
        verifier = verifier.with_revocation_list(list.clone());
    }
    let card = verifier.verify_input(&input).map_err(rejected)?;

    let crl_version = jwks.find(&card.kid).and_then(|k| k.crl_version);
    let revocation = match (list_used, crl_version) {
        (Some((list, fetched)), _) if list.kid == card.kid => Revocation::Checked { ctr: list.ctr, fetched },
        (Some((list, _)), _) => Revocation::NotChecked(format!(
            "the revocation list given is for key {}, not {}",
            list.kid, card.kid
        )),
        (None, Some(v)) => Revocation::NotChecked(format!(
            "the key announces a revocation list (crlVersion {v}); pass --crl FILE, or verify without --jwks to fetch it"
        )),
        (None, None) => Revocation::NotPublished,
    };

    let json =
        serde_json::to_value(&card).map_err(|e| CtlError::Usage(format!("cannot print the card: {e}")))?;
    emit(json_mode, json, || report(&card, &revocation, a.jwks.is_none()));
    Ok(())
}

/// The card's `iss` must be an https URL that a key set can be fetched from, and the one
/// `--issuer` names: checked before anything is fetched, so a card never makes the verifier
/// fetch from a place it was not told to trust.
fn check_fetchable_issuer(iss: &str, expected: Option<&str>) -> Result<(), CtlError> {
    if !is_https_url(iss) || iss.contains(['?', '#']) || iss.ends_with('/') {
        return Err(CtlError::Cert {
            exit_code: exit::WRONG_ISSUER,
            message: format!(
                "INVALID: issuer {iss:?} is not an https URL: its key set is not fetched (pass --jwks FILE to verify offline)"
            ),
        });
    }
    if let Some(expected) = expected {
        if iss != expected {
            return Err(rejected(VerifyError::WrongIssuer {
                found: iss.to_string(),
                expected: expected.to_string(),
            }));
        }
    }
    Ok(())
}

/// The input bytes: standard input for `-`, the text itself for `shc:/…`, else the file.
async fn read_input(input: &str) -> Result<Vec<u8>, CtlError> {
    if input == "-" {
        let read = tokio::task::spawn_blocking(|| {
            use std::io::Read as _;
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map(|_| buf)
        })
        .await
        .map_err(|e| CtlError::Usage(format!("reading standard input: {e}")))?;
        return read.map_err(|source| CtlError::Read { path: "-".into(), source });
    }
    if input.trim_start().get(..5).is_some_and(|p| p.eq_ignore_ascii_case("shc:/")) {
        return Ok(input.as_bytes().to_vec());
    }
    std::fs::read(input).map_err(|source| CtlError::Read { path: input.into(), source })
}

fn load_jwks(path: &Path) -> Result<Jwks, CtlError> {
    Jwks::from_json(&crate::error::read(path)?)
        .map_err(|e| CtlError::BadFile { path: path.to_path_buf(), message: format!("not a JWK Set: {e}") })
}

fn load_crl(path: &Path) -> Result<RevocationList, CtlError> {
    RevocationList::from_json(&crate::error::read(path)?).map_err(|e| CtlError::BadFile {
        path: path.to_path_buf(),
        message: format!("not a revocation list: {e}"),
    })
}

/// RFC 3339 (UTC) of a time in seconds since the epoch.
fn when(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// The exit code of a failed check.
pub fn exit_code(e: &VerifyError) -> u8 {
    match e {
        VerifyError::NotShc(_) | VerifyError::BadNumeric(_) => exit::NOT_SHC,
        VerifyError::BadImage(_) | VerifyError::NoQrInImage => exit::UNREADABLE_IMAGE,
        VerifyError::Malformed(_) | VerifyError::UnsupportedAlgorithm(_) | VerifyError::NotCompressed(_) => {
            exit::MALFORMED
        }
        VerifyError::BadSignature => exit::BAD_SIGNATURE,
        VerifyError::UnknownKid(_) => exit::UNKNOWN_KEY,
        VerifyError::IssuerNotHttps(_) | VerifyError::WrongIssuer { .. } => exit::WRONG_ISSUER,
        VerifyError::NotYetValid { .. } => exit::NOT_YET_VALID,
        VerifyError::Expired { .. } => exit::EXPIRED,
        VerifyError::Revoked { .. } => exit::REVOKED,
        VerifyError::StaleRevocationList { .. } => exit::CANNOT_CHECK,
    }
}

/// One line naming the check that failed (`INVALID: …`), or why the card could not be checked.
pub fn failure_line(e: &VerifyError) -> String {
    let why = match e {
        VerifyError::StaleRevocationList { .. } => return format!("cannot check the card: {e}"),
        VerifyError::NotShc(m) => format!("not a SMART Health Card: {m}"),
        VerifyError::BadNumeric(n) => format!("not a SMART Health Card: invalid shc:/ data: {n}"),
        VerifyError::BadImage(m) => format!("unreadable image: {m}"),
        VerifyError::NoQrInImage => "unreadable image: no readable QR code in it".to_string(),
        VerifyError::BadSignature => {
            "bad signature: the card was tampered with, or not signed by the key it names".to_string()
        }
        VerifyError::UnknownKid(kid) => {
            format!(
                "unknown key: the signing key {kid} is not in the issuer's key set (wrong key set or issuer)"
            )
        }
        VerifyError::NotYetValid { nbf, now } => {
            format!("not yet valid: valid from {} (now {})", when(*nbf), when(*now))
        }
        VerifyError::Expired { exp, now } => format!("expired: on {} (now {})", when(*exp), when(*now)),
        VerifyError::Revoked { rid } => format!("revoked by the issuer (rid {rid})"),
        VerifyError::WrongIssuer { found, expected } => {
            format!("wrong issuer: issued by {found}, expected {expected}")
        }
        other => other.to_string(),
    };
    format!("INVALID: {why}")
}

/// The CLI error for a card that failed a check.
fn rejected(e: VerifyError) -> CtlError {
    CtlError::Cert { exit_code: exit_code(&e), message: failure_line(&e) }
}

fn cannot_check(e: FetchError) -> CtlError {
    cannot_check_msg(e.to_string())
}

fn cannot_check_msg(message: String) -> CtlError {
    CtlError::Cert { exit_code: exit::CANNOT_CHECK, message: format!("cannot check the card: {message}") }
}

/// The human report of a valid card.
fn report(card: &VerifiedCard, revocation: &Revocation, fetched_keys: bool) -> String {
    let secs = |t: f64| t.floor() as i64;
    let holder = &card.record.holder;
    let mut out = vec![
        format!("issuer:      {}", card.issuer),
        format!(
            "key:         {}{}",
            card.kid,
            if fetched_keys { " (from the issuer's /.well-known/jwks.json)" } else { " (from --jwks)" }
        ),
        format!("valid from:  {}", when(secs(card.nbf))),
        format!("expires:     {}", card.exp.map_or_else(|| "never".to_string(), |e| when(secs(e)))),
        if holder.given.is_empty() {
            format!("holder:      {}", holder.family)
        } else {
            format!("holder:      {}, {}", holder.family, holder.given.join(" "))
        },
        format!("born:        {}", holder.birth_date),
    ];
    for (i, d) in card.record.doses.iter().enumerate() {
        let system = match d.vaccine.system.as_str() {
            kakehashi_issuer::CVX_SYSTEM => "CVX".to_string(),
            other => other.to_string(),
        };
        out.push(format!(
            "dose {}:      {}  vaccine {} {}  lot {}  by {}",
            i + 1,
            d.occurrence,
            system,
            d.vaccine.code,
            d.lot_number.as_deref().unwrap_or("-"),
            d.performer.as_deref().unwrap_or("-"),
        ));
    }
    out.push(match revocation {
        Revocation::Checked { ctr, fetched: true } => {
            format!("revocation:  not revoked (the issuer's list, ctr {ctr})")
        }
        Revocation::Checked { ctr, fetched: false } => format!("revocation:  not revoked (--crl, ctr {ctr})"),
        Revocation::NotPublished => {
            "revocation:  the issuer publishes no revocation list for this key".into()
        }
        Revocation::NotChecked(why) => format!("revocation:  NOT checked: {why}"),
    });
    out.push("VALID".into());
    out.join("\n")
}
