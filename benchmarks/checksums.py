"""Throughput of checksum candidates on this machine (GB/s), for the record format.

The last row is what a commit really pays per byte: `keras_ckpt.store.local.seal_file` reading a
file from the page cache in 8 MB chunks and computing its crc32c (without the fsync).

Run: .venv/bin/python benchmarks/checksums.py
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
import zlib


def candidates() -> dict:
    found = {
        "sha256": lambda b: hashlib.sha256(b).hexdigest(),
        "blake2b": lambda b: hashlib.blake2b(b).hexdigest(),
        "zlib.crc32": lambda b: zlib.crc32(b),
    }
    try:
        import google_crc32c

        found["crc32c (google-crc32c)"] = lambda b: google_crc32c.value(b)
    except ImportError:
        pass
    try:
        import xxhash

        found["xxh3_64"] = lambda b: xxhash.xxh3_64_intdigest(b)
        found["xxh64"] = lambda b: xxhash.xxh64_intdigest(b)
    except ImportError:
        pass
    return found


def main(size_mb: int = 256, repeats: int = 5) -> None:
    data = os.urandom(size_mb * 1024 * 1024)
    print(f"{'algorithm':28s} {'GB/s (median)':>14s} {'min':>8s} {'max':>8s}")
    for name, fn in candidates().items():
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(data)
            rates.append(len(data) / (time.perf_counter() - start) / 1e9)
        print(f"{name:28s} {statistics.median(rates):14.2f} {min(rates):8.2f} {max(rates):8.2f}")
    try:
        from keras_ckpt.store.local import seal_file
    except ImportError:
        return
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            seal_file(f.name, sync=False)
            rates.append(len(data) / (time.perf_counter() - start) / 1e9)
    name = "seal_file (read + crc32c)"
    print(f"{name:28s} {statistics.median(rates):14.2f} {min(rates):8.2f} {max(rates):8.2f}")


if __name__ == "__main__":
    main()
