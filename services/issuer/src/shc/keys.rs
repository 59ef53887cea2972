//! ES256 keys: a P-256 signing key with its RFC 7638 `kid`, the public JWK and JWK Set that
//! verifiers fetch from `<iss>/.well-known/jwks.json`, and a ring of keys for rotation.

use std::path::Path;

use p256::ecdsa::signature::{Signer, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::EncodedPoint;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use p256::{NistP256, SecretKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{b64url_decode, b64url_encode};

/// A key that cannot be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The PEM is neither PKCS#8 nor SEC1 for P-256.
    #[error("not a P-256 private key in PKCS#8 or SEC1 PEM")]
    BadPem,
    /// The JWK is not an EC P-256 key of the expected form.
    #[error("invalid JWK: {0}")]
    BadJwk(String),
    /// The JWK Set is not `{"keys":[…]}`.
    #[error("invalid JWK Set: {0}")]
    BadJwks(String),
    /// A key ring needs at least one key.
    #[error("the key ring is empty")]
    EmptyRing,
}

/// A P-256 signing key and its `kid` (the RFC 7638 thumbprint of its public key).
#[derive(Clone)]
pub struct IssuerKey {
    signing: SigningKey,
    kid: String,
}

impl std::fmt::Debug for IssuerKey {
    // Never print the private scalar.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl IssuerKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::random(&mut rand_core::OsRng))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let kid = public_jwk(signing.verifying_key(), String::new()).thumbprint();
        Self { signing, kid }
    }

    /// The key's `kid`: base64url SHA-256 JWK thumbprint (RFC 7638).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK with `kid`, `use: sig`, `alg: ES256`.
    pub fn public_jwk(&self) -> Jwk {
        public_jwk(self.signing.verifying_key(), self.kid.clone())
    }

    /// ES256 signature in JOSE form: 64 bytes `r || s` (not DER).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let sig: Signature = self.signing.sign(message);
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig.to_bytes());
        out
    }

    /// Reads a PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let secret = SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| SecretKey::from_sec1_pem(pem))
            .map_err(|_| KeyError::BadPem)?;
        Ok(Self::from_signing_key(SigningKey::from(secret)))
    }

    /// The private key as PKCS#8 PEM (zeroed when dropped).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        SecretKey::from(&self.signing).to_pkcs8_pem(LineEnding::LF).map_err(|_| KeyError::BadPem)
    }

    /// Reads a private JWK (`kty: EC`, `crv: P-256`, `x`, `y`, `d`); `x`/`y` must match `d`.
    pub fn from_jwk_json(json: &str) -> Result<Self, KeyError> {
        let value: Value = serde_json::from_str(json).map_err(|e| KeyError::BadJwk(e.to_string()))?;
        let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|e| KeyError::BadJwk(e.to_string()))?;
        let public = jwk.verifying_key()?;
        let d = value.get("d").and_then(Value::as_str).ok_or_else(|| KeyError::BadJwk("no \"d\"".into()))?;
        let d =
            Zeroizing::new(b64url_decode(d).map_err(|_| KeyError::BadJwk("\"d\" is not base64url".into()))?);
        if d.len() != 32 {
            return Err(KeyError::BadJwk("\"d\" is not 32 bytes".into()));
        }
        let signing =
            SigningKey::from_slice(&d).map_err(|_| KeyError::BadJwk("\"d\" is not a P-256 scalar".into()))?;
        if signing.verifying_key() != &public {
            return Err(KeyError::BadJwk("\"x\"/\"y\" do not belong to \"d\"".into()));
        }
        Ok(Self::from_signing_key(signing))
    }

    /// The private key as a JWK with `d` (zeroed when dropped).
    pub fn to_private_jwk_json(&self) -> Zeroizing<String> {
        let mut value = match serde_json::to_value(self.public_jwk()) {
            Ok(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let d = Zeroizing::new(b64url_encode(&self.signing.to_bytes()));
        value.insert("d".into(), Value::String(d.to_string()));
        Zeroizing::new(Value::Object(value).to_string())
    }

    /// Loads a key file: PEM, or a JSON private JWK.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| KeyError::Io { path: path.display().to_string(), source })?,
        );
        if text.trim_start().starts_with('{') {
            Self::from_jwk_json(&text)
        } else {
            Self::from_pem(&text)
        }
    }

    /// Saves as PKCS#8 PEM, file mode 0600.
    pub fn save_pem(&self, path: &Path) -> Result<(), KeyError> {
        write_private(path, self.to_pkcs8_pem()?.as_bytes())
    }

    /// Saves as a private JWK, file mode 0600.
    pub fn save_jwk(&self, path: &Path) -> Result<(), KeyError> {
        write_private(path, self.to_private_jwk_json().as_bytes())
    }

    /// Loads the key at `path`, or generates one and saves it there as PEM (first start).
    /// Returns the key and whether it was generated.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), KeyError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate();
        key.save_pem(path)?;
        Ok((key, true))
    }
}

/// Writes a secret file readable by the owner only (created 0600, replaced whole).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    kakehashi_runtime::private_files::write_atomic(path, bytes, true)
        .map_err(|source| KeyError::Io { path: path.display().to_string(), source })
}

fn public_jwk(key: &VerifyingKey, kid: String) -> Jwk {
    let point = key.to_encoded_point(false);
    // An uncompressed point of a valid key always has both coordinates.
    let coord = |c: Option<&p256::FieldBytes>| c.map(|b| b64url_encode(b)).unwrap_or_default();
    Jwk {
        kty: "EC".into(),
        kid,
        use_: Some("sig".into()),
        alg: Some("ES256".into()),
        crv: "P-256".into(),
        x: coord(point.x()),
        y: coord(point.y()),
        crl_version: None,
    }
}

/// A public EC P-256 JWK as published in the issuer's JWK Set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `EC`.
    pub kty: String,
    /// Key id: the RFC 7638 thumbprint.
    pub kid: String,
    /// `sig`.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// `ES256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Always `P-256`.
    pub crv: String,
    /// base64url x coordinate (32 bytes).
    pub x: String,
    /// base64url y coordinate (32 bytes).
    pub y: String,
    /// Revocation list version for this key (spec: `crlVersion`), when the issuer revokes.
    #[serde(rename = "crlVersion", default, skip_serializing_if = "Option::is_none")]
    pub crl_version: Option<u64>,
}

impl Jwk {
    /// RFC 7638 thumbprint: base64url SHA-256 of `{"crv":…,"kty":…,"x":…,"y":…}` (members in
    /// lexicographic order, no whitespace).
    pub fn thumbprint(&self) -> String {
        let canonical = serde_json::json!({"crv": self.crv, "kty": self.kty, "x": self.x, "y": self.y});
        // serde_json writes object keys in the order given only with preserve_order; build the
        // string by hand so the order is the RFC's whatever features are on.
        let s = |v: &Value| v.to_string();
        let text = format!(
            "{{\"crv\":{},\"kty\":{},\"x\":{},\"y\":{}}}",
            s(&canonical["crv"]),
            s(&canonical["kty"]),
            s(&canonical["x"]),
            s(&canonical["y"])
        );
        b64url_encode(&Sha256::digest(text.as_bytes()))
    }

    /// The verifying key, after checking `kty`, `crv`, `alg`, `use` and that the point is on the curve.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(KeyError::BadJwk(format!("kty {} crv {} is not EC P-256", self.kty, self.crv)));
        }
        if self.alg.as_deref().is_some_and(|a| a != "ES256") {
            return Err(KeyError::BadJwk("alg is not ES256".into()));
        }
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(KeyError::BadJwk("use is not sig".into()));
        }
        let coord = |c: &str, name: &str| -> Result<Vec<u8>, KeyError> {
            let bytes = b64url_decode(c).map_err(|_| KeyError::BadJwk(format!("{name} is not base64url")))?;
            if bytes.len() != 32 {
                return Err(KeyError::BadJwk(format!("{name} is not 32 bytes")));
            }
            Ok(bytes)
        };
        let (x, y) = (coord(&self.x, "x")?, coord(&self.y, "y")?);
        let point = EncodedPoint::<NistP256>::from_affine_coordinates(
            x.as_slice().into(),
            y.as_slice().into(),
            false,
        );
        VerifyingKey::from_encoded_point(&point).map_err(|_| KeyError::BadJwk("point is not on P-256".into()))
    }

    /// Checks an ES256 JOSE signature (64 bytes `r || s`) over `message` with this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<bool, KeyError> {
        let key = self.verifying_key()?;
        let Ok(sig) = Signature::from_slice(signature) else { return Ok(false) };
        Ok(key.verify(message, &sig).is_ok())
    }
}

/// A JWK Set: `{"keys":[…]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The usable EC P-256 keys.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWK Set. Keys that are not EC P-256 ES256 signing keys (e.g. RSA, or x5c-only
    /// entries without coordinates) are skipped: they cannot sign a health card, and one odd key
    /// must not make an issuer's whole set unusable.
    pub fn from_json(json: &str) -> Result<Self, KeyError> {
        let value: Value = serde_json::from_str(json).map_err(|e| KeyError::BadJwks(e.to_string()))?;
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeyError::BadJwks("no \"keys\" array".into()))?;
        let keys = keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| k.verifying_key().is_ok())
            .collect();
        Ok(Self { keys })
    }

    /// The set as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"keys\":[]}".into())
    }

    /// The key with this `kid`.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

/// The issuer's keys, oldest first: new cards are signed with the newest, and every key stays in
/// the published JWK Set so cards signed before a rotation still verify.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<IssuerKey>,
}

impl KeyRing {
    /// A ring of keys, oldest first.
    pub fn new(keys: Vec<IssuerKey>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::EmptyRing);
        }
        Ok(Self { keys })
    }

    /// Adds a new newest key (rotation); it signs from now on.
    pub fn rotate(&mut self, key: IssuerKey) {
        self.keys.retain(|k| k.kid != key.kid);
        self.keys.push(key);
    }

    /// The key that signs new cards.
    pub fn current(&self) -> &IssuerKey {
        // `new` refuses an empty ring and nothing removes keys, so there is always a last key.
        &self.keys[self.keys.len() - 1]
    }

    /// All keys, oldest first.
    pub fn keys(&self) -> &[IssuerKey] {
        &self.keys
    }

    /// The public JWK Set to serve at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Jwks {
        Jwks { keys: self.keys.iter().map(IssuerKey::public_jwk).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint_for_ec_layout() {
        // Thumbprint members must be exactly crv, kty, x, y in that order: changing any one
        // changes the kid.
        let jwk = IssuerKey::generate().public_jwk();
        let mut other = jwk.clone();
        other.kid = "ignored".into();
        other.use_ = None;
        assert_eq!(jwk.thumbprint(), other.thumbprint(), "kid/use/alg are not part of the thumbprint");
        other.x = jwk.y.clone();
        assert_ne!(jwk.thumbprint(), other.thumbprint());
    }

    #[test]
    fn sign_and_verify_jose_form() {
        let key = IssuerKey::generate();
        let sig = key.sign(b"hello");
        let jwk = key.public_jwk();
        assert!(jwk.verify(b"hello", &sig).expect("key ok"));
        assert!(!jwk.verify(b"hellO", &sig).expect("key ok"));
        assert!(!jwk.verify(b"hello", &sig[..63]).expect("key ok"));
    }

    #[test]
    fn pem_and_jwk_round_trip_and_file_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = IssuerKey::generate();
        let pem_path = dir.path().join("k.pem");
        key.save_pem(&pem_path).expect("save");
        let back = IssuerKey::load(&pem_path).expect("load");
        assert_eq!(back.kid(), key.kid());
        let jwk_path = dir.path().join("k.json");
        key.save_jwk(&jwk_path).expect("save");
        assert_eq!(IssuerKey::load(&jwk_path).expect("load").kid(), key.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for p in [&pem_path, &jwk_path] {
                let mode = std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
        let (again, generated) = IssuerKey::load_or_generate(&pem_path).expect("load");
        assert!(!generated);
        assert_eq!(again.kid(), key.kid());
        let (_, generated) = IssuerKey::load_or_generate(&dir.path().join("new.pem")).expect("gen");
        assert!(generated);
    }

    #[test]
    fn private_jwk_with_foreign_public_part_is_refused() {
        let a = IssuerKey::generate();
        let b = IssuerKey::generate();
        let mut value: Value = serde_json::from_str(&a.to_private_jwk_json()).expect("json");
        value["x"] = Value::String(b.public_jwk().x);
        value["y"] = Value::String(b.public_jwk().y);
        assert!(matches!(IssuerKey::from_jwk_json(&value.to_string()), Err(KeyError::BadJwk(_))));
        assert!(format!("{a:?}").contains(a.kid()) && !format!("{a:?}").contains("signing"));
    }

    #[test]
    fn ring_rotation_signs_with_newest_and_publishes_all() {
        let old = IssuerKey::generate();
        let mut ring = KeyRing::new(vec![old.clone()]).expect("ring");
        let new = IssuerKey::generate();
        ring.rotate(new.clone());
        assert_eq!(ring.current().kid(), new.kid());
        let jwks = Jwks::from_json(&ring.jwks().to_json()).expect("jwks");
        assert!(jwks.find(old.kid()).is_some() && jwks.find(new.kid()).is_some());
        assert!(matches!(KeyRing::new(vec![]), Err(KeyError::EmptyRing)));
    }
}
