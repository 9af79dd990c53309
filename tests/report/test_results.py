"""The results types (lib.report.results): every committed metrics file reads as its type and back, and a renamed
or dropped key is a one-line error naming it."""

import json

import pytest

from lib import paths
from lib.report import results

COMMITTED = paths.metrics_dir(paths.EMBEDDED_PROFILE)  # figures/metrics, before any test moves it


def test_every_committed_metrics_file_reads_as_its_results_type_and_back():
    for stage in results.TYPES:
        path = COMMITTED / f"{stage}.json"
        record = json.loads(path.read_text())
        got = results.load(COMMITTED, stage)
        assert results.stage_of(got) == stage
        back = results.as_record(got, {k: record[k] for k in results.HEADER})
        assert {k: v for k, v in back.items() if k in record or v is not None} == record  # nothing lost


def test_a_renamed_or_dropped_key_is_an_error_naming_it(tmp_path):
    record = json.loads((COMMITTED / "03_stylegan2.json").read_text())
    renamed = {("variant_table" if k == "variants" else k): v for k, v in record.items()}
    (tmp_path / "03_stylegan2.json").write_text(json.dumps(renamed))
    with pytest.raises(results.ResultsError, match=r"\['variant_table'\] are not fields of Generator") as e:
        results.load(tmp_path, "03_stylegan2")
    assert "03_stylegan2.json" in str(e.value) and "\n" not in str(e.value)
    del record["variants"]
    (tmp_path / "03_stylegan2.json").write_text(json.dumps(record))
    with pytest.raises(
        results.ResultsError, match=r"field\(s\) \['variants'\] are missing; rerun 03_stylegan2"
    ):
        results.load(tmp_path, "03_stylegan2")
    with pytest.raises(results.ResultsError, match="not a results type"):
        results.stage_of({"variants": {}})
