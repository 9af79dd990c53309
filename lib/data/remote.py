"""NSD's 37 GiB stimulus file without downloading it: a read-only, seekable file over an S3 object read by byte
ranges (blocks cached in memory), which h5py opens like a local file, so ``imgBrick`` rows are read one by one."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from urllib.parse import urlparse

from lib.data import fetch

#: bytes per ranged GET: an NSD image (425 x 425 x 3 = 542 KB, contiguous) spans one or two blocks
BLOCK = 1 << 20


class RemoteError(OSError):
    """A remote object that cannot be read: a bad URL, a missing object or bucket."""


def parse_s3(url: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``."""
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc or not u.path.strip("/"):
        raise RemoteError(f"{url!r}: expected s3://bucket/key")
    return u.netloc, u.path.lstrip("/")


class RangeFile(io.RawIOBase):
    """``s3://bucket/key`` as a read-only binary file: each read fetches the ``block``-byte blocks it touches by
    ranged GETs (anonymous, :func:`lib.data.fetch.client`), keeping the last ``cache_blocks`` in memory.
    ``bytes_fetched`` counts what came over the network. Reads are not thread-safe on their own (h5py's global
    lock serialises them)."""

    def __init__(self, url: str, endpoint: str | None = None, block: int | None = None, cache_blocks: int = 64,
                 cl=None):  # fmt: skip

        super().__init__()
        self.url, (self.bucket, self.key) = url, parse_s3(url)
        self.cl = cl or fetch.client(endpoint)
        try:
            head = self.cl.head_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:  # noqa: BLE001 - one line, whatever the client raised
            raise RemoteError(str(fetch._error(e, self.bucket, self.key))) from None
        self.size, self.etag = int(head["ContentLength"]), head["ETag"]
        self.block, self.cache_blocks = int(block or BLOCK), int(cache_blocks)
        self.pos, self.bytes_fetched = 0, 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _get(self, k: int) -> bytes:
        with self._lock:
            if k in self._cache:
                self._cache.move_to_end(k)
                return self._cache[k]

        lo, hi = k * self.block, min(self.size, (k + 1) * self.block) - 1
        try:
            body = self.cl.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={lo}-{hi}", IfMatch=self.etag
            )
            data = body["Body"].read()
        except Exception as e:  # noqa: BLE001 - one line, whatever the client raised
            raise RemoteError(str(fetch._error(e, self.bucket, self.key))) from None
        if len(data) != hi - lo + 1:  # a server that ignored the range, or a short read: never wrong bytes
            raise RemoteError(f"{self.url}: bytes {lo}-{hi} asked, {len(data)} received")
        with self._lock:
            self.bytes_fetched += len(data)
            self._cache[k] = data
            while len(self._cache) > self.cache_blocks:
                self._cache.popitem(last=False)
        return data

    def readinto(self, b) -> int:
        n = min(len(b), max(0, self.size - self.pos))
        out, done = memoryview(b), 0
        while done < n:
            k, off = divmod(self.pos + done, self.block)
            data = self._get(k)[off : off + n - done]
            out[done : done + len(data)] = data
            done += len(data)
        self.pos += n
        return n
