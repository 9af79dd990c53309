"""Bad input: one line naming what and where, and no partial cache left behind."""

import shutil

import pytest

from lib.data import prep
from lib.data.nsd import NSD, NSDError


@pytest.fixture
def damaged(tiny_root, tmp_path):
    """A copy of the tiny dataset whose session 2 of subject 1 is truncated."""
    root = tmp_path / "nsd"
    shutil.copytree(tiny_root, root)
    ds = NSD(root)
    path = ds.session_path(1, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return ds, path


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_truncated_hdf5_names_the_file_and_leaves_no_cache(damaged, tmp_path):
    ds, path = damaged
    cache = tmp_path / "cache"
    with pytest.raises(NSDError) as e:
        prep.prepare_cached(ds, 1, "nsdgeneral", cache_dir=cache, progress=False)
    assert str(path) in one_line(e) and "HDF5" in str(e.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_request_errors_are_one_line(tiny, tmp_path):
    cases = [
        (lambda: NSD(tmp_path / "missing"), "missing: no such folder"),
        (lambda: tiny.betas(5), "subject 5: no betas_sessionNN files"),
        (lambda: tiny.betas(1, roi="V5"), "unknown ROI 'V5'"),
        (lambda: tiny.betas(1, sessions=[0, 4]), "sessions [0, 4] out of range (on disk: 1..3)"),
        (lambda: tiny.betas("subj10"), "subject='subj10'"),
        (lambda: tiny.images([10_000]), "image ids out of range"),
    ]
    for call, text in cases:
        with pytest.raises(NSDError) as e:
            call()
        assert text in one_line(e)
