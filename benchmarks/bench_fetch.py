"""Benchmark: lib.data.fetch against boto3's own plain download of the same objects, from a local S3 server (moto's
standalone server on 127.0.0.1) in the same run: one large object (multipart, 1 GiB by default) and 100 small ones.
Prints the throughput of each and the ratio (goal: fetch >= 0.9 x plain, for all its checks). The server runs in
its own process; each method runs ``--repeats`` times in turned order and keeps its best time."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(port: int) -> subprocess.Popen:
    """moto's standalone server in its own process (as a real server is: it does not share this process's GIL)."""
    srv = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return srv
        except OSError:
            time.sleep(0.05)
    srv.kill()
    raise RuntimeError(f"moto server did not start on port {port}")


def _plain(cl, bucket: str, key: str, dest: Path) -> None:
    """boto3's managed download (parallel ranged GETs of the parts), no checks."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    cl.download_file(bucket, key, str(dest))


def _stream(cl, bucket: str, key: str, dest: Path) -> None:
    """One plain GET streamed to the file, no checks: the same requests lib.data.fetch makes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        shutil.copyfileobj(cl.get_object(Bucket=bucket, Key=key)["Body"], f, 1 << 20)


def _pooled(fn, cl, bucket: str, keys: list[str], jobs: int, out: Path) -> None:
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda k: fn(cl, bucket, k, out / k), keys))


def _ours(fetch, cl, bucket: str, endpoint: str, items, jobs: int, out: Path) -> None:
    res = fetch.fetch(out, items, bucket, endpoint, jobs=jobs, cl=cl)
    assert res.bytes_transferred == sum(i.size for i in items)


def _remote_rows(up, cl, bucket: str, work: Path, n: int, rows: int, rng) -> None:
    """Bytes moved to read ``rows`` random rows of an NSD-shaped ``imgBrick`` (n, 425, 425, 3) by byte ranges."""
    import h5py

    from lib.data import remote

    path = work / "nsd_stimuli.hdf5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("imgBrick", (n, 425, 425, 3), np.uint8)
        for lo in range(0, n, 100):
            d[lo : lo + 100] = rng.integers(0, 256, (min(100, n - lo), 425, 425, 3), dtype=np.uint8)
    up.upload_file(str(path), bucket, "stimuli/nsd_stimuli.hdf5", ExtraArgs={"ACL": "public-read"})
    size = path.stat().st_size
    ids = np.sort(rng.choice(n, rows, replace=False))
    rf = remote.RangeFile(f"s3://{bucket}/stimuli/nsd_stimuli.hdf5", cl=cl)
    t0 = time.perf_counter()
    with h5py.File(rf, "r") as f, h5py.File(path, "r") as local:
        for i in ids:
            assert np.array_equal(f["imgBrick"][i], local["imgBrick"][i])
    t = time.perf_counter() - t0
    row = 425 * 425 * 3
    print(f"remote stimuli: {rows} random rows of a {n}-row imgBrick ({size / 2**20:.0f} MiB, contiguous): "
          f"{rf.bytes_fetched / 2**20:.1f} MiB moved ({rf.bytes_fetched / size:.1%} of the file), "
          f"{rf.bytes_fetched / rows / 2**10:.0f} KiB per image (an image is {row / 2**10:.0f} KiB; "
          f"{remote.BLOCK >> 10} KiB blocks), {t / rows * 1000:.0f} ms per image")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the large object")
    ap.add_argument("--small", type=int, default=100, help="number of small objects")
    ap.add_argument("--small-kib", type=int, default=256, help="size of each small object")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of each method in turned order, best kept")
    ap.add_argument(
        "--stimuli", type=int, default=1000, help="rows of the NSD-shaped stimulus file (425 x 425 x 3)"
    )
    ap.add_argument("--rows", type=int, default=100, help="random rows read remotely from it")
    a = ap.parse_args(argv)

    import boto3
    from boto3.s3.transfer import TransferConfig

    from lib.data import fetch

    port = _free_port()
    srv = _server(port)
    endpoint, bucket = f"http://127.0.0.1:{port}", "bench"
    up = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="b",
                      aws_secret_access_key="b")  # fmt: skip
    up.create_bucket(Bucket=bucket)
    rng = np.random.default_rng(0)
    cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
    work = Path(tempfile.mkdtemp(prefix="bench_fetch_"))
    try:
        src = work / "big.bin"
        with open(src, "wb") as f:
            for _ in range(a.big_mib):
                f.write(rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
        up.upload_file(str(src), bucket, "big/big.bin", Config=cfg, ExtraArgs={"ACL": "public-read"})
        src.unlink()
        for k in range(a.small):
            up.put_object(Bucket=bucket, Key=f"small/{k:03d}.bin", ACL="public-read",
                          Body=rng.integers(0, 256, a.small_kib << 10, dtype=np.uint8).tobytes())  # fmt: skip
        cl = fetch.client(endpoint)
        sets = {
            "1 large": ["big/big.bin"],
            f"{a.small} small": [f"small/{k:03d}.bin" for k in range(a.small)],
        }
        print(
            f"local S3 (moto) at {endpoint}; {a.big_mib} MiB object in 8 MiB parts, {a.small} x {a.small_kib} KiB"
        )
        for name, keys in sets.items():
            items = []
            for key in keys:
                h = cl.head_object(Bucket=bucket, Key=key)
                items.append(fetch.Item(key, h["ContentLength"], h["ETag"].strip('"'), "bench"))
            total = sum(i.size for i in items) / 2**20

            methods = {
                "boto3 download_file": partial(_pooled, _plain, cl, bucket, keys, a.jobs),
                "boto3 get_object": partial(_pooled, _stream, cl, bucket, keys, a.jobs),
                "lib.data.fetch": partial(_ours, fetch, cl, bucket, endpoint, items, a.jobs),
            }
            best = dict.fromkeys(methods, float("inf"))
            # the order turns each round, and each copy is deleted at once, so that the page cache's write-back
            # of one method's gigabyte does not slow the next one down
            for rep in range(a.repeats):
                order = list(methods)[rep % 3 :] + list(methods)[: rep % 3]
                for label in order:
                    out = work / "out"
                    t0 = time.perf_counter()
                    methods[label](out)
                    best[label] = min(best[label], time.perf_counter() - t0)
                    assert all((out / k).stat().st_size == i.size for k, i in zip(keys, items, strict=True))
                    shutil.rmtree(out)
            t_ours = best.pop("lib.data.fetch")
            base = " | ".join(f"{lab} {total / t:6.1f} MiB/s" for lab, t in best.items())
            print(
                f"{name:>10}: {base} | lib.data.fetch {total / t_ours:6.1f} MiB/s (verified) | ratio "
                + ", ".join(f"{t / t_ours:4.2f} x" for t in best.values())
                + f" (goal >= 0.9; best of {a.repeats})"
            )
        _remote_rows(up, cl, bucket, work, a.stimuli, a.rows, rng)
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
