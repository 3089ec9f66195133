"""The names of the Redis store's keys (the layout is in the package's docstring).

An account's keys share the hash tag ``{T}``, a digest of the account, so that
every script touches one cluster slot; on a cluster the journal's slot streams
get a tag solved to land in a given slot (:func:`slot_tag`).
"""

from __future__ import annotations

import binascii
import functools
import hashlib

from .._rules import Key

__all__ = ["Keys", "account_keys", "lp", "slot_tag", "tag"]


def lp(part: str) -> str:
    """``<utf-8 byte length>:<part>``: length prefixes make a key built of
    several parts injective in them."""
    return f"{len(part.encode())}:{part}"


@functools.lru_cache(maxsize=4096)
def tag(account: str) -> str:
    """The hash tag of an account's keys (16 hex digits)."""
    # A digest, not the account itself: an account may contain braces, which
    # would otherwise pick a different hash tag, and the digest spreads
    # accounts evenly over the cluster's slots.
    return hashlib.blake2b(account.encode(), digest_size=8).hexdigest()


@functools.lru_cache(maxsize=4096)
def account_keys(prefix: str, account: str) -> tuple[str, str, str, str]:
    """An account's key base ``P:{T}:``, its length-prefixed name, its
    due-set and its balance key: the parts of every key a claim names that
    do not change from call to call of one account, built once (a digest
    and a UTF-8 encoding per call were a tenth of a follow-up's Python)."""
    base = f"{prefix}:{{{tag(account)}}}:"
    lp_account = lp(account)
    return base, lp_account, f"{base}due", f"{base}b:{lp_account}"


#: A slot stream's hash tag is this many characters, each ``@`` to ``O``
#: (0x40 plus 4 free low bits), so every one of the cluster's 16,384 slots has
#: one (see slot_tag).
_SLOT_TAG_CHARS = 5


def _slot_tag_bit(i: int) -> bytes:
    """The message with only free bit ``i`` set (bit i % 4 of character i // 4)."""
    message = bytearray(_SLOT_TAG_CHARS)
    message[i // 4] = 1 << (i % 4)
    return bytes(message)


@functools.cache
def _slot_tag_basis() -> dict[int, tuple[int, int]]:
    """A basis, over GF(2), of the slots the free bits reach: highest bit of
    the slot vector -> (slot vector, the free bits that make it).

    Redis's slot is CRC16-XMODEM of the hash tag, modulo 16,384, and that CRC
    (zero initial value, no final xor) is linear over equal-length messages:
    crc(a ^ b) == crc(a) ^ crc(b). So the slot of ``@@@@@`` with some free
    bits flipped is the slot of ``@@@@@`` xor the slots of the single bits,
    and a tag for any slot is found by solving a 14-bit linear system: no
    search, a few microseconds, and the same answer on every host."""
    basis: dict[int, tuple[int, int]] = {}
    for i in range(4 * _SLOT_TAG_CHARS):
        vec, combo = binascii.crc_hqx(_slot_tag_bit(i), 0) & 0x3FFF, 1 << i
        for pivot in sorted(basis, reverse=True):
            if vec >> pivot & 1:
                vec ^= basis[pivot][0]
                combo ^= basis[pivot][1]
        if vec:
            basis[vec.bit_length() - 1] = (vec, combo)
    if len(basis) != 14:  # pragma: no cover - a property of CRC16, checked by the tests
        raise RuntimeError("the slot tag bits do not reach every cluster slot")
    return basis


@functools.lru_cache(maxsize=16384)
def slot_tag(slot: int) -> str:
    """A hash tag (5 characters of ``@A-O``) whose key slot is ``slot``: the
    slot stream of a cluster store's journal must share the slot of the
    accounts whose changes it records, and that slot is the digest tag's."""
    base = bytes([0x40] * _SLOT_TAG_CHARS)
    target = (slot & 0x3FFF) ^ (binascii.crc_hqx(base, 0) & 0x3FFF)
    combo = 0
    basis = _slot_tag_basis()
    for pivot in sorted(basis, reverse=True):
        if target >> pivot & 1:
            target ^= basis[pivot][0]
            combo ^= basis[pivot][1]
    chars = bytearray(base)
    for i in range(4 * _SLOT_TAG_CHARS):
        if combo >> i & 1:
            chars[i // 4] |= 1 << (i % 4)
    return chars.decode()


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class Keys:
    """The store's key names, from its prefix (and, on a cluster, the slot
    streams of its journal)."""

    prefix: str
    cluster: bool
    journal_key: str
    cursors_key: str

    def _base(self, account: str) -> str:
        return account_keys(self.prefix, account)[0]

    def job_key(self, key: Key) -> str:
        """The Redis key of one job (public for operators and tests)."""
        account, scope, job_id = key
        base, lp_account = account_keys(self.prefix, account)[:2]
        return f"{base}j:{lp_account}{lp(scope)}{lp(job_id)}"

    def balance_key(self, account: str) -> str:
        """The Redis key of one account's balance."""
        return account_keys(self.prefix, account)[3]

    def due_key(self, account: str) -> str:
        """The sorted set of the account slot's jobs by deadline."""
        return account_keys(self.prefix, account)[2]

    def _due_pattern(self) -> str:
        return f"{_escape_glob(self.prefix)}:{{{'?' * 16}}}:due"

    def journal_stream(self, account: str) -> str:
        """The stream the account's journal entries are written to: the
        journal itself on a standalone server; on a cluster the stream of the
        account's slot, ``<prefix>:{S}:journal`` (``S`` a tag in that slot),
        which readers merge into the journal (public for operators and tests)."""
        return self._stream_of_tag(tag(account))

    def _stream_of_tag(self, hash_tag: str) -> str:
        if not self.cluster:
            return self.journal_key
        slot = binascii.crc_hqx(hash_tag.encode(), 0) & 0x3FFF
        return f"{self.prefix}:{{{slot_tag(slot)}}}:journal"

    def _stream_of_due(self, due: str) -> str:
        # P:{T}:due, where P has no braces: T is between the first { and }.
        return self._stream_of_tag(due[due.index("{") + 1 : due.index("}")])
