"""lib.data.fetch against a real S3 server (moto's standalone server on 127.0.0.1, not a mock of the client) that
holds the tiny mini-NSD tree as a bucket: plan, download, resume, verification, refusals, and the reader on the
fetched copy."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.config import Config as BotoConfig  # noqa: E402

from lib.data import fetch  # noqa: E402
from lib.data.nsd import NSD  # noqa: E402
from tests.data.faulty_proxy import Fault, FaultyProxy  # noqa: E402

BUCKET = "nsd-mirror"
MULTIPART = 5 << 20  # S3's smallest part: objects above it are uploaded in parts
PUBLIC = {"ACL": "public-read"}  # as NSD's bucket: anyone may read, anonymously


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_root):
    port = _free_port()
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    endpoint = f"http://127.0.0.1:{port}"
    up = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")  # fmt: skip
    up.create_bucket(Bucket=BUCKET)
    cfg = TransferConfig(multipart_threshold=MULTIPART, multipart_chunksize=MULTIPART)
    for f in sorted(tiny_root.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            up.upload_file(str(f), BUCKET, f.relative_to(tiny_root).as_posix(), Config=cfg, ExtraArgs=PUBLIC)
    big = bytes(np.random.default_rng(0).integers(0, 256, 11 << 20, dtype=np.uint8))  # 3 parts
    up.put_object(Bucket=BUCKET, Key="extra/small.bin", Body=b"x" * 1000, **PUBLIC)
    up.create_bucket(Bucket="bare")  # a mirror without COCO's captions
    up.upload_fileobj(BytesIO(big), BUCKET, "extra/big.bin", Config=cfg, ExtraArgs=PUBLIC)
    # big.bin carries a CRC32 per part (boto3's default since 2025); plain.bin none, as NSD's 2021 uploads
    old = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test",
                       config=BotoConfig(request_checksum_calculation="when_required"))  # fmt: skip
    old.upload_fileobj(BytesIO(big), BUCKET, "extra/plain.bin", Config=cfg, ExtraArgs=PUBLIC)
    yield endpoint, up, big
    srv.stop()


class SlowProxy:
    """A TCP proxy to the server that passes the server's answers at ``rate`` bytes/s: a transfer slow enough to
    kill mid-file."""

    def __init__(self, endpoint: str, rate: int = 2 << 20):
        self.up = ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
        self.rate, self.sock = rate, socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.up)
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.rate), daemon=True).start()

    @staticmethod
    def _pump(src, dst, rate) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.sock.close()


def _item(up, key: str) -> fetch.Item:
    h = up.head_object(Bucket=BUCKET, Key=key)
    return fetch.Item(key, h["ContentLength"], h["ETag"].strip('"'), "test")


def test_plan_lists_what_a_subject_needs(server, tiny):
    endpoint, _, _ = server
    items = fetch.plan(1, ("design", "stiminfo", "betas", "ncsnr", "rois"), bucket=BUCKET, endpoint=endpoint)
    keys = [i.key for i in items]
    assert sum("betas_session" in k for k in keys) == len(tiny.sessions(1))
    assert "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz" in keys
    assert "nsddata/freesurfer/subj01/label/nsdgeneral.mgz.ctab" in keys
    assert all(i.size > 0 for i in items)
    some = fetch.plan(1, ("betas",), sessions=[2], bucket=BUCKET, endpoint=endpoint)
    assert [i.key.rsplit("/", 1)[1] for i in some] == ["betas_session02.hdf5"]
    assert "files," in fetch.describe(items)


def test_fetch_then_read_equals_the_local_tree_and_a_second_run_moves_nothing(server, tiny, tmp_path):
    what = ("design", "stiminfo", "betas", "ncsnr", "rois", "stimuli", "captions")
    endpoint, up, _ = server
    # mini-NSD's marker too (its trial counts differ from NSD's); every other file is NSD's own
    items = fetch.plan(1, what, bucket=BUCKET, endpoint=endpoint) + [_item(up, "MINI_NSD.json")]
    res = fetch.fetch(tmp_path, items, BUCKET, endpoint, jobs=3)
    assert len(res.fetched) == len(items) and res.bytes_transferred == sum(i.size for i in items)
    for i in items:
        assert (tmp_path / i.key).read_bytes() == (tiny.root / i.key).read_bytes()
    copy = NSD(tmp_path)
    np.testing.assert_array_equal(
        copy.betas(1, "nsdgeneral", progress=False), tiny.betas(1, "nsdgeneral", progress=False)
    )
    np.testing.assert_array_equal(copy.images([0, 5]), tiny.images([0, 5]))
    record = json.loads((tmp_path / fetch.RECORD).read_text())["files"]
    assert set(record) == {i.key for i in items}
    design = next(i for i in items if i.what == "design")
    assert record[design.key]["etag"] == hashlib.md5((tmp_path / design.key).read_bytes()).hexdigest()
    assert all(r["size"] > 0 and r["checked"].startswith("size and") for r in record.values())
    again = fetch.fetch(tmp_path, items, BUCKET, endpoint)
    assert again.fetched == [] and again.bytes_transferred == 0 and len(again.skipped) == len(items)


def test_an_interrupted_multipart_file_resumes_without_fetching_its_start_again(server, tmp_path):
    endpoint, up, big = server
    item = _item(up, "extra/big.bin")
    assert item.etag.endswith("-3")  # a multipart object: verified part by part
    dest = tmp_path / item.key
    dest.parent.mkdir(parents=True)
    cut = 4_000_000
    fetch._partial(dest).write_bytes(big[:cut])  # what a killed transfer leaves
    res = fetch.fetch(tmp_path, [item], BUCKET, endpoint)
    assert res.bytes_transferred == len(big) - cut
    assert dest.read_bytes() == big and not fetch._partial(dest).exists()


def test_a_corrupted_copy_is_detected_and_nothing_unverified_keeps_the_name(server, tmp_path):
    endpoint, up, big = server
    for key, body in (("extra/small.bin", b"x" * 1000), ("extra/plain.bin", big)):  # nothing tells which part
        item = _item(up, key)
        dest = tmp_path / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        fetch._partial(dest).write_bytes(b"y" * 500)  # a partial copy whose bytes went wrong
        with pytest.raises(fetch.FetchError, match=f"{key}: .*MD5 .* does not match the ETag") as e:
            fetch.fetch(tmp_path, [item], BUCKET, endpoint)
        assert "\n" not in str(e.value) and "the copy was deleted and a rerun fetches the file again" in str(
            e.value
        )
        assert not dest.exists() and not fetch._partial(dest).exists()
        fetch.fetch(tmp_path, [item], BUCKET, endpoint)  # the next run starts over and succeeds
        assert dest.read_bytes() == body
    assert "no per-part checksum" in str(e.value)  # plain.bin: a multipart object uploaded without them


def test_a_bad_part_is_fetched_again_on_its_own_when_the_server_keeps_part_checksums(server, tmp_path):
    endpoint, up, big = server
    item = _item(up, "extra/big.bin")
    assert fetch._parts(fetch.client(endpoint), BUCKET, item) == fetch._Parts(MULTIPART, "CRC32")
    with FaultyProxy(endpoint, [Fault("GET /nsd-mirror/extra/big.bin", "flip", at=7_000_000)]) as proxy:
        res = fetch.fetch(tmp_path, [item], BUCKET, proxy.endpoint)  # the byte flipped lies in part 2 of 3
        gets = [r for r in proxy.requests if r.startswith("GET /nsd-mirror/extra/big.bin")]
        assert proxy.fired("flip") == 1 and len(gets) == 2
    assert (tmp_path / item.key).read_bytes() == big
    assert res.bytes_transferred == item.size + MULTIPART  # the file once, then part 2 alone
    record = json.loads((tmp_path / fetch.RECORD).read_text())["files"][item.key]
    assert record["checked"].endswith("; part 2 of 3 fetched again after its CRC32 differed")
    # a partial copy that began wrong: its resumed rest streams, then only its first part moves again
    dest = tmp_path / "again" / item.key
    dest.parent.mkdir(parents=True)
    fetch._partial(dest).write_bytes(b"y" * 500)
    res = fetch.fetch(tmp_path / "again", [item], BUCKET, endpoint)
    assert dest.read_bytes() == big and res.bytes_transferred == item.size - 500 + MULTIPART
    # a wrong copy under the final name (from elsewhere): the same
    dest.write_bytes(big[:100] + b"z" + big[101:])
    (tmp_path / "again" / fetch.RECORD).unlink()
    res = fetch.fetch(tmp_path / "again", [item], BUCKET, endpoint)
    assert dest.read_bytes() == big and res.bytes_transferred == MULTIPART


def test_missing_object_wrong_bucket_and_full_disk_are_one_line_errors(server, tmp_path, monkeypatch):
    endpoint, up, _ = server
    with pytest.raises(fetch.FetchError, match=r"no betas for subject 3") as e:
        fetch.plan(3, ("betas",), bucket=BUCKET, endpoint=endpoint)
    with pytest.raises(fetch.FetchError, match=r"s3://nope: no such bucket") as e:
        fetch.plan(1, ("design",), bucket="nope", endpoint=endpoint)
    assert "\n" not in str(e.value)
    with pytest.raises(fetch.FetchError, match=r"betas_session99.hdf5: no such object"):
        fetch.plan(1, ("betas",), sessions=[99], bucket=BUCKET, endpoint=endpoint)
    gone = fetch.Item("extra/gone.bin", 10, "0" * 32, "test")
    with pytest.raises(fetch.FetchError, match=r"s3://nsd-mirror/extra/gone.bin: no such object"):
        fetch.fetch(tmp_path, [gone], BUCKET, endpoint)
    with pytest.raises(fetch.FetchError, match="captions_train2017.json and captions_val2017.json under"):
        fetch.plan(1, ("captions",), bucket="bare", endpoint=endpoint)
    item = _item(up, "extra/big.bin")
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n > 2_000_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n += len(b)
            return self.f.write(b)

        def __getattr__(self, name):  # seek, flush, close: the file's own
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def opener(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if mode in ("ab", "r+b") else f

    monkeypatch.setattr("builtins.open", opener)
    with pytest.raises(
        fetch.FetchError, match=r"disk full \(\d+ of 11534336 bytes kept in \.big\.bin\.partial"
    ) as e:
        fetch.fetch(tmp_path, [item], BUCKET, endpoint)
    assert "\n" not in str(e.value) and not (tmp_path / item.key).exists()
    monkeypatch.undo()
    res = fetch.fetch(tmp_path, [item], BUCKET, endpoint)  # space again: it resumes
    assert res.bytes_transferred < item.size and (tmp_path / item.key).stat().st_size == item.size


def test_cli_dry_run_prints_the_plan(server, capsys):
    endpoint, _, _ = server
    code = fetch.main(["--subject", "1", "--root", "unused", "--what", "design,betas", "--bucket", BUCKET,
                       "--endpoint", endpoint, "--dry-run"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "nsd_expdesign.mat" in out and "betas_session01.hdf5" in out and "in all" in out
    assert fetch.main(["--subject", "9", "--root", "x", "--endpoint", endpoint, "--bucket", BUCKET]) == 1
    assert "subject=9: expected 1..8" in capsys.readouterr().err


def test_etag_of_matches_s3s_multipart_rule(tmp_path):
    data = bytes(range(256)) * 50_000  # 12.8 MB
    p = tmp_path / "f"
    p.write_bytes(data)
    size = 5 << 20
    parts = [hashlib.md5(data[i : i + size]).digest() for i in range(0, len(data), size)]
    assert fetch.etag_of(p, size) == f"{hashlib.md5(b''.join(parts)).hexdigest()}-3"
    assert fetch.etag_of(p) == hashlib.md5(data).hexdigest()
    assert Path(fetch.MANIFEST).is_file() and {w for w, _ in fetch.manifest()} == set(fetch.WHAT)


def test_remote_stimuli_read_rows_by_byte_range_and_cache_them(server, tiny, tmp_path, monkeypatch):
    from lib.data import remote

    endpoint, up, _ = server
    monkeypatch.setattr(remote, "BLOCK", 4 << 10)  # the tiny file is 83 KB: small blocks show the saving
    items = fetch.plan(1, ("design", "stiminfo"), bucket=BUCKET, endpoint=endpoint) + [
        _item(up, "MINI_NSD.json")
    ]
    fetch.fetch(tmp_path, items, BUCKET, endpoint)
    url = f"s3://{BUCKET}/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    ds = NSD(tmp_path, stimuli=url, stimuli_endpoint=endpoint)
    ids = [7, 0, 7, 80]
    np.testing.assert_array_equal(ds.images(ids), tiny.images(ids))
    size = (tiny.root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5").stat().st_size
    moved = ds._remote.bytes_fetched
    assert 0 < moved < size / 2, (moved, size)
    assert len(list((tmp_path / "derived/stimuli").glob("*/*.npy"))) == 3
    np.testing.assert_array_equal(ds.images([80, 0]), tiny.images([80, 0]))  # from the cache
    assert ds._remote.bytes_fetched == moved
    with pytest.raises(remote.RemoteError, match="no such object"):
        NSD(tmp_path, stimuli=f"s3://{BUCKET}/nope.hdf5", stimuli_endpoint=endpoint).images([1])
    with pytest.raises(remote.RemoteError, match="expected s3://bucket/key"):
        remote.parse_s3("https://example.org/x.hdf5")


def test_a_stale_partial_or_a_wrong_copy_under_the_final_name_is_replaced(server, tmp_path):
    endpoint, up, _ = server
    item = _item(up, "extra/small.bin")
    dest = tmp_path / item.key
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"z" * item.size)  # same size, other bytes, no record: checked, refused, fetched again
    res = fetch.fetch(tmp_path, [item], BUCKET, endpoint)
    assert res.fetched == [item.key] and dest.read_bytes() == b"x" * 1000
    other = fetch.Item(
        item.key, item.size, "0" * 32, "test"
    )  # a partial begun on another version of the object
    dest.unlink()
    fetch._partial(dest).write_bytes(b"x" * 10)
    with pytest.raises(fetch.FetchError, match="changed on the server.*partial copy was removed") as e:
        fetch.fetch(tmp_path, [other], BUCKET, endpoint)
    assert "\n" not in str(e.value) and not fetch._partial(dest).exists() and not dest.exists()


def test_range_file_reads_across_blocks_and_stops_at_the_end(server):
    from lib.data import remote

    endpoint, _, big = server
    rf = remote.RangeFile(f"s3://{BUCKET}/extra/big.bin", endpoint, block=1000, cache_blocks=4)
    rf.seek(900)
    assert rf.read(2500) == big[900:3400] and rf.tell() == 3400
    rf.seek(-30, 2)
    assert rf.read(100) == big[-30:] and rf.read(10) == b""
    assert rf.bytes_fetched == 4 * 1000 + len(big) % 1000  # blocks 0-3, and the (short) last block once


def test_a_killed_fetch_resumes_and_a_second_fetch_into_its_folder_is_refused(server, tmp_path):
    endpoint, up, big = server
    item = _item(up, "extra/big.bin")
    proxy = SlowProxy(endpoint)  # 2 MiB/s: the 11 MiB object takes seconds
    code = (f"from lib.data import fetch; fetch.fetch({str(tmp_path)!r}, [fetch.{item!r}], {BUCKET!r}, "
            f"{proxy.endpoint!r})")  # fmt: skip
    root = Path(fetch.__file__).parents[2]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env={**os.environ, "LIB_QUIET": "1"})
    part = fetch._partial(tmp_path / item.key)
    try:
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size > 3 << 20):
            assert proc.poll() is None and time.monotonic() < deadline, "the fetch ended before the kill"
            time.sleep(0.05)
        with pytest.raises(fetch.FetchError, match=rf"in use by process {proc.pid} on .*; wait for it") as e:
            fetch.fetch(tmp_path, [item], BUCKET, endpoint)  # the same folder while the first one runs
        assert "\n" not in str(e.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proxy.close()
    kept = part.stat().st_size
    assert 3 << 20 < kept < item.size and not (tmp_path / item.key).exists()
    res = fetch.fetch(tmp_path, [item], BUCKET, endpoint)  # the OS released the dead process's lock
    assert res.bytes_transferred == item.size - kept  # its start was not fetched again
    assert (tmp_path / item.key).read_bytes() == big


# ================================================================================================================
# a hostile network: the server behind tests/data/faulty_proxy.py (cuts, flipped bytes, stalls, bounded in count)


@pytest.fixture
def quick_retries(monkeypatch):
    """Backoff in milliseconds, so that a test that exhausts the retries ends at once."""
    monkeypatch.setattr(
        fetch, "BACKOFF", 0.001, raising=False
    )  # raising: the same test runs on older fetches
    monkeypatch.setattr(fetch, "BACKOFF_MAX", 0.01, raising=False)


WHAT = ("design", "stiminfo", "betas", "ncsnr", "rois")
LABELS = "prefix=nsddata/freesurfer/subj01/label/"  # the listing of the ROI label tables


@pytest.mark.parametrize(
    "fault",
    [Fault(LABELS, "cut", at=0, times=2), Fault(LABELS, "cut", at=120, times=2), Fault(LABELS, "flip", at=3)],
    ids=["cut after the headers", "cut mid-reply", "a flipped byte"],
)
def test_a_damaged_listing_is_asked_again_and_the_plan_is_whole(server, fault, quick_retries):
    endpoint, _, _ = server
    want = [i.key for i in fetch.plan(1, WHAT, bucket=BUCKET, endpoint=endpoint)]
    with FaultyProxy(endpoint, [fault]) as proxy:
        got = [i.key for i in fetch.plan(1, WHAT, bucket=BUCKET, endpoint=proxy.endpoint)]
        assert proxy.fired() == fault.times
    assert got == want and sum(k.endswith(".mgz.ctab") for k in got) >= 3


@pytest.mark.parametrize("at", [0, 120], ids=["after the headers", "mid-reply"])
def test_a_listing_cut_every_time_fails_naming_the_prefix_not_a_server_error(
    server, at, quick_retries, capsys
):
    endpoint, _, _ = server
    with FaultyProxy(endpoint, [Fault(LABELS, "cut", at=at, times=None)]) as proxy:
        with pytest.raises(fetch.FetchError) as e:
            fetch.plan(1, WHAT, bucket=BUCKET, endpoint=proxy.endpoint)
        msg = str(e.value)
        assert "\n" not in msg and "nsddata/freesurfer/subj01/label/: the listing failed" in msg
        assert f"{fetch.TRIES} failed tries since" in msg and "drops mid-reply" in msg and "500" not in msg
        assert proxy.fired() == fetch.TRIES
        code = fetch.main(["--subject", "1", "--root", "unused", "--what", ",".join(WHAT), "--bucket", BUCKET,
                           "--endpoint", proxy.endpoint])  # fmt: skip
    assert code == 1 and "the listing failed" in capsys.readouterr().err


def test_a_stream_dropped_more_often_than_the_tries_resumes_while_bytes_arrive(
    server, tmp_path, quick_retries
):
    endpoint, up, big = server
    item = _item(up, "extra/big.bin")
    drops = 9  # more drops than tries (fetch.TRIES): each brought bytes, so the count started again
    with FaultyProxy(
        endpoint, [Fault("GET /nsd-mirror/extra/big.bin", "cut", at=700_000, times=drops)]
    ) as proxy:
        res = fetch.fetch(tmp_path, [item], BUCKET, proxy.endpoint)
        assert proxy.fired() == drops > fetch.TRIES
    assert res.bytes_transferred == item.size and (tmp_path / item.key).read_bytes() == big


def test_a_stream_that_brings_nothing_gives_up_saying_what_is_kept(server, tmp_path, quick_retries):
    endpoint, up, big = server
    item = _item(up, "extra/big.bin")
    faults = [Fault("GET /nsd-mirror/extra/big.bin", "cut", at=3_000_000, times=1),
              Fault("GET /nsd-mirror/extra/big.bin", "cut", at=0, times=None)]  # fmt: skip
    with FaultyProxy(endpoint, faults) as proxy:
        with pytest.raises(fetch.FetchError) as e:
            fetch.fetch(tmp_path, [item], BUCKET, proxy.endpoint)
        assert faults[1].hits == fetch.TRIES - 1  # the first cut brought bytes, then failed: one of the tries
    msg = str(e.value)
    assert "\n" not in msg and "extra/big.bin" in msg and f"{fetch.TRIES} failed tries since" in msg
    assert "3000000 of 11534336 bytes kept in .big.bin.partial: a rerun resumes" in msg
    assert "the connection dropped mid-reply" in msg
    res = fetch.fetch(tmp_path, [item], BUCKET, endpoint)  # the network is back: the rest only
    assert res.bytes_transferred == item.size - 3_000_000 and (tmp_path / item.key).read_bytes() == big


def test_a_stalled_reply_times_out_and_is_asked_again(server, tmp_path, quick_retries):
    endpoint, up, _ = server
    item = _item(up, "extra/small.bin")
    with FaultyProxy(
        endpoint, [Fault("GET /nsd-mirror/extra/small.bin", "stall", seconds=3, times=1)]
    ) as proxy:
        t0 = time.monotonic()
        fetch.fetch(tmp_path, [item], BUCKET, cl=fetch.client(proxy.endpoint, read_timeout=0.5))
        assert proxy.fired("stall") == 1 and time.monotonic() - t0 < 3
    assert (tmp_path / item.key).read_bytes() == b"x" * 1000


def _upload_crc32c(up, key: str, body: bytes) -> None:
    import crc32c

    mp = up.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="CRC32C", **PUBLIC)
    done = []
    for k, at in enumerate(range(0, len(body), MULTIPART), start=1):
        chunk = body[at : at + MULTIPART]
        value = base64.b64encode(crc32c.crc32c(chunk).to_bytes(4, "big")).decode()
        r = up.upload_part(Bucket=BUCKET, Key=key, UploadId=mp["UploadId"], PartNumber=k, Body=chunk,
                           ChecksumCRC32C=value)  # fmt: skip
        done.append({"PartNumber": k, "ETag": r["ETag"], "ChecksumCRC32C": value})
    up.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=mp["UploadId"], MultipartUpload={"Parts": done}
    )


@pytest.mark.parametrize("algo", fetch.PART_SUMS)
def test_each_parts_checksum_is_the_one_the_server_keeps(server, algo, tmp_path):
    endpoint, up, big = server
    if fetch._summer(algo) is None:
        pytest.skip(f"{algo} needs awscrt or crc32c, neither installed (such parts are fetched whole)")
    key = f"extra/{algo}.bin"
    cfg = TransferConfig(multipart_threshold=MULTIPART, multipart_chunksize=MULTIPART)
    if algo != "CRC32C":
        up.upload_fileobj(
            BytesIO(big), BUCKET, key, Config=cfg, ExtraArgs=PUBLIC | {"ChecksumAlgorithm": algo}
        )
    else:  # botocore computes CRC32C only with awscrt: the parts go up with their checksum given
        _upload_crc32c(up, key, big)
    item = _item(up, key)
    parts = fetch._parts(fetch.client(endpoint), BUCKET, item)
    assert parts == fetch._Parts(MULTIPART, algo) and parts.count(item) == 3
    path = tmp_path / "big.bin"
    path.write_bytes(big)
    for k in (1, 2, 3):  # the server's own computation, part by part, against ours
        head = up.head_object(Bucket=BUCKET, Key=key, PartNumber=k, ChecksumMode="ENABLED")
        assert fetch._part_sum(path, *parts.span(item, k), algo) == head[f"Checksum{algo}"]


def test_parts_are_trusted_only_when_their_checksums_can_tell_a_bad_part():
    class Server:  # HEAD of part 1 as a server may answer it
        def __init__(self, head, refuse_checksums=False):
            self.head, self.refuse = head, refuse_checksums

        def head_object(self, **kw):
            if self.refuse and "ChecksumMode" in kw:
                raise RuntimeError("400 Bad Request")
            return self.head

    item = fetch.Item("k", 11 << 20, "0" * 32 + "-3", "test")
    part = {"ContentLength": MULTIPART, "ChecksumCRC32": "AAAAAA==", "ChecksumType": "COMPOSITE"}
    assert fetch._parts(Server(part), "b", item) == fetch._Parts(MULTIPART, "CRC32")
    no_sums = {"ContentLength": MULTIPART}
    assert fetch._parts(Server(no_sums, refuse_checksums=True), "b", item) == fetch._Parts(MULTIPART, None)
    assert fetch._parts(Server(part | {"ChecksumType": "FULL_OBJECT"}), "b", item).algo is None
    assert fetch._parts(Server(part | {"ChecksumCRC32": "AAAAAA==-3"}), "b", item).algo is None  # the whole's
    uneven = fetch.Item("k", 11 << 20, "0" * 32 + "-4", "test")  # 4 parts, yet part 1 says 3 of its size
    assert fetch._parts(Server(part), "b", uneven) == fetch._Parts(MULTIPART, None)


def test_every_bad_file_is_named_with_what_happened_and_the_good_ones_land(server, tmp_path, capsys):
    endpoint, up, big = server
    keys = (
        "extra/small.bin",
        "extra/big.bin",
        "extra/plain.bin",
        "nsddata/experiments/nsd/nsd_expdesign.mat",
    )
    items = [_item(up, k) for k in keys]
    faults = [Fault("GET /nsd-mirror/extra/small.bin", "flip", at=10, times=None),
              Fault("GET /nsd-mirror/extra/big.bin", "flip", at=1000, times=None),  # part 1's every fetch
              Fault("GET /nsd-mirror/extra/plain.bin", "flip", at=9_000_000, times=None)]  # fmt: skip
    with FaultyProxy(endpoint, faults) as proxy:
        with pytest.raises(fetch.FetchIncomplete) as e:
            fetch.fetch(tmp_path, items, BUCKET, proxy.endpoint, jobs=1)
        assert faults[1].hits == 1 + fetch.PART_TRIES  # the file, then part 1 alone, each time wrong
    lines = str(e.value).splitlines()
    assert lines[0] == "3 of 4 files not fetched:" and len(lines) == 4
    assert set(e.value.failed) == set(keys[:3])
    for key in ("extra/small.bin", "extra/plain.bin"):
        assert "does not match the ETag" in e.value.failed[key]
        assert "the copy was deleted and a rerun fetches the file again" in e.value.failed[key]
    assert (
        f"part 1 of 3 (bytes 0-{MULTIPART - 1}) came with a CRC32 other than the server's {fetch.PART_TRIES} "
        "times; every byte is kept in .big.bin.partial and a rerun fetches only the parts that differ"
    ) in e.value.failed["extra/big.bin"]
    said = capsys.readouterr().err  # each said as it happened, before the fetch ended
    assert said.count("error: ") == 3
    assert (tmp_path / items[3].key).is_file() and not (tmp_path / items[0].key).exists()
    assert [p.name for p in tmp_path.rglob("*.partial")] == [".big.bin.partial"]
    res = fetch.fetch(
        tmp_path, items, BUCKET, endpoint
    )  # a clean network: the two deleted ones, big's part 1
    assert (tmp_path / "extra/big.bin").read_bytes() == big == (tmp_path / "extra/plain.bin").read_bytes()
    assert res.bytes_transferred == 1000 + len(big) + MULTIPART


def test_backoff_doubles_with_jitter_and_starts_again_after_progress(monkeypatch):
    waits = []
    monkeypatch.setattr(fetch.random, "uniform", lambda lo, hi: waits.append((lo, hi)) or hi)
    monkeypatch.setattr(fetch.time, "sleep", lambda s: None)
    r = fetch._Retry()
    assert [r.failed() for _ in range(fetch.TRIES)] == [True] * (fetch.TRIES - 1) + [False]
    assert waits == [(0, min(fetch.BACKOFF_MAX, fetch.BACKOFF * 2**k)) for k in range(fetch.TRIES - 1)]
    r.progress()
    waits.clear()
    assert r.failed() and waits == [(0, fetch.BACKOFF)]
    monkeypatch.setattr(fetch, "PATIENCE", 0.0)  # bounded in time too: no try once the patience is spent
    assert not r.failed()
