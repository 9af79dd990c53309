"""Paths as shown to a person (lib.paths.display): relative to the repository or the home folder."""

from pathlib import Path

from lib import paths


def test_display_shows_paths_relative_to_the_repository_or_home(tmp_path):
    assert paths.display(paths.FIGURES_DIR / "metrics" / "x.json") == "figures/metrics/x.json"
    assert paths.display(Path.home() / ".cache" / "torch") == "~/.cache/torch"
    outside = Path("/opt/elsewhere/file.pth")
    assert paths.display(outside) == str(outside)
