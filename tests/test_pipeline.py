"""The papermill runner: parameter checking against each notebook, prepare-only output, timed execution."""

import json

import nbformat
import pytest

from lib import paths, pipeline


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
        nbs / "01_second.ipynb", 'profile: str = "mini"  # profile\nb: str = "x"  # a string', "y = b * 2"
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


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("defaults:\n  c: 1\n", {}, "unknown parameter 'c': no notebook declares it"),
        (
            "notebooks:\n  '00':\n    b: 1\n",
            {},
            "notebooks.00: unknown parameter(s) ['b'] for 00_first.ipynb",
        ),
        ("notebooks:\n  '07':\n    a: 1\n", {}, "notebooks.07: no notebook numbered 07"),
        ("defaults: {}\n", {"zz": 1}, "--set: unknown parameter 'zz'"),
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
    with pytest.raises(pipeline.PipelineError, match="01_second.ipynb failed"):
        pipeline.run("p")
    run = json.loads((project / "build/p/pipeline_run.json").read_text())
    assert [r["ok"] for r in run] == [True, False]
    assert run[0]["seconds"] > 0 and run[0]["peak_rss_mib"] > 210  # the kernel's 210 MB array is seen
    executed = nbformat.read(project / "build/p/00_first.ipynb", as_version=4)
    assert "a = 21" in executed.cells[1].source  # the injected cell follows the parameters cell


def test_a_second_run_of_a_profile_fails_at_once_naming_the_first(project):
    import os

    from lib import io

    write_profile(project, "defaults:\n  a: 3\n")
    with io.exclusive(paths.BUILD_DIR / "p" / ".pipeline.lock", "held by the first run"):
        with pytest.raises(pipeline.PipelineError, match=rf"build/p .*in use by process {os.getpid()} on "):
            pipeline.run("p", only=["00"], prepare_only=True)
    assert pipeline.run("p", only=["00"], prepare_only=True)  # free again
