#!/usr/bin/env python3
"""Check a SMART Health Card with a second implementation: jwcrypto and the standard library only.

    python shc_check.py --jws card.jws --jwks jwks.json

The JWS is verified with the key whose `kid` it names in the JWK Set (jwcrypto, ES256), the
payload inflated as raw DEFLATE (zlib, wbits=-15) and checked against the specification's
required structure: `iss` (https), `nbf`, `vc.type` with the health-card type,
`vc.credentialSubject.fhirVersion`, a FHIR `Bundle` of type `collection` whose entries use
`resource:N` full URLs, a Patient first, and Immunizations referring to `resource:0`.
`--numeric` also checks that `shc:/…` text decodes to the same JWS (two digits per character,
value + 45). Prints {"ok": true, "holder": …, "doses": N} or {"ok": false, "error": …}; exits 0
only when every check passes.
"""

import argparse
import json
import sys
import zlib

from jwcrypto import jwk, jws
from jwcrypto.common import base64url_decode


def fail(msg: str) -> int:
    print(json.dumps({"ok": False, "error": msg}))
    return 1


def numeric_to_jws(text: str) -> str:
    digits = text.strip().removeprefix("shc:/")
    if len(digits) % 2 or not digits.isdigit():
        raise ValueError("numeric form must be pairs of digits")
    return "".join(chr(int(digits[i:i + 2]) + 45) for i in range(0, len(digits), 2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jws", required=True, help="file holding the compact JWS")
    ap.add_argument("--jwks", required=True, help="the issuer's JWK Set")
    ap.add_argument("--numeric", help="file holding the shc:/ text of the same card")
    a = ap.parse_args()

    compact = open(a.jws, encoding="ascii").read().strip()
    if a.numeric and numeric_to_jws(open(a.numeric, encoding="ascii").read()) != compact:
        return fail("the shc:/ text does not decode to the JWS")
    header = json.loads(base64url_decode(compact.split(".")[0]))
    if header.get("alg") != "ES256" or header.get("zip") != "DEF" or not header.get("kid"):
        return fail(f"header is not alg ES256, zip DEF with a kid: {header}")
    keys = jwk.JWKSet.from_json(open(a.jwks, encoding="utf-8").read())
    key = keys.get_key(header["kid"])
    if key is None:
        return fail(f"kid {header['kid']} not in the JWK Set")
    if key.thumbprint() != header["kid"]:
        return fail("kid is not the key's RFC 7638 thumbprint")
    token = jws.JWS()
    try:
        token.deserialize(compact)
        token.verify(key, alg="ES256")
    except Exception as err:  # jwcrypto raises InvalidJWSSignature and friends
        return fail(f"signature: {type(err).__name__}: {err}")

    payload = json.loads(zlib.decompress(token.objects["payload"], wbits=-15))
    if not str(payload.get("iss", "")).startswith("https://"):
        return fail("iss is not an https URL")
    if not isinstance(payload.get("nbf"), (int, float)):
        return fail("nbf missing")
    vc = payload.get("vc", {})
    if "https://smarthealth.cards#health-card" not in vc.get("type", []):
        return fail(f"vc.type lacks the health-card type: {vc.get('type')}")
    subject = vc.get("credentialSubject", {})
    if subject.get("fhirVersion") != "4.0.1":
        return fail("fhirVersion is not 4.0.1")
    bundle = subject.get("fhirBundle", {})
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "collection":
        return fail("fhirBundle is not a collection Bundle")
    entries = bundle.get("entry", [])
    for i, e in enumerate(entries):
        if e.get("fullUrl") != f"resource:{i}":
            return fail(f"entry {i} fullUrl is {e.get('fullUrl')}")
        r = e.get("resource", {})
        if any(k in r for k in ("id", "meta", "text")):
            return fail(f"entry {i} is not minified")
    if not entries or entries[0]["resource"].get("resourceType") != "Patient":
        return fail("the first entry is not the Patient")
    doses = [e["resource"] for e in entries[1:]]
    for d in doses:
        if d.get("resourceType") != "Immunization" or d.get("patient", {}).get("reference") != "resource:0":
            return fail(f"not an Immunization of resource:0: {d.get('resourceType')}")
        if not d.get("vaccineCode", {}).get("coding") or not d.get("occurrenceDateTime"):
            return fail("an Immunization lacks vaccineCode or occurrenceDateTime")
    name = entries[0]["resource"].get("name", [{}])[0]
    holder = " ".join(name.get("given", []) + [name.get("family", "")]).strip()
    print(json.dumps({"ok": True, "holder": holder, "doses": len(doses), "iss": payload["iss"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
