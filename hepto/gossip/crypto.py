"""Sealing gossip: an AEAD envelope keyed from the cluster keyring, with a replay window.

Every stream frame travels as::

    [version: 1][nonce: 24][XChaCha20-Poly1305( timestamp_ms: 8 || payload ) + tag: 16]

and every datagram as::

    [version: 2][recipient: 4][nonce: 24][XChaCha20-Poly1305( timestamp_ms: 8 || payload )
                                          + tag: 16]

with the cluster name (for streams, the stream, direction and frame number; for
datagrams, the recipient's address and port) bound as associated data.  A datagram
replayed to another member than the one it was sealed for fails at the envelope: the
4 bytes of ``recipient``, a hash of the address it was sent to, say so before any
decryption (``misdirected``), and the associated data makes sure that a forged hash
does not help.  The first key of the ring seals, every key opens, so keys rotate
without downtime.  Nothing is ever accepted unsealed.  ``docs/gossip-state.rst`` gives
the rationale of each constant.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

import attrs
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
)
from nacl.exceptions import CryptoError
from nacl.utils import random as random_bytes
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hepto.observers import Observers

ENVELOPE_VERSION: Final = 1
#: Datagrams: bound to their recipient.
DATAGRAM_VERSION: Final = 2
RECIPIENT_TAG_SIZE: Final = 4
NONCE_SIZE: Final = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_SIZE: Final = crypto_aead_xchacha20poly1305_ietf_ABYTES
TIMESTAMP_SIZE: Final = 8
HEADER_SIZE: Final = 1 + NONCE_SIZE
#: Bytes an envelope adds to its payload: 49, within messages.SEALING_OVERHEAD (64).
OVERHEAD: Final = HEADER_SIZE + TIMESTAMP_SIZE + TAG_SIZE
#: And a datagram's: 53, within messages.SEALING_OVERHEAD too.
DATAGRAM_OVERHEAD: Final = OVERHEAD + RECIPIENT_TAG_SIZE
#: Timestamps further than this from our clock are refused: NTP keeps hosts within
#: milliseconds, an unsynchronised but sane clock within seconds; a minute leaves room
#: for both while bounding how long a captured packet is worth anything.
DEFAULT_WINDOW: Final = 60.0
#: Nonces remembered at most; beyond it the oldest are forgotten and the window shrinks.
DEFAULT_REPLAY_CAPACITY: Final = 1 << 17

# Domain separation: a key derived here is used for nothing else, and a cluster key
# reused by another program never yields the same AEAD key.
_KEY_PERSON: Final = b"hepto.gossip.v1"
_AD_PREFIX: Final = b"hepto/gossip/v1\0"

DATAGRAM: Final = b"datagram"
STREAM: Final = b"stream"

# Drop reasons, as counted and shown by ``hepto status``.
TRUNCATED: Final = "truncated"
UNKNOWN_VERSION: Final = "unknown-version"
UNDECRYPTABLE: Final = "undecryptable"
STALE: Final = "stale"
REPLAYED: Final = "replayed"
MALFORMED: Final = "malformed"
OVERSIZED: Final = "oversized"
OUT_OF_ORDER: Final = "out-of-order"
MISDIRECTED: Final = "misdirected"


def derive_key(cluster_key: bytes, person: bytes = _KEY_PERSON) -> bytes:
    """The AEAD key of one cluster key for one purpose: a personalised BLAKE2b of it.

    ``person`` (at most 16 bytes) names the purpose: gossip's by default; backups
    (``hepto.backup.sealing``) derive theirs with a person of their own, so that no
    key serves two purposes.
    """
    return hashlib.blake2b(cluster_key, digest_size=32, person=person).digest()


def associated_data(cluster: str, context: bytes) -> bytes:
    encoded = cluster.encode("utf-8")
    return _AD_PREFIX + len(encoded).to_bytes(1, "big") + encoded + context


def recipient_tag(recipient: bytes) -> bytes:
    """The hash of a recipient that a datagram carries in clear."""
    return hashlib.blake2b(recipient, digest_size=RECIPIENT_TAG_SIZE, person=_KEY_PERSON).digest()


class Dropped(Exception):
    """A message was refused; it has been counted under ``reason`` already."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define(eq=False)
class Drops:
    """Counts refused input by reason and logs it, at most once per ``log_interval``.

    A flood of garbage must cost a counter increment, not a log line each.
    """

    clock: IReactorTime
    log_interval: float = 10.0
    counts: Counter[str] = attrs.field(factory=Counter)
    _unlogged: Counter[str] = attrs.field(factory=Counter)
    _last_logged: dict[str, float] = attrs.field(factory=dict)
    _observers: Observers[[str]] = attrs.field(factory=lambda: Observers("Drop observer"))
    _log: Logger = attrs.field(factory=lambda: Logger(namespace="hepto.gossip.drops"))

    def observe(self, observer: Callable[[str], None]) -> Callable[[], None]:
        """Call ``observer(reason)`` after each drop; returns an unsubscriber."""
        return self._observers.subscribe(observer)

    def count(self, reason: str, peer: object = None, detail: str = "") -> None:
        self.counts[reason] += 1
        self._unlogged[reason] += 1
        self._observers.notify(reason)
        now = self.clock.seconds()
        last = self._last_logged.get(reason)
        if last is not None and now - last < self.log_interval:
            return
        self._last_logged[reason] = now
        self._log.warn(
            "Dropped {dropped} message(s) for {reason} since the last report; "
            "latest from {peer}{detail}",
            dropped=self._unlogged.pop(reason),
            reason=reason,
            peer=peer if peer is not None else "unknown",
            detail=f": {detail}" if detail else "",
            total=self.counts[reason],
        )

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@attrs.define(eq=False)
class ReplayWindow:
    """Nonces seen recently, forgotten once their timestamps leave the window.

    Memory is bounded by ``capacity``: when full, the oldest nonce is forgotten and its
    timestamp becomes a floor below which everything is refused as stale, so a replay of
    a forgotten packet can never get through — the window merely shrinks under a flood.
    """

    window_ms: int
    capacity: int = DEFAULT_REPLAY_CAPACITY
    _seen: dict[bytes, int] = attrs.field(factory=dict)
    _by_age: list[tuple[int, bytes]] = attrs.field(factory=list)
    _floor: int = -(1 << 63)

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, nonce: bytes, timestamp_ms: int, now_ms: int) -> str | None:
        """Record the nonce if acceptable; otherwise return the reason to refuse it."""
        self._expire(now_ms)
        if abs(timestamp_ms - now_ms) > self.window_ms or timestamp_ms <= self._floor:
            return STALE
        if nonce in self._seen:
            return REPLAYED
        while len(self._seen) >= self.capacity:
            forgotten_at, forgotten = heapq.heappop(self._by_age)
            del self._seen[forgotten]
            self._floor = max(self._floor, forgotten_at)
        if timestamp_ms <= self._floor:
            return STALE
        self._seen[nonce] = timestamp_ms
        heapq.heappush(self._by_age, (timestamp_ms, nonce))
        return None

    def _expire(self, now_ms: int) -> None:
        horizon = now_ms - self.window_ms
        while self._by_age and self._by_age[0][0] < horizon:
            _, nonce = heapq.heappop(self._by_age)
            del self._seen[nonce]


@attrs.define(eq=False)
class Keyring:
    """Seals with the first key, opens with any; refuses stale and replayed envelopes."""

    keys: tuple[bytes, ...] = attrs.field(repr=False)  # Never in a log line.
    cluster: str
    clock: IReactorTime
    drops: Drops
    replay: ReplayWindow

    @classmethod
    def from_cluster_keys(
        cls,
        cluster_keys: Sequence[bytes],
        cluster: str,
        clock: IReactorTime,
        drops: Drops | None = None,
        window: float = DEFAULT_WINDOW,
        replay_capacity: int = DEFAULT_REPLAY_CAPACITY,
    ) -> Keyring:
        if not cluster_keys:
            raise ValueError("a keyring needs at least one key")
        return cls(
            keys=tuple(derive_key(key) for key in cluster_keys),
            cluster=cluster,
            clock=clock,
            drops=drops if drops is not None else Drops(clock),
            replay=ReplayWindow(int(window * 1000), replay_capacity),
        )

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def seal(self, payload: bytes, context: bytes = DATAGRAM) -> bytes:
        nonce = random_bytes(NONCE_SIZE)
        plaintext = self._now_ms().to_bytes(TIMESTAMP_SIZE, "big", signed=True) + payload
        ciphertext = crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, associated_data(self.cluster, context), nonce, self.keys[0]
        )
        return bytes((ENVELOPE_VERSION,)) + nonce + ciphertext

    def open(self, envelope: bytes, context: bytes = DATAGRAM, peer: object = None) -> bytes:
        """The payload of a genuine, fresh envelope; otherwise count and raise Dropped."""
        if len(envelope) < OVERHEAD:
            raise self.refuse(TRUNCATED, peer, f"{len(envelope)} bytes")
        if envelope[0] != ENVELOPE_VERSION:
            raise self.refuse(UNKNOWN_VERSION, peer, f"version {envelope[0]}")
        return self._open(envelope[1:], context, peer)

    def seal_datagram(self, payload: bytes, recipient: bytes) -> bytes:
        """A datagram for ``recipient`` (its address, as the transport says) alone."""
        envelope = self.seal(payload, DATAGRAM + recipient)
        return bytes((DATAGRAM_VERSION,)) + recipient_tag(recipient) + envelope[1:]

    def open_datagram(self, datagram: bytes, recipient: bytes, peer: object = None) -> bytes:
        """The payload of a genuine, fresh datagram sealed for ``recipient``, us."""
        if len(datagram) < DATAGRAM_OVERHEAD:
            raise self.refuse(TRUNCATED, peer, f"{len(datagram)} bytes")
        if datagram[0] != DATAGRAM_VERSION:
            raise self.refuse(UNKNOWN_VERSION, peer, f"version {datagram[0]}")
        if datagram[1 : 1 + RECIPIENT_TAG_SIZE] != recipient_tag(recipient):
            raise self.refuse(MISDIRECTED, peer, "sealed for another recipient")
        return self._open(datagram[1 + RECIPIENT_TAG_SIZE :], DATAGRAM + recipient, peer)

    def _open(self, sealed: bytes, context: bytes, peer: object) -> bytes:
        """``sealed`` is the nonce and the ciphertext."""
        nonce = sealed[:NONCE_SIZE]
        plaintext = self._decrypt(nonce, sealed[NONCE_SIZE:], context)
        if plaintext is None:
            raise self.refuse(UNDECRYPTABLE, peer)
        timestamp = int.from_bytes(plaintext[:TIMESTAMP_SIZE], "big", signed=True)
        refusal = self.replay.admit(nonce, timestamp, self._now_ms())
        if refusal is not None:
            raise self.refuse(refusal, peer, f"sent at {timestamp / 1000:.3f}")
        return plaintext[TIMESTAMP_SIZE:]

    def _decrypt(self, nonce: bytes, ciphertext: bytes, context: bytes) -> bytes | None:
        data = associated_data(self.cluster, context)
        for key in self.keys:
            try:
                return bytes(
                    crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, data, nonce, key)
                )
            except CryptoError:
                continue
        return None

    def refuse(self, reason: str, peer: object, detail: str = "") -> Dropped:
        self.drops.count(reason, peer, detail)
        return Dropped(reason)


_INITIATOR: Final = b"i"
_RESPONDER: Final = b"r"


@attrs.define(eq=False)
class StreamCipher:
    """One side of an encrypted stream: every frame bound to the stream, direction and order.

    The initiator's first frame is bound to the cluster alone; its nonce, fresh and
    checked against the replay window, then names the stream.  Every later frame, either
    way, carries that name, its direction and its number in the associated data, so
    frames cannot be dropped, reordered, reflected or spliced into another stream.
    """

    keyring: Keyring
    initiator: bool
    stream_id: bytes | None = None
    _sent: int = 0
    _received: int = 0

    def _context(self, outgoing: bool, number: int) -> bytes:
        sender = _INITIATOR if outgoing == self.initiator else _RESPONDER
        return STREAM + (self.stream_id or b"") + sender + number.to_bytes(8, "big")

    def seal(self, payload: bytes) -> bytes:
        if self.stream_id is None and not self.initiator:
            raise RuntimeError("a responder cannot speak before the initiator")
        envelope = self.keyring.seal(payload, self._context(True, self._sent))
        if self.stream_id is None:
            self.stream_id = envelope[1:HEADER_SIZE]
        self._sent += 1
        return envelope

    def open(self, envelope: bytes, peer: object = None) -> bytes:
        if self.stream_id is None and self.initiator:
            raise self.keyring.refuse(OUT_OF_ORDER, peer, "the responder spoke first")
        payload = self.keyring.open(envelope, self._context(False, self._received), peer)
        if self.stream_id is None:
            self.stream_id = envelope[1:HEADER_SIZE]
        self._received += 1
        return payload
