"""Signed records: what a member says about itself, in a form anyone can check.

Wire form::

    [format: 1][Ed25519 signature: 64][canonical JSON]

The JSON is ``{"data": {...}, "key": "<hex public key>", "name": ..., "version": n}``
with sorted keys and no whitespace; the signature covers a domain-separation prefix,
the cluster name and the JSON, so a record of one cluster is worthless in another.
Anything but the canonical encoding is refused, so one record has exactly one form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, NoReturn

import attrs

from hepto import state
from hepto.config import ConfigError, parse_name
from hepto.gossip.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, verify

RECORD_FORMAT: Final = 1
#: The largest record: a master's carries the CA and the certificates it signed, ~3 KiB
#: per node; 1 MiB leaves room for a few hundred nodes and bounds what a peer can make
#: us hold per name.
MAX_RECORD_SIZE: Final = 1 << 20
#: Versions stay within what every JSON implementation reads exactly.
MAX_VERSION: Final = (1 << 53) - 1
_SIGNED_PREFIX: Final = b"hepto/record/v1\0"
_HEADER_SIZE: Final = 1 + SIGNATURE_SIZE

# Refusal reasons, counted as drops.
BAD_RECORD: Final = "bad-record"
BAD_SIGNATURE: Final = "bad-signature"
OVERSIZED_RECORD: Final = "oversized-record"


class RecordError(Exception):
    """A record was refused: ``reason`` is the drop counter, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; raises TypeError/ValueError for non-JSON values."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _signed_message(cluster: str, body: bytes) -> bytes:
    return _SIGNED_PREFIX + cluster.encode("utf-8") + b"\0" + body


@attrs.frozen
class SignedRecord:
    """A verified record and its exact wire form."""

    name: str
    version: int
    key: bytes
    data: Mapping[str, Any]
    blob: bytes = attrs.field(repr=False)

    @property
    def record(self) -> state.Record:
        return state.Record(self.name, self.version, self.data, self.key)

    def __len__(self) -> int:
        return len(self.blob)


def sign_record(
    identity: Identity, cluster: str, name: str, version: int, data: Mapping[str, Any]
) -> SignedRecord:
    """Sign a new record; raises ValueError if it is not JSON or too large to travel."""
    if not 0 < version <= MAX_VERSION:
        raise ValueError(f"record version {version} out of range")
    body = canonical_json(
        {"name": name, "version": version, "key": identity.public_key.hex(), "data": data}
    )
    blob = bytes((RECORD_FORMAT,)) + identity.sign(_signed_message(cluster, body)) + body
    if len(blob) > MAX_RECORD_SIZE:
        raise ValueError(
            f"the record of {name} would be {len(blob)} bytes; at most {MAX_RECORD_SIZE} travel"
        )
    # Round-trip so that what we hold is exactly what others will read.
    return SignedRecord(name, version, identity.public_key, json.loads(body)["data"], blob)


def open_record(blob: bytes, cluster: str) -> SignedRecord:
    """Check a record's form and signature; raises RecordError."""
    if len(blob) > MAX_RECORD_SIZE:
        _refuse(OVERSIZED_RECORD, f"{len(blob)} bytes")
    if len(blob) <= _HEADER_SIZE or blob[0] != RECORD_FORMAT:
        _refuse(BAD_RECORD, "truncated or of an unknown format")
    signature, body = blob[1:_HEADER_SIZE], blob[_HEADER_SIZE:]
    fields = _parse(body)
    name, version, key_text, data = (
        fields.get("name"),
        fields.get("version"),
        fields.get("key"),
        fields.get("data"),
    )
    if set(fields) != {"name", "version", "key", "data"}:
        _refuse(BAD_RECORD, f"fields {sorted(fields)}")
    if not isinstance(name, str):
        _refuse(BAD_RECORD, "name is not a string")
    try:
        parse_name(name)
    except ConfigError:
        _refuse(BAD_RECORD, f"{name[:64]!r} is not a node name")
    if type(version) is not int or not 0 < version <= MAX_VERSION:
        _refuse(BAD_RECORD, f"version {version!r} of {name}")
    if not isinstance(data, dict):
        _refuse(BAD_RECORD, f"data of {name} is not an object")
    key = _hex_key(key_text)
    if not verify(key, _signed_message(cluster, body), signature):
        _refuse(BAD_SIGNATURE, f"record {name} v{version}")
    return SignedRecord(name, version, key, data, bytes(blob))


def _parse(body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        _refuse(BAD_RECORD, f"not JSON: {str(error)[:80]}")
    if not isinstance(fields, dict):
        _refuse(BAD_RECORD, "not a JSON object")
    try:
        canonical = canonical_json(fields)
    except (TypeError, ValueError, RecursionError):
        _refuse(BAD_RECORD, "not re-encodable")
    if canonical != body:
        _refuse(BAD_RECORD, "not in canonical form")
    return fields


def _hex_key(text: object) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * PUBLIC_KEY_SIZE:
        _refuse(BAD_RECORD, "key is not a hex Ed25519 public key")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        _refuse(BAD_RECORD, "key is not hexadecimal")
    if key.hex() != text:
        _refuse(BAD_RECORD, "key is not in lowercase hexadecimal")
    return key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate keys")
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _refuse(reason: str, detail: str) -> NoReturn:
    raise RecordError(reason, detail)
