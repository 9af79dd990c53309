"""Repository rules: environment.yml agrees with pyproject.toml; notebooks are stripped, numbered, parameterised."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from lib import paths
from lib.stage import profile as profiles


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
    declared = papermill.inspect_notebook(str(path))
    assert len(declared) == len(lines) <= 15, (
        "at most 15 parameters: hyperparameters live in the profile YAML"
    )
    assert list(declared)[:2] == [
        "profile",
        "overrides",
    ]  # the common parameters are lib.stage.profile.Common's
    assert not set(declared) & set(profiles.COMMON), (
        "a common parameter is declared once, in lib.stage.profile"
    )
    assert all("../" not in c.source for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_narrates_and_lib_does_the_work(path):
    """One setup call, cells of calls (under 800 characters, none held there by a formatter exemption), hand-offs
    only through lib.artifacts: no file name of another stage, no results or metrics folder, no other notebook's
    metrics file, and no hand-built metrics dict (lib.report.results types them)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    assert sum(f'stage.setup("{path.stem}", profile, overrides)' in c.source for c in code) == 1
    assert sum("st.save_results(" in c.source for c in code) == 1 and not any(
        "save_metrics" in c.source for c in code
    )
    for c in nb.cells:
        assert "fmt: skip" not in c.source and "fmt: off" not in c.source, c.source[:80]
    for c in code:
        assert len(c.source) < 800, c.source[:80]
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


LAZY = re.compile(r"#\s*lazy: \S")


def test_imports_sit_at_the_top_except_lazy_heavy_ones_that_say_why():
    """Inside a function only an optional or heavy dependency is imported, on a line saying why (``# lazy: ...``);
    lib's own modules and the standard library are imported at the top, where import-linter sees them."""
    found = []
    for path in sorted((paths.PROJ_ROOT / "lib").rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    line = lines[node.end_lineno - 1]
                    if module.startswith("lib") or not LAZY.search(line):
                        found.append(f"{path.relative_to(paths.PROJ_ROOT)}:{node.lineno}: {line.strip()}")
    assert not found, "imports inside functions without a '# lazy: reason':\n" + "\n".join(found)


def test_the_import_layers_hold():
    """The layered contract of pyproject.toml ([tool.importlinter]), with no ignored imports."""
    config = tomllib.loads((paths.PROJ_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert all("ignore_imports" not in c for c in config["contracts"])
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--no-cache"], cwd=paths.PROJ_ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "1 kept, 0 broken" in run.stdout, run.stdout[-2000:]
