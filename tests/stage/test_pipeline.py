"""The papermill runner: parameter checking against each notebook, prepare-only output, timed execution."""

import json

import nbformat
import pytest

from lib import paths, pipeline
from lib.models.mlp import MLPConfig
from lib.stage import profile as profiles


def make_notebook(path, params_src, body="x = a * 2"):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(body),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    nbs, params, build = tmp_path / "notebooks", tmp_path / "params", tmp_path / "build"
    nbs.mkdir()
    params.mkdir()
    make_notebook(
        nbs / "00_first.ipynb",
        'profile: str = "mini"  # profile\na: int = 1  # a number',
        "import numpy as np\nx = np.ones(a * 10_000_000 // 8)  # a * 10 MB",
    )
    make_notebook(
        nbs / "01_second.ipynb",
        'profile: str = "mini"  # profile\noverrides: dict = {}  # common and hyperparameters\nb: str = "x"  # a',
        "y = b * 2",
    )
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", nbs)
    monkeypatch.setattr(paths, "PARAMS_DIR", params)
    monkeypatch.setattr(paths, "BUILD_DIR", build)
    return tmp_path


def write_profile(project, text, name="p"):
    (project / "params" / f"{name}.yaml").write_text(text)


def test_parameters_go_where_declared(project):
    write_profile(project, "defaults:\n  a: 5\n  b: hello\nnotebooks:\n  '01':\n    b: bye\n")
    got = pipeline.resolve_parameters("p", pipeline.notebooks(), {"a": 7})
    by_name = {nb.name: p for nb, p in got.items()}
    assert by_name == {
        "00_first.ipynb": {"a": 7, "profile": "p"},
        "01_second.ipynb": {"b": "bye", "profile": "p"},
    }


def test_common_parameters_and_hyperparameters_go_into_overrides(project):
    """A common parameter or a section.field given with --set reaches every notebook that declares overrides
    (its lib.stage.setup reads the profile's defaults and hyperparameters itself); the profile's own are checked."""
    write_profile(project, "defaults:\n  subject: 2\nhyperparameters:\n  mlp: {epochs: 3}\n")
    got = pipeline.resolve_parameters("p", pipeline.notebooks(), {"seed": 4, "mlp.width": 64, "b": "z"})
    by_name = {nb.name: p for nb, p in got.items()}
    assert by_name["00_first.ipynb"] == {"profile": "p"}  # declares no overrides
    assert by_name["01_second.ipynb"] == {"b": "z", "overrides": {"seed": 4, "mlp.width": 64}, "profile": "p"}
    settings = profiles.load("p")
    assert profiles.resolve_common(settings, {"seed": 4}) == profiles.Common(subject=2, seed=4)
    cfg = profiles.resolve_config(settings, "mlp", {"mlp.width": 64}, seed=9)
    assert (cfg.epochs, cfg.width, cfg.seed, cfg.depth) == (3, 64, 9, MLPConfig().depth)


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("defaults:\n  c: 1\n", {}, "unknown parameter 'c': neither a common parameter"),
        (
            "notebooks:\n  '00':\n    b: 1\n",
            {},
            "notebooks.00: unknown parameter(s) ['b'] for 00_first.ipynb",
        ),
        ("notebooks:\n  '07':\n    a: 1\n", {}, "notebooks.07: no notebook numbered 07"),
        ("defaults: {}\n", {"zz": 1}, "--set: unknown parameter 'zz'"),
        ("defaults: {}\n", {"mlp.widht": 3}, "--set: 'mlp.widht': MLPConfig has no field 'widht'"),
        ("defaults: {}\n", {"nope.steps": 3}, "--set: 'nope.steps': no hyperparameter section 'nope'"),
        ("defaults: {}\n", {"mlp.epochs": "many"}, "--set: mlp.epochs='many' is str, expected int"),
        ("defaults: {}\n", {"subject": "one"}, "--set: subject='one' is str, expected int"),
        (
            "hyperparameters:\n  clip: {stepz: 3}\n",
            {},
            "(hyperparameters): 'clip.stepz': ClipTrainConfig has no field",
        ),
        ("hyperparameters:\n  clip: 3\n", {}, "hyperparameters.clip: expected a mapping of field: value"),
        ("oops: 1\n", {}, "unknown top-level keys ['oops']"),
        ("defaults: [\n", {}, "not valid YAML"),
    ],
)
def test_unknown_names_are_errors(project, text, overrides, message):
    write_profile(project, text)
    with pytest.raises(pipeline.PipelineError) as e:
        pipeline.resolve_parameters("p", pipeline.notebooks(), overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_reports_one_line_and_exit_code(project, capsys):
    write_profile(project, "defaults:\n  nope: 1\n")
    assert pipeline.main(["--profile", "p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown parameter 'nope'" in err[0]
    assert pipeline.main(["--profile", "absent"]) == 2
    assert "no " in capsys.readouterr().err


def test_prepare_only_injects_parameters(project):
    write_profile(project, "defaults:\n  a: 3\n")
    records = pipeline.run("p", only=["00"], prepare_only=True)
    nb = nbformat.read(records[0]["output"], as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "a = 3" in injected[0].source and 'profile = "p"' in injected[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_run_executes_records_time_and_memory_and_stops_at_a_failure(project):
    make_notebook(project / "notebooks/01_second.ipynb", 'profile: str = "mini"  # profile\nb: str = "x"  # text',
                  "assert b != 'boom', 'refused'")  # fmt: skip
    write_profile(project, "defaults:\n  a: 21\n  b: boom\n")
    with pytest.raises(
        pipeline.PipelineError, match=r"01_second.ipynb failed \(profile p\): .*AssertionError: refused; "
    ):
        pipeline.run("p")
    run = json.loads((project / "build/p/pipeline_run.json").read_text())
    assert [r["ok"] for r in run] == [True, False]
    assert run[0]["seconds"] > 0 and run[0]["peak_rss_mib"] > 210  # the kernel's 210 MB array is seen
    executed = nbformat.read(project / "build/p/00_first.ipynb", as_version=4)
    assert "a = 21" in executed.cells[1].source  # the injected cell follows the parameters cell


def test_a_second_run_of_a_profile_fails_at_once_naming_the_first(project):
    import os

    from lib import fileio

    write_profile(project, "defaults:\n  a: 3\n")
    with fileio.exclusive(paths.BUILD_DIR / "p" / ".pipeline.lock", "held by the first run"):
        with pytest.raises(pipeline.PipelineError, match=rf"build/p .*in use by process {os.getpid()} on "):
            pipeline.run("p", only=["00"], prepare_only=True)
    assert pipeline.run("p", only=["00"], prepare_only=True)  # free again


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("defaults: {}\n", {"a": "maybe"}, "--set: a='maybe' is str, but 00_first.ipynb declares a: int"),
        ("defaults: {}\n", {"a": True}, "--set: a=True is bool, but 00_first.ipynb declares a: int"),
        ("defaults:\n  b: 3\n", {}, "p.yaml (defaults): b=3 is int, but 01_second.ipynb declares b: str"),
        (
            "notebooks:\n  '00':\n    a: [1]\n",
            {},
            "(notebooks.00): a=[1] is list, but 00_first.ipynb declares a: int",
        ),
    ],
)
def test_values_of_the_wrong_type_are_errors_before_anything_runs(project, text, overrides, message):
    write_profile(project, text)
    with pytest.raises(pipeline.PipelineError) as e:
        pipeline.resolve_parameters("p", pipeline.notebooks(), overrides)
    assert message in str(e.value) and "\n" not in str(e.value)
    write_profile(project, "defaults:\n  a: 2\n  b: x\n")  # the right types pass
    assert pipeline.resolve_parameters("p", pipeline.notebooks(), {"a": 3})


def test_a_data_root_that_does_not_exist_fails_before_anything_runs(project, tmp_path):
    make_notebook(
        project / "notebooks" / "00_first.ipynb", 'profile: str = "mini"\ndata_root: str = ""', "x = 1"
    )
    write_profile(project, "defaults: {}\n", name="quick")
    missing = tmp_path / "typo"
    with pytest.raises(pipeline.PipelineError) as e:
        pipeline.run("quick", only=["00"], overrides={"data_root": str(missing)})
    assert str(e.value) == (f"00_first.ipynb: data_root {missing}: no such folder; expected an NSD copy, or an "
                            f"empty folder to simulate mini-NSD profile 'quick' in (mkdir -p {missing})")  # fmt: skip
    assert not (project / "build" / "quick").exists()  # nothing ran


def test_sigterm_stops_the_kernel_records_the_interruption_and_clears_temporaries(project):
    import contextlib
    import os
    import signal
    import threading
    import time

    import psutil

    make_notebook(
        project / "notebooks" / "00_first.ipynb",
        'profile: str = "mini"\na: int = 1',
        "import time\ntime.sleep(60)",
    )
    write_profile(project, "defaults: {}\n")
    stale = paths.BUILD_DIR / "p" / "results" / ".x.npz.k1ll3d_0.npz"  # what a killed atomic write leaves
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    mine = paths.BUILD_DIR / "p" / "results" / ".keep.me"  # not a name atomic_path makes
    mine.write_text("x")

    def kernels():
        return [p for p in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]

    def stop_when_the_kernel_runs():
        for _ in range(600):
            with contextlib.suppress(psutil.Error):
                if kernels():
                    time.sleep(1.0)  # inside the cell's sleep
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            time.sleep(0.05)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_when_the_kernel_runs, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(pipeline.PipelineInterrupted, match=r"00_first.ipynb interrupted by SIGTERM") as e:
        pipeline.run("p", only=["00"])
    assert e.value.signum == signal.SIGTERM and time.perf_counter() - t0 < 50
    assert kernels() == []  # the kernel did not outlive the runner
    record = json.loads((paths.BUILD_DIR / "p" / "pipeline_run.json").read_text())[-1]
    assert record["interrupted"] == "SIGTERM" and not record["ok"]
    assert not stale.exists() and mine.exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the caller's again


def test_only_takes_numbers_stems_and_comma_lists(project):
    names = lambda only: [p.name for p in pipeline.select(only)]  # noqa: E731
    assert names(["1"]) == names(["01_second"]) == ["01_second.ipynb"]
    assert names(["01,00"]) == names(["00", "01"]) == ["00_first.ipynb", "01_second.ipynb"]
    with pytest.raises(pipeline.PipelineError, match=r"--only 012: no notebook numbered '012'"):
        pipeline.select(["012"])  # not read as 01


def test_expect_same_passes_an_identical_rerun_and_names_what_changed(project):
    import os

    body = ("import json, os, pathlib\n"
            "p = pathlib.Path(os.environ['METRICS_OUT'])\n"
            "p.parent.mkdir(parents=True, exist_ok=True)\n"
            "p.write_text(json.dumps({'r': a / 10, 'train_seconds': os.getpid(), 'rows': [1, a]}))")  # fmt: skip
    make_notebook(project / "notebooks" / "00_first.ipynb", 'profile: str = "mini"\na: int = 1', body)
    write_profile(project, "defaults: {}\n")
    os.environ["METRICS_OUT"] = str(paths.metrics_dir("p") / "00_first.json")
    try:
        with pytest.raises(
            pipeline.PipelineError, match="00_first.json is missing; run the notebook once first"
        ):
            pipeline.run("p", only=["00"], expect_same=True)
        pipeline.run("p", only=["00"])
        pipeline.run("p", only=["00"], expect_same=True)  # another pid: timings are left out
        with pytest.raises(pipeline.PipelineError) as e:
            pipeline.run("p", only=["00"], overrides={"a": 2}, expect_same=True)
    finally:
        del os.environ["METRICS_OUT"]
    assert str(e.value) == ("--expect-same: profile p gave other metrics on this run: 00_first: r: 0.1 != 0.2; "
                            "00_first: rows[1]: 1 != 2")  # fmt: skip


def test_metric_differences_walk_nested_values():
    a = {"x": {"y": [1, 2.0], "fit_seconds": 3}, "z": "s"}
    b = {"x": {"y": [1, 2.5], "fit_seconds": 4}, "z": "s", "new": 1}
    assert pipeline.metric_differences(a, b) == ["new: None != 1", "x.y[1]: 2.0 != 2.5"]
    assert pipeline.metric_differences(a, a) == []
