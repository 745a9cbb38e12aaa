"""Key → hash slot, exactly as Valkey computes it.

``CRC16-XMODEM(key) mod 16384``, where only the hash tag is hashed when the
key has one: the bytes between the first ``{`` and the first ``}`` after it,
if that span is non-empty (``{user1}.a`` and ``{user1}.b`` share a slot;
``{}x`` hashes the whole key).
"""

from __future__ import annotations

NUM_SLOTS = 16384


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _table()


def crc16(data: bytes) -> int:
    """CRC16-XMODEM (poly 0x1021, init 0): ``crc16(b"123456789") == 0x31C3``."""
    crc = 0
    table = _TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of `key` that is hashed (its hash tag, or the whole key)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def key_slot(key: bytes) -> int:
    return crc16(hash_tag(key)) & (NUM_SLOTS - 1)
