#!/usr/bin/env python3
"""Writes the binary protobuf examples of the catalogue's protobuf subjects (schemas/*.pb/examples).

Protobuf examples are bytes, not text, so they are generated: this script encodes them by hand
(standard library only; the wire format of strings, varints and nested messages is all they use).
Run from the repository root: python3 deploy/scripts/protobuf-examples.py
"""
import pathlib


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, value):
    """A field: int → varint, str/bytes → length-delimited, list → repeated, None → absent."""
    if value is None:
        return b""
    if isinstance(value, list):
        return b"".join(field(number, v) for v in value)
    if isinstance(value, bool) or isinstance(value, int):
        return varint(number << 3) + varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def message(*fields):
    return b"".join(field(n, v) for n, v in fields)


def person(my_number, name, kana=None, birth=None, sex=None):
    return message((1, my_number), (2, name), (3, kana), (4, birth), (5, sex))


def address(pref, muni, postal, line):
    return message((1, pref), (2, muni), (3, postal), (4, line))


def vaccination(p, date, vaccine, dose, lot, muni):
    return message((1, p), (2, message((1, date), (2, vaccine), (3, dose), (4, lot))), (3, muni))


UNKNOWN_FIELD_99 = field(99, "not in the schema")
root = pathlib.Path("schemas")
examples = {
    "health.vaccination.recorded.pb": {
        "valid-covid-seventh-dose": vaccination(
            person("271828182840", "鈴木　一郎", "スズキ イチロウ", "1948-02-29", 1),
            "2023-11-20", "新型コロナウイルスワクチン", 7, "HK7891", "011002"),
        "valid-mr-second-dose": vaccination(
            person("161803398872", "髙橋　美咲", "タカハシ　ミサキ", "2019-05-01", 2),
            "2024-10-15", "MR (麻しん風しん混合)", 2, "Y123", "131130"),
        "invalid-bad-my-number-check-digit": vaccination(
            person("271828182841", "鈴木　一郎", None, "1948-02-29"),
            "2023-11-20", "新型コロナウイルスワクチン", 7, "HK7891", "011002"),
        "invalid-unknown-field": vaccination(
            person("271828182840", "鈴木　一郎"), "2023-11-20", "MR", 1, "A1", "011002") + UNKNOWN_FIELD_99,
        "invalid-truncated": vaccination(
            person("271828182840", "鈴木　一郎"), "2023-11-20", "MR", 1, "A1", "011002")[:-3],
    },
    "resident.address.changed.pb": {
        "valid-with-previous-address": message(
            (1, person("314159265352", "佐藤　花子", "サトウ　ハナコ", "1992-11-03", 2)),
            (2, address("27", "271004", "530-0001", "北区梅田三丁目1番1号")),
            (3, address("13", "131016", "1020083", "麹町二丁目3番4号")),
            (4, "2024-12-28")),
        "valid-without-previous-address": message(
            (1, person("161803398872", "髙橋　美咲")),
            (2, address("13", "131130", "150-0002", "渋谷二丁目1番1号")),
            (4, "2025-04-01")),
        "invalid-bad-my-number-check-digit": message(
            (1, person("314159265353", "佐藤　花子")), (2, address("27", "271004", "", "北区")), (4, "2024-12-28")),
        "invalid-unknown-field-in-address": message(
            (1, person("314159265352", "佐藤　花子")),
            (2, address("27", "271004", "", "北区") + UNKNOWN_FIELD_99), (4, "2024-12-28")),
        "invalid-not-protobuf": "{\"person\": {\"my_number\": \"314159265352\"}}".encode(),
    },
    "resident.birth.registered.pb": {
        "valid-two-parents": message(
            (1, person("161803398872", "髙橋　美咲", "タカハシ　ミサキ", "2019-05-01", 2)),
            (2, [person("271828182840", "髙橋　一郎"), person("314159265352", "髙橋　花子")]),
            (3, address("13", "131130", "150-0002", "渋谷二丁目1番1号")),
            (4, "2019-05-10"), (5, "131130")),
        "valid-no-parents-listed": message(
            (1, person("161803398872", "髙橋　美咲")),
            (3, address("13", "131130", "", "渋谷二丁目1番1号")), (4, "2019-05-10"), (5, "131130")),
        "invalid-bad-parent-my-number-check-digit": message(
            (1, person("161803398872", "髙橋　美咲")),
            (2, [person("271828182840", "髙橋　一郎"), person("314159265353", "髙橋　花子")]),
            (4, "2019-05-10"), (5, "131130")),
        "invalid-string-not-utf8": message(
            (1, person("161803398872", b"\xff\xfe")), (4, "2019-05-10"), (5, "131130")),
        "invalid-unknown-field": message(
            (1, person("161803398872", "髙橋　美咲")), (4, "2019-05-10")) + UNKNOWN_FIELD_99,
    },
}
for subject, files in examples.items():
    d = root / subject / "examples"
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / f"{name}.binpb").write_bytes(data)
        print(d / f"{name}.binpb", len(data), "bytes")
