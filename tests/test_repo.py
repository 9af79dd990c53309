"""Repository rules: environment.yml agrees with pyproject.toml; notebooks are stripped, numbered, parameterised."""

import ast
import re
import subprocess
import tomllib
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from lib import paths


def _norm(req: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", req)
    return m.group(1).lower().replace("_", "-"), m.group(3).replace(" ", "")


def test_environment_yml_lists_the_same_dependencies():
    project = tomllib.loads((paths.PROJ_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_norm(r) for r in extra}
    env = yaml.safe_load((paths.PROJ_ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for dep in env["dependencies"]:
        (pip.extend(dep["pip"]) if isinstance(dep, dict) else conda.append(dep))
    assert "python=3.11" in conda and pip[-1] == "-e .[dev]"
    got = {_norm(r) for r in conda if not r.startswith(("python", "pip"))} | {_norm(r) for r in pip[:-1]}
    assert got == wanted


NOTEBOOKS = sorted(paths.NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_numbered_and_parameterised(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    # every line is a literal assignment with a type hint and a comment, and papermill parses each one
    lines = [ln for ln in tagged[0].source.splitlines() if ln.strip()]
    for ln in lines:
        node = ast.parse(ln).body[0]
        assert isinstance(node, ast.AnnAssign) and "#" in ln, ln
        ast.literal_eval(node.value)
    assert len(papermill.inspect_notebook(str(path))) == len(lines)
    assert "profile" in papermill.inspect_notebook(str(path))
    assert all("../" not in c.source for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_narrates_and_lib_does_the_work(path):
    """One setup call, cells of calls (under 1,200 characters), hand-offs only through lib.artifacts: no file
    name of another stage, no results or metrics folder, no other notebook's metrics file."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    assert sum(f'stage.setup("{path.stem}"' in c.source for c in code) == 1
    for c in code:
        assert len(c.source) < 1200, c.source[:80]
        assert not re.search(
            r"results_dir|metrics_dir|paths\.|json\.load|np\.load\(|\.npz|\.pt\b", c.source
        ), c.source[:80]


#: committed outputs and docs that a run or a person writes: none may carry a machine's absolute path
COMMITTED_TEXT = ("README.md", "figures", "models", "data_manifests", "notebooks", "params")
ABSOLUTE = re.compile(r"(?<![\w.~])/(?:root|home|tmp|Users|private|var/folders|mnt|work)/")


def test_committed_outputs_carry_no_absolute_machine_path():
    listed = subprocess.run(["git", "ls-files", "-z", *COMMITTED_TEXT], cwd=paths.PROJ_ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")  # fmt: skip
    files = [paths.PROJ_ROOT / f for f in listed if f and not f.endswith((".png", ".safetensors", ".npz"))]
    assert len(files) > 10
    here = (str(paths.PROJ_ROOT), str(Path.home()) + "/")
    bad = {}
    for f in files:
        text = f.read_text(errors="replace")
        hits = [h for h in here if h in text] + ABSOLUTE.findall(text)
        if hits:
            bad[str(f.relative_to(paths.PROJ_ROOT))] = hits[:3]
    assert not bad, f"absolute paths in committed files: {bad}"


def test_display_shows_paths_relative_to_the_repository_or_home(tmp_path):
    assert paths.display(paths.FIGURES_DIR / "metrics" / "x.json") == "figures/metrics/x.json"
    assert paths.display(Path.home() / ".cache" / "torch") == "~/.cache/torch"
    outside = Path("/opt/elsewhere/file.pth")
    assert paths.display(outside) == str(outside)
