"""Getting real NSD: ``python -m lib.data.fetch --subject 1 --root DIR`` (``make fetch``) plans which files the
pipeline needs for a subject from ``data_manifests/nsd_fetch.csv``, prints the plan with sizes (``--dry-run`` stops
there), then downloads them anonymously from NSD's public S3 bucket (``--endpoint`` and ``--bucket`` point it at a
mirror) with boto3, several files in parallel, a progress bar per file and overall. Every file is resumable (an
interrupted one continues from its partial copy with a ranged request, conditional on the same object's ETag),
verified (size, and the MD5 behind the S3 ETag: of the whole object, or of each part for a multipart upload), atomic
(the final name appears only once verified; a mismatch names the file and what differed, and the partial copy
is repaired part by part or deleted: below) and recorded (``<root>/fetch_record.json``: key, size, ETag, MD5,
time); a second run transfers nothing.

On a faulty network: every reply that is not streamed (listings, errors) is checked to be whole and well-formed
before botocore reads it, so a reply cut after its headers is never taken for an empty listing, nor a damaged one
for a server error; a dropped stream continues where it stopped. Both retry with exponential backoff and full
jitter, bounded in tries without a new byte (the count starts again whenever bytes arrive) and in time. A fetch
ends with every planned file present and verified, or fails naming each file that is not, what went wrong and
what was kept. A file whose ETag does not match has only its bad parts fetched again when the server keeps a
checksum per part (S3's composite checksums); without them it is deleted and a rerun fetches it whole.

boto3/botocore is the client: the S3 API's own implementation (ranged and conditional GETs, retries with backoff,
connection pooling, unsigned requests), maintained by AWS, with no filesystem layer between us and the checks."""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import errno
import hashlib
import json
import os
import queue
import random
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from lib import fileio, paths, runtime
from lib.data.rois import ROI_FILES

BUCKET = "natural-scenes-dataset"
REGION = "us-east-2"
MANIFEST = paths.PROJ_ROOT / "data_manifests" / "nsd_fetch.csv"
RECORD = "fetch_record.json"
LOCK = ".fetch.lock"
WHAT = ("design", "stiminfo", "betas", "ncsnr", "rois", "prf", "anat", "behaviour", "stimuli", "captions")
#: what the pipeline needs for one subject (the 37 GiB stimulus file and COCO's captions are asked for by name)
DEFAULT_WHAT = ("design", "stiminfo", "betas", "ncsnr", "rois", "prf", "anat", "behaviour")
OPTIONAL = ("anat",)  # planned when the bucket holds it, else left out with a note
COCO_CAPTIONS = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
CHUNK = 1 << 20
BESIDE = 8 << 20  # objects above this size are hashed in a second thread as they arrive
#: retries of a listing or a dropped stream: exponential backoff with full jitter (a wait drawn from 0 .. BACKOFF *
#: 2^(try - 1), at most BACKOFF_MAX), given up after TRIES tries in a row that brought no new byte or PATIENCE seconds
#: without one; a read silent for READ_TIMEOUT seconds counts as a drop
TRIES = 6
#: fetches of one part whose checksum came wrong before the fetch gives up on it (keeping every byte)
PART_TRIES = 3
#: per-part checksums S3 keeps for objects uploaded with them (CRC64NVME is whole-object only)
PART_SUMS = ("CRC32", "CRC32C", "SHA1", "SHA256")
BACKOFF = 0.5
BACKOFF_MAX = 20.0
PATIENCE = 600.0
READ_TIMEOUT = 60.0


class FetchError(RuntimeError):
    """A download that cannot go on: a missing object or bucket, a checksum that does not match, a full disk."""


@dataclass(frozen=True)
class Item:
    key: str
    size: int
    etag: str  # without quotes; "<md5 of part md5s>-<parts>" for a multipart upload
    what: str


def manifest(path: Path = MANIFEST) -> list[tuple[str, str]]:
    """(what, key pattern) rows of ``data_manifests/nsd_fetch.csv``."""
    with open(path, newline="") as f:
        return [(row["what"], row["key"]) for row in csv.DictReader(f)]


def client(endpoint: str | None = None, region: str = REGION, read_timeout: float | None = None):
    """An anonymous (unsigned) S3 client with retries, pooled connections for parallel downloads, whose replies
    that are not streamed are checked whole and well-formed before they are parsed (:func:`_check_reply`).
    ``read_timeout``: seconds a connection may stay silent (default :data:`READ_TIMEOUT`)."""
    import boto3  # lazy: boto3: make fetch only
    from botocore import UNSIGNED  # lazy: boto3: make fetch only
    from botocore.config import Config  # lazy: boto3: make fetch only

    cfg = Config(signature_version=UNSIGNED, retries={"max_attempts": 8, "mode": "standard"},
                 max_pool_connections=32, read_timeout=read_timeout or READ_TIMEOUT)  # fmt: skip
    cl = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=cfg)
    cl.meta.events.register("before-parse.s3.*", _check_reply)
    return cl


class CutReply(Exception):
    """A reply that arrived incomplete or damaged: a connection dropped mid-reply, or bytes changed on the way."""


def _check_reply(operation_model=None, response_dict=None, **_) -> None:
    """botocore's before-parse hook: a reply body (not streamed, not a HEAD) must have the length its headers give
    and, when not empty, be well-formed XML. botocore itself parses an empty body as an empty listing and turns a
    body it cannot parse into "500 Internal Server Error", which a server never sent."""
    body = (response_dict or {}).get("body")
    head = operation_model is not None and operation_model.http["method"] == "HEAD"
    if head or not isinstance(body, bytes | bytearray):
        return
    want = (response_dict.get("headers") or {}).get("content-length")
    if want is not None and len(body) != int(want):
        raise CutReply(f"a reply cut short ({len(body)} of its {want} bytes arrived)")
    if body.strip():
        try:
            ElementTree.fromstring(body)
        except ElementTree.ParseError as e:
            raise CutReply(f"a damaged reply (not well-formed XML: {e})") from None


class _Retry:
    """When to try again: :meth:`failed` waits (exponential backoff, full jitter) and says whether to go on;
    :meth:`progress` (bytes arrived) starts the count and the clock again."""

    def __init__(self) -> None:
        self.fails, self.since = 0, time.monotonic()

    def progress(self) -> None:
        self.fails, self.since = 0, time.monotonic()

    def failed(self) -> bool:
        self.fails += 1
        if self.fails >= TRIES or time.monotonic() - self.since > PATIENCE:
            return False
        time.sleep(random.uniform(0, min(BACKOFF_MAX, BACKOFF * 2 ** (self.fails - 1))))
        return True

    def why(self) -> str:
        waited = time.monotonic() - self.since
        return f"{self.fails} failed tries since the last new byte ({waited:.0f} s)"


def _error(e: Exception, bucket: str, key: str | None = None) -> FetchError:
    code = ((getattr(e, "response", None) or {}).get("Error") or {}).get("Code", "")
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if code == "NoSuchBucket":
        return FetchError(f"s3://{bucket}: no such bucket (check --bucket and --endpoint)")
    if code in ("404", "NoSuchKey", "NotFound"):
        return FetchError(f"{where}: no such object on the bucket (check the subject and --what)")
    if code in ("412", "PreconditionFailed"):
        return FetchError(f"{where}: the object changed on the server since the partial copy began; rerun")
    return FetchError(f"{where}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")


def _listing(cl, bucket: str, prefix: str, limit: int | None = None) -> list[str]:
    """Every key under ``prefix`` (the first ``limit``); a reply that arrives cut or damaged, or without the fields
    every listing has, is asked for again (:class:`_Retry`), then fails naming the prefix."""
    keys, token, retry = [], None, _Retry()
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix} | ({"ContinuationToken": token} if token else {})
        kw |= {"MaxKeys": limit} if limit else {}
        try:
            page = cl.list_objects_v2(**kw)
            if "IsTruncated" not in page or len(page.get("Contents", [])) != page.get("KeyCount", -1):
                raise CutReply("a listing reply without its fields (cut after its headers?)")
        except CutReply as e:
            if retry.failed():
                continue
            raise FetchError(f"s3://{bucket}/{prefix}: the listing failed, {retry.why()}; last: {e}. The connection "
                             "drops mid-reply (a flaky network or proxy?): rerun, or check --endpoint") from None  # fmt: skip
        except Exception as e:  # noqa: BLE001 - every client error becomes one line
            raise _error(e, bucket) from None
        retry.progress()
        keys += [o["Key"] for o in page.get("Contents", [])]
        if limit or not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def plan(subject: int, what=DEFAULT_WHAT, sessions=None, bucket: str = BUCKET, endpoint: str | None = None,
         space: str = "func1pt8mm", betas: str = "betas_fithrf_GLMdenoise_RR", cl=None) -> list[Item]:  # fmt: skip
    """The objects to download for ``subject``, each with its size and ETag (HEAD requests). ``sessions``: None
    for every session the bucket holds for the subject, else their numbers. ROI files are those of
    :data:`lib.data.rois.ROI_FILES` the bucket holds (``nsdgeneral`` is required)."""
    what = tuple(what)
    unknown = sorted(set(what) - set(WHAT))
    if unknown:
        raise FetchError(f"--what {','.join(unknown)}: expected some of {','.join(WHAT)}")
    if not 1 <= int(subject) <= 8:
        raise FetchError(f"subject={subject}: expected 1..8")
    cl = cl or client(endpoint)
    _listing(
        cl, bucket, "nsddata/experiments/", limit=1
    )  # the bucket exists (a HEAD of a missing one says 404 only)
    subj = f"{int(subject):02d}"
    fields = {"subj": subj, "space": space, "betas": betas}
    keys: list[tuple[str, str]] = []
    for w, pattern in manifest():
        if w not in what:
            continue
        if "{session}" in pattern:
            stem, _, suffix = pattern.format(**fields, session="\0").partition("\0")
            prefix = stem[: stem.rindex("/") + 1]
            listed = sorted(
                k for k in _listing(cl, bucket, prefix) if k.startswith(stem) and k.endswith(suffix)
            )
            if sessions is not None:
                want = {pattern.format(**fields, session=f"{int(s):02d}") for s in sessions}
                missing = sorted(want - set(listed))
                if missing:
                    raise FetchError(f"s3://{bucket}/{missing[0]}: no such object (subject {subject} has "
                                     f"{len(listed)} sessions on the bucket)")  # fmt: skip
                listed = sorted(want)
            if not listed:
                raise FetchError(f"s3://{bucket}/{prefix}: no betas for subject {subject} under this prefix")
            keys += [(w, k) for k in listed]
        elif "{roi}" in pattern:
            prefix = pattern.format(**fields, roi="")
            prefix = prefix[: prefix.rindex("/") + 1]
            present = set(_listing(cl, bucket, prefix))
            found = [pattern.format(**fields, roi=r) for r in ROI_FILES]
            found = [k for k in found if k in present]
            if ".nii.gz" in pattern and pattern.format(**fields, roi="nsdgeneral") not in present:
                raise FetchError(f"s3://{bucket}/{pattern.format(**fields, roi='nsdgeneral')}: no such object "
                                 "(every subject has nsdgeneral)")  # fmt: skip
            keys += [(w, k) for k in found]
        elif "{split}" in pattern:
            keys += [(w, pattern.format(split=s)) for s in ("train", "val")]
        else:
            keys.append((w, pattern.format(**fields)))
    _check_pairs(keys, bucket)
    items = []
    for w, key in keys:
        try:
            head = cl.head_object(Bucket=bucket, Key=key)
        except Exception as e:  # noqa: BLE001
            err = _error(e, bucket, key)
            if w in OPTIONAL and "no such object" in str(err):
                continue
            if w == "captions" and "no such object" in str(err):
                raise FetchError(f"{err}; NSD does not ship COCO's captions: download {COCO_CAPTIONS} and put "
                                 f"captions_train2017.json and captions_val2017.json under "
                                 f"<root>/nsddata_stimuli/stimuli/nsd/annotations/") from None  # fmt: skip
            raise err from None
        items.append(Item(key, int(head["ContentLength"]), head["ETag"].strip('"'), w))
    return items


def _check_pairs(keys: list[tuple[str, str]], bucket: str) -> None:
    """The manifest's two ``rois`` rows pair each ROI volume with its label table: a plan with one and not the other
    came from a listing that went wrong (or a bucket that lacks a file), never from a complete one."""
    names = {
        end: {k.rsplit("/", 1)[1].removesuffix(end) for w, k in keys if w == "rois" and k.endswith(end)}
        for end in (".nii.gz", ".mgz.ctab")
    }
    odd = sorted(names[".nii.gz"] ^ names[".mgz.ctab"])
    if odd:
        raise FetchError(f"s3://{bucket}: ROI {odd} listed with only one of its volume (.nii.gz) and label table "
                         "(.mgz.ctab), which the manifest pairs: rerun; if it stays, the bucket lacks the other")  # fmt: skip


@dataclass(frozen=True)
class _Parts:
    """How a multipart object was uploaded: its part ``size`` (None: one part, or a server without part HEADs) and
    the ``algo`` of the per-part checksums the server keeps beside it (S3's "composite" additional checksums; None:
    uploaded without them, as any object before 2025, so a bad part cannot be found and the whole file moves)."""

    size: int | None = None
    algo: str | None = None

    def count(self, item: Item) -> int:
        return -(-item.size // self.size) if self.size else 1

    def span(self, item: Item, k: int) -> tuple[int, int]:
        """Bytes [start, stop) of part ``k`` (1-based)."""
        return (k - 1) * self.size, min(k * self.size, item.size)


def _parts(cl, bucket: str, item: Item) -> _Parts:
    """A HEAD of part 1 with checksums asked for: the part size, and the algorithm of the per-part checksums when
    the server keeps them (and this machine can compute it)."""
    if "-" not in item.etag:
        return _Parts()
    head = None
    for ask in ({"ChecksumMode": "ENABLED"}, {}):  # a server that refuses the checksum header: the size alone
        try:
            head = cl.head_object(Bucket=bucket, Key=item.key, PartNumber=1, **ask)
            break
        except Exception:  # noqa: BLE001 - a server without part HEADs: the candidates below
            continue
    if head is None:
        return _Parts()
    size = int(head["ContentLength"])
    algos = [a for a in PART_SUMS if f"Checksum{a}" in head and "-" not in head[f"Checksum{a}"]]
    # a full-object checksum (FULL_OBJECT) says nothing of one part; nor do equal parts of another count
    composite = head.get("ChecksumType", "COMPOSITE") == "COMPOSITE"
    same_count = size > 0 and _Parts(size).count(item) == int(item.etag.rsplit("-", 1)[1])
    usable = [a for a in algos if _summer(a) is not None]
    return _Parts(size, usable[0] if composite and same_count and usable else None)


def _summer(algo: str):
    """A fresh ``update(bytes)`` / ``digest() -> bytes`` object for ``algo``; None for CRC32C without a library."""
    if algo in ("SHA1", "SHA256"):
        return hashlib.new(algo.lower())
    if algo == "CRC32":
        return _Crc(zlib.crc32)
    try:  # CRC32C: botocore's own optional accelerator, or the crc32c package
        from awscrt.checksums import crc32c  # lazy: optional
    except ImportError:
        try:
            from crc32c import crc32c  # lazy: optional
        except ImportError:
            return None
    return _Crc(crc32c)


class _Crc:
    def __init__(self, fn):
        self.fn, self.value = fn, 0

    def update(self, block: bytes) -> None:
        self.value = self.fn(block, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _part_sum(path: Path, start: int, stop: int, algo: str) -> str:
    """``algo``'s checksum of bytes [start, stop) of ``path``, base64 as S3 gives it."""
    h = _summer(algo)
    with open(path, "rb") as f:
        f.seek(start)
        while start < stop and (block := f.read(min(CHUNK, stop - start))):
            h.update(block)
            start += len(block)
    return _encoded(h)


def _encoded(h) -> str:
    """A checksum as S3 gives it: the digest in base64."""
    return base64.b64encode(h.digest()).decode()


class _Hasher:
    """S3's ETag of a byte stream, computed as it passes: the whole object's MD5, or with ``part_size`` the MD5 of
    each part's MD5s (a multipart upload's ETag, ``<hex>-<parts>``). One MD5 pass either way."""

    def __init__(self, part_size: int | None = None):
        self.part_size, self.cur, self.n, self.parts = part_size, hashlib.md5(), 0, []

    def update(self, block: bytes) -> None:
        if self.part_size is None:
            self.cur.update(block)
            return
        view = memoryview(block)
        while len(view):
            take = min(len(view), self.part_size - self.n)
            self.cur.update(view[:take])
            self.n += take
            view = view[take:]
            if self.n == self.part_size:
                self.parts.append(self.cur.digest())
                self.cur, self.n = hashlib.md5(), 0

    def etag(self) -> str:
        if self.part_size is None:
            return self.cur.hexdigest()
        parts = self.parts + ([self.cur.digest()] if self.n else [])
        return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


class _Background:
    """Calls ``fn`` on each item in a second thread, in order; leaving the block waits for all of them."""

    def __init__(self, fn):

        self.fn, self.q, self.error = fn, queue.Queue(maxsize=16), None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as e:  # noqa: BLE001 - raised in the caller's thread on exit
                    self.error = e

    def __enter__(self):
        self.thread.start()
        return self.q.put

    def __exit__(self, *exc) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


def etag_of(path: Path, part_size: int | None = None) -> str:
    """The ETag S3 gives an upload of ``path`` in parts of ``part_size`` bytes (None: in one part, its MD5)."""
    h = _Hasher(part_size)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.etag()


def _candidates(item: Item, part_size: int | None) -> list[int | None]:
    """Part sizes to check a multipart ETag with: the server's, or the usual client part sizes that give its count."""
    if "-" not in item.etag:
        return [None]
    if part_size:
        return [part_size]
    n_parts = int(item.etag.rsplit("-", 1)[1])
    sizes = [m << 20 for m in (8, 5, 16, 32, 64, 128, 256, 512)]
    return [p for p in sizes if -(-item.size // p) == n_parts] or sizes[:1]


def verify(path: Path, item: Item, part_size: int | None = None, streamed: str | None = None) -> None:
    """Raise unless ``path`` has ``item``'s size and ETag (a multipart one with the server's part size, or with the
    usual client part sizes that give its part count). ``streamed``: the ETag already computed as the file came
    in at ``part_size`` (no second read when that is the only candidate)."""
    size = path.stat().st_size
    if size != item.size:
        raise FetchError(f"{item.key}: {size} bytes, expected {item.size}")
    candidates = _candidates(item, part_size)
    for p in candidates:
        got = streamed if streamed is not None and candidates == [part_size] else etag_of(path, p)
        if got == item.etag:
            return
    kind = "MD5" if "-" not in item.etag else "multipart MD5"
    raise FetchError(f"{item.key}: {kind} {got} does not match the ETag {item.etag}")


@dataclass
class Result:
    fetched: list[str]
    skipped: list[str]
    bytes_transferred: int
    seconds: float


class _Record:
    """``<root>/fetch_record.json``: what was fetched (key, size, ETag, MD5, time), written atomically, at most once a
    second while files arrive and once at the end (a file whose entry a crash lost is verified once next run)."""

    def __init__(self, root: Path):
        self.path, self.lock, self.written, self.dirty = root / RECORD, threading.Lock(), 0.0, False
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"files": {}}

    def done(self, item: Item, dest: Path) -> bool:
        r = self.data["files"].get(item.key)
        return (
            bool(r)
            and r["size"] == item.size
            and r["etag"] == item.etag
            and dest.is_file()
            and (dest.stat().st_size == item.size)
        )

    def add(self, item: Item, checked: str) -> None:
        with self.lock:
            self.data["files"][item.key] = {"size": item.size, "etag": item.etag, "checked": checked,
                                            "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
            self.dirty = True
        if time.monotonic() - self.written > 1.0:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if self.dirty:
                fileio.write_json(self.path, self.data)
                self.dirty, self.written = False, time.monotonic()


def _partial(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial")


def _checked(item: Item, part_size: int | None) -> str:
    """How a file was checked, for the record."""
    if "-" not in item.etag:
        return "size and MD5 (the ETag)"
    return f"size and the MD5 of each {part_size or 'usual-size'}-byte part (the multipart ETag)"


def _get_range(
    cl, bucket: str, item: Item, f, start: int, stop: int, on_block, dest: Path, part: Path
) -> None:
    """Write bytes [start, stop) of ``item`` at their place in ``f`` (``part`` opened ``r+b``), each block also
    given to ``on_block``; a dropped stream continues where it stopped (:class:`_Retry`), conditional on the
    planned ETag. A :class:`FetchError` says what went wrong and what is kept."""
    retry, at = _Retry(), start
    while at < stop:
        try:
            resp = cl.get_object(Bucket=bucket, Key=item.key, Range=f"bytes={at}-{stop - 1}",
                                 IfMatch=f'"{item.etag}"')  # fmt: skip
            f.seek(at)
            for block in resp["Body"].iter_chunks(CHUNK):
                block = block[: stop - at]  # a server that ignores Range: never past the part
                f.write(block)
                at += len(block)
                on_block(block)
                retry.progress()
                if at == stop:
                    break
            if at < stop:  # the stream ended early without an error
                raise CutReply(f"the reply ended at byte {at} of {stop}")
        except OSError as e:
            f.flush()
            if e.errno == errno.ENOSPC:
                raise FetchError(f"{dest}: disk full ({part.stat().st_size} of {item.size} bytes kept in "
                                 f"{part.name}; free space and rerun to resume)") from None  # fmt: skip
            if not retry.failed():
                raise _gave_up(dest, part, item, retry, e.strerror or str(e)) from None
        except Exception as e:  # noqa: BLE001 - botocore's stream and HTTP errors
            f.flush()
            err = _error(e, bucket, item.key)
            if "changed on the server" in str(err):  # another version: its partial copy is useless
                f.close()
                part.unlink(missing_ok=True)
                raise FetchError(f"{err} (its partial copy was removed)") from None
            if "no such" in str(err):
                raise err from None
            if not retry.failed():
                raise _gave_up(dest, part, item, retry, _cause(e)) from None
    f.flush()


def _download(cl, bucket: str, item: Item, dest: Path, count, position: int) -> str:
    """One object into ``dest`` through its partial copy (resumed when present, its bytes hashed again, not
    fetched again), checked while it streams; a dropped stream continues where it stopped (:class:`_Retry`).
    A copy whose ETag does not match has only its bad parts fetched again when the server keeps per-part
    checksums (:func:`_repair`); else it is deleted. Returns how it was checked; a :class:`FetchError` says what
    went wrong and what is kept."""
    part = _partial(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > item.size:
        part.unlink()
        have = 0
    bar = runtime.progress(total=item.size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=Path(item.key).name[:32], position=position, leave=False)  # fmt: skip

    def moved(block: bytes) -> None:
        bar.update(len(block))
        count(len(block))

    parts = _parts(cl, bucket, item)
    hasher = _Hasher(parts.size)
    try:
        if have:  # the bytes a previous run got: hashed again, not fetched again
            with open(part, "rb") as f:
                while block := f.read(CHUNK):
                    hasher.update(block)
        part.touch()  # an empty object still gets its file
        # MD5 in another thread beside the network for a large object (hashlib frees the GIL); inline for a small one
        large = item.size - have > BESIDE
        beside = _Background(hasher.update) if large else contextlib.nullcontext(hasher.update)
        with open(part, "r+b") as f, beside as hash_later:
            _get_range(cl, bucket, item, f, have, item.size, lambda b: (hash_later(b), moved(b)), dest, part)
        checked = _checked(item, parts.size)
        try:  # without the server's part size, verify reads the file again for each usual part size
            verify(part, item, parts.size, streamed=hasher.etag())
        except FetchError as e:
            if not parts.algo:
                part.unlink(missing_ok=True)  # nothing unverified is kept
                # a multipart object whose server keeps no per-part checksum: the bad part cannot be found
                why = ", and the server keeps no per-part checksum to find the bad part" * ("-" in item.etag)
                raise FetchError(f"{e}: bytes changed on the way{why}; the copy was deleted and a rerun fetches "
                                 "the file again") from None  # fmt: skip
            checked += _repair(cl, bucket, item, dest, part, parts, moved, str(e))
        os.chmod(part, 0o666 & ~fileio.UMASK)
        os.replace(part, dest)
        return checked
    finally:
        bar.close()


def _repair(cl, bucket: str, item: Item, dest: Path, part: Path, parts: _Parts, moved, mismatch: str) -> str:
    """``part`` holds every byte of ``item`` but its ETag differs (``mismatch``): compare each part with the
    checksum the server keeps for it, fetch only the parts that differ again (each checked as it arrives, at most
    :data:`PART_TRIES` times), then verify the whole again. Returns what was done, for the record."""
    n, algo = parts.count(item), parts.algo
    want = []
    for k in range(1, n + 1):
        try:
            head = cl.head_object(Bucket=bucket, Key=item.key, PartNumber=k, ChecksumMode="ENABLED",
                                  IfMatch=f'"{item.etag}"')  # fmt: skip
        except Exception as e:  # noqa: BLE001
            raise FetchError(f"{_error(e, bucket, item.key)} (asking for part {k}'s {algo} after: {mismatch}; "
                             f"{item.size} bytes kept in {part.name}: a rerun checks its parts again)") from None  # fmt: skip
        want.append(head.get(f"Checksum{algo}"))
    if None in want:  # a part without its own checksum: nothing to tell a bad part by
        part.unlink(missing_ok=True)
        raise FetchError(f"{mismatch}: bytes changed on the way, and the server keeps no per-part {algo} for part "
                         f"{want.index(None) + 1}; the copy was deleted and a rerun fetches the file again")  # fmt: skip
    bad = [k for k in range(1, n + 1) if _part_sum(part, *parts.span(item, k), algo) != want[k - 1]]
    if not bad:  # every part as the server has it, yet not the ETag: nothing to repair from
        part.unlink(missing_ok=True)
        raise FetchError(f"{mismatch}: every part matches its {algo} yet the whole does not; the copy was deleted "
                         "and a rerun fetches the file again")  # fmt: skip
    for k in bad:
        start, stop = parts.span(item, k)
        for attempt in range(1, PART_TRIES + 1):
            h = _summer(algo)
            with open(part, "r+b") as f:
                _get_range(
                    cl, bucket, item, f, start, stop, lambda b, h=h: (h.update(b), moved(b)), dest, part
                )
            if _encoded(h) == want[k - 1]:
                break
            if attempt == PART_TRIES:
                raise FetchError(f"{paths.display(dest)}: part {k} of {n} (bytes {start}-{stop - 1}) came with a "
                                 f"{algo} other than the server's {PART_TRIES} times; every byte is kept in "
                                 f"{part.name} and a rerun fetches only the parts that differ")  # fmt: skip
    try:
        verify(part, item, parts.size)
    except FetchError as e:
        part.unlink(missing_ok=True)
        raise FetchError(f"{e} after parts {bad} were fetched again; the copy was deleted and a rerun fetches the "
                         "file again") from None  # fmt: skip
    said = ", ".join(map(str, bad))
    runtime.progress_write(f"{paths.display(dest)}: part {said} of {n} differed from the server's {algo}; "
                           "fetched again, the file is now verified")  # fmt: skip
    return f"; part {said} of {n} fetched again after its {algo} differed"


def _cause(e: Exception) -> str:
    """What cut a stream, in words, with the stream error's own first line."""
    text = (str(e).splitlines() or [""])[0].rstrip(".")
    if type(e).__name__ == "IncompleteReadError" or any(
        m in text for m in ("IncompleteRead(", "Connection broken", "Connection reset")
    ):
        return f"the connection dropped mid-reply ({text[:120]})"
    if "timeout" in text.lower() or "timed out" in text.lower():
        return f"the server went silent ({text[:120]})"
    return f"{type(e).__name__}: {text[:160]}"


def _gave_up(dest: Path, part: Path, item: Item, retry: _Retry, cause: str) -> FetchError:
    kept = part.stat().st_size if part.exists() else 0
    return FetchError(f"{paths.display(dest)}: {retry.why()}; last: {cause}. {kept} of {item.size} bytes kept in "
                      f"{part.name}: a rerun resumes from there")  # fmt: skip


def fetch(root: str | os.PathLike, items: list[Item], bucket: str = BUCKET, endpoint: str | None = None,
          jobs: int = 4, cl=None) -> Result:  # fmt: skip
    """Download ``items`` (:func:`plan`) under ``root`` (NSD's own paths), ``jobs`` at a time; returns what was
    fetched and skipped and the bytes moved. Files already fetched with the same size and ETag are skipped; a file
    that exists without a record is verified once and recorded. One fetch at a time per ``root``: a second one
    fails at once, naming the first one's process."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with fileio.exclusive(root / LOCK, f"{paths.display(root)} (an NSD folder being fetched)"):
            return _fetch(root, items, bucket, cl or client(endpoint), jobs)
    except fileio.Busy as e:
        raise FetchError(str(e)) from None


def _fetch(root: Path, items: list[Item], bucket: str, cl, jobs: int) -> Result:
    record = _Record(root)
    todo, skipped = [], []
    for item in items:
        dest = root / item.key
        if record.done(item, dest):
            skipped.append(item.key)
        elif dest.is_file() and dest.stat().st_size == item.size and not _partial(dest).exists():
            parts = _parts(cl, bucket, item)
            try:  # a copy from elsewhere: checked once, then recorded
                verify(dest, item, parts.size)
            except FetchError:
                if parts.algo:  # not the object on the bucket: its parts that differ are fetched again
                    os.replace(dest, _partial(dest))
                else:  # fetched again whole
                    dest.unlink()
                todo.append(item)
                continue
            record.add(item, _checked(item, parts.size))
            skipped.append(item.key)
        else:
            todo.append(item)
    moved, lock, t0 = [0], threading.Lock(), time.perf_counter()
    total = sum(i.size - (_partial(root / i.key).stat().st_size if _partial(root / i.key).exists() else 0)
                for i in todo)  # fmt: skip
    overall = runtime.progress(total=max(total, 0), unit="B", unit_scale=True, unit_divisor=1024,
                               desc=f"NSD ({len(todo)} files)", position=0)  # fmt: skip

    def count(n: int) -> None:
        with lock:
            moved[0] += n
            overall.update(n)

    fetched, failed = [], {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(_download, cl, bucket, it, root / it.key, count, 1 + k % max(1, jobs)): it
                       for k, it in enumerate(todo)}  # fmt: skip
            for fut in as_completed(futures):
                item = futures[fut]
                try:
                    record.add(item, fut.result())
                    fetched.append(item.key)
                except FetchError as e:  # said at once; the others go on
                    failed[item.key] = str(e)
                    runtime.progress_write(f"error: {e}")
    finally:
        record.flush()
        overall.close()
    for item in items:  # the promise: every planned file is here and verified, or named below
        if item.key not in failed and not record.done(item, root / item.key):
            failed[item.key] = f"{item.key}: not here after the fetch (expected a verified copy); rerun"
    if failed:
        raise FetchIncomplete(failed, len(items))
    return Result(fetched, skipped, moved[0], time.perf_counter() - t0)


class FetchIncomplete(FetchError):
    """Some planned files are not here and verified: ``failed`` maps each key to its one-line reason."""

    def __init__(self, failed: dict[str, str], n_planned: int):
        self.failed = dict(failed)
        lines = list(self.failed.values())
        head = [] if len(lines) == 1 else [f"{len(lines)} of {n_planned} files not fetched:"]
        super().__init__("\n".join(head + lines))


def _sizes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return ""


def describe(items: list[Item]) -> str:
    """The plan as a table: what, key, size; then the total."""
    rows = [f"{i.what:<10} {_sizes(i.size):>11}  {i.key}" for i in items]
    return "\n".join([*rows, f"{len(items)} files, {_sizes(sum(i.size for i in items))} in all"])


def _sessions(text: str | None):
    if not text:
        return None
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.data.fetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject", type=int, required=True, help="NSD subject, 1..8")
    ap.add_argument(
        "--root", default=os.environ.get(paths.ROOT_ENV), help="NSD root to fill (default $NSD_ROOT)"
    )
    ap.add_argument("--what", default=",".join(DEFAULT_WHAT), help=f"comma list of {','.join(WHAT)}")
    ap.add_argument(
        "--sessions", help="e.g. 1-37 (papers that used 37 sessions); default every session listed"
    )
    ap.add_argument("--bucket", default=BUCKET)
    ap.add_argument("--endpoint", default=None, help="S3 endpoint URL of a mirror (default AWS)")
    ap.add_argument("--jobs", type=int, default=4, help="files downloaded at once")
    ap.add_argument("--dry-run", action="store_true", help="print the plan with sizes and stop")
    a = ap.parse_args(argv)
    if not a.root:
        print(f"error: --root (or ${paths.ROOT_ENV}) is required", file=sys.stderr)
        return 2
    try:
        cl = client(a.endpoint)
        items = plan(a.subject, a.what.split(","), _sessions(a.sessions), a.bucket, cl=cl)
        print(describe(items))
        if a.dry_run:
            return 0
        res = fetch(a.root, items, a.bucket, jobs=a.jobs, cl=cl)
    except FetchError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    if not res.fetched:
        print(
            f"nothing to transfer: all {len(res.skipped)} files are here and verified ({paths.display(a.root)})"
        )
    else:
        rate = res.bytes_transferred / max(res.seconds, 1e-9) / 2**20
        print(f"fetched {len(res.fetched)} files ({_sizes(res.bytes_transferred)}, {rate:.1f} MiB/s), "
              f"{len(res.skipped)} already here; record: {RECORD}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
