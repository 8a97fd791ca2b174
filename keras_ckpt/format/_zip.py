"""The few zip structures a `.keras` file needs, laid out by hand (stored members, zip64 if large).

Python's `zipfile` writes members one after the other through Python; the one-pass writer instead
places the HDF5 member at a fixed offset and fills it with `os.pwrite`, so it needs the headers
as bytes: a local header padded to an exact length, the other members, and the central directory.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

try:  # zlib-ng's CRC-32: about 4x zlib's here (10 ms for 170 MB), and it releases the GIL too
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng has wheels for every common platform
    from zlib import crc32

__all__ = ["Member", "archive_tail", "crc32", "local_header"]

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_END64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_MAX32 = 0xFFFFFFFF
_PAD_ID = 0x434B  # "KC": keras-ckpt padding; readers skip extra fields they do not know


@dataclass(frozen=True)
class Member:
    """A stored (uncompressed) member: its name, CRC-32, size and local header offset."""

    name: str
    crc: int
    size: int
    offset: int


def _dos_time() -> tuple[int, int]:
    t = time.localtime()
    dos_time = t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2
    dos_date = (t.tm_year - 1980) << 9 | t.tm_mon << 5 | t.tm_mday
    return dos_time, dos_date


def _flags(name: str) -> tuple[bytes, int]:
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), 0x800


def local_header(name: str, crc: int, size: int, *, length: int | None = None) -> bytes:
    """A stored member's local header; with `length`, padded to exactly that many bytes."""
    encoded, flags = _flags(name)
    zip64 = size >= _MAX32
    extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
    shown = _MAX32 if zip64 else size
    dos_time, dos_date = _dos_time()
    version = 45 if zip64 else 20
    if length is not None:
        pad = length - _LOCAL.size - len(encoded) - len(extra)
        if pad < 4 or pad - 4 > 0xFFFF:
            raise ValueError(f"A zip local header cannot be padded to {length} bytes")
        extra += struct.pack("<HH", _PAD_ID, pad - 4) + bytes(pad - 4)
    head = _LOCAL.pack(
        0x04034B50,
        version,
        flags,
        0,
        dos_time,
        dos_date,
        crc,
        shown,
        shown,
        len(encoded),
        len(extra),
    )
    return head + encoded + extra


def archive_tail(first: Member, others: list[tuple[str, bytes]], start: int) -> bytes:
    """The bytes after the first member's data: the other members, then the central directory.

    Args:
        first: The member already in place (its header and data end at `start`).
        others: Further members (name, content), stored in this order.
        start: File offset where the returned bytes begin.
    """
    parts: list[bytes] = []
    members = [first]
    position = start
    for name, data in others:
        header = local_header(name, crc32(data), len(data))
        members.append(Member(name, crc32(data), len(data), position))
        parts += [header, data]
        position += len(header) + len(data)
    directory_start = position
    dos_time, dos_date = _dos_time()
    for member in members:
        encoded, flags = _flags(member.name)
        extra_values = []
        size = member.size
        offset = member.offset
        if size >= _MAX32:
            extra_values += [size, size]
            size = _MAX32
        if offset >= _MAX32:
            extra_values.append(offset)
            offset = _MAX32
        extra = (
            struct.pack(f"<HH{len(extra_values)}Q", 1, 8 * len(extra_values), *extra_values)
            if extra_values
            else b""
        )
        version = 45 if extra_values else 20
        parts.append(
            _CENTRAL.pack(
                0x02014B50,
                3 << 8 | version,
                version,
                flags,
                0,
                dos_time,
                dos_date,
                member.crc,
                size,
                size,
                len(encoded),
                len(extra),
                0,
                0,
                0,
                0o600 << 16,
                offset,
            )
            + encoded
            + extra
        )
        position += _CENTRAL.size + len(encoded) + len(extra)
    directory_size = position - directory_start
    count = len(members)
    if directory_start >= _MAX32 or count >= 0xFFFF or any(m.size >= _MAX32 for m in members):
        parts.append(
            _END64.pack(
                0x06064B50,
                _END64.size - 12,
                45,
                45,
                0,
                0,
                count,
                count,
                directory_size,
                directory_start,
            )
        )
        parts.append(_LOCATOR64.pack(0x07064B50, 0, position, 1))
    parts.append(
        _END.pack(
            0x06054B50,
            0,
            0,
            min(count, 0xFFFF),
            min(count, 0xFFFF),
            min(directory_size, _MAX32),
            min(directory_start, _MAX32),
            0,
        )
    )
    return b"".join(parts)
