"""Repository rules: environment.yml agrees with pyproject.toml; notebooks are stripped, numbered, parameterised."""

import ast
import re
import tomllib

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
