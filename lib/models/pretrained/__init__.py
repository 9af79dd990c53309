"""The shipped pretrained mini-world models (``models/``): their manifest, checksum-verified paths and loaders."""

from __future__ import annotations

import json
from pathlib import Path

from lib import fileio, paths, runtime
from lib.models import dino, embedding, shape_judge
from lib.models import stylegan2 as sg

MODELS_DIR = paths.PROJ_ROOT / "models"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "lib.models.manifest/1"
#: the file of each pretrained model (stage name of :mod:`lib.models.pretrained.train` -> file name)
FILES = {"clip": "mini_clip.safetensors", "dino": "mini_dino.safetensors", "gan": "mini_lafite.safetensors",
         "judge": "mini_shape_judge.safetensors"}  # fmt: skip


class ModelError(ValueError):
    """A model file that is missing, not in its manifest, or whose checksum does not match it."""


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable model manifest ({type(e).__name__})") from None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("models"), dict):
        raise ModelError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    return manifest


def entry(path: str | Path) -> dict:
    """The manifest entry of model file ``path`` (the manifest lies beside it)."""
    path = Path(path)
    manifest = read_manifest(path.with_name(MANIFEST))
    if path.name not in manifest["models"]:
        raise ModelError(f"{path}: not listed in {path.with_name(MANIFEST)}")
    return manifest["models"][path.name]


def verified(path: str | Path) -> Path:
    """``path`` after checking its size and sha256 against the manifest beside it; a mismatch is an error."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (shipped under models/, or made by make pretrain)")
    want = entry(path)
    got = fileio.file_sha256(path, n=64)
    if path.stat().st_size != want["bytes"] or got != want["sha256"]:
        raise ModelError(
            f"{path}: sha256 {got[:16]}... does not match the manifest's {want['sha256'][:16]}... "
            "(restore it with git checkout, or rerun make pretrain)"
        )
    return path


def path(stage: str, folder: str | Path | None = None) -> Path:
    """The verified file of pretrained model ``stage`` (clip, dino, gan or judge) in ``folder`` (default models/)."""
    if stage not in FILES:
        raise ModelError(f"stage={stage!r}: expected one of {sorted(FILES)}")
    return verified(Path(folder or MODELS_DIR) / FILES[stage])


def load_embedding(folder: str | Path | None = None, device: str = "auto"):
    """The pretrained joint embedding as a :class:`lib.models.embedding.Embedder` (checksum verified)."""

    return embedding.load(checkpoint=path("clip", folder), device=device)


def load_dino(folder: str | Path | None = None, device: str = "auto"):
    """(backbone, (mean, std)) of the pretrained DINO teacher (checksum verified)."""

    backbone, stats = dino.load_backbone(path("dino", folder))
    return backbone.to(runtime.pick_device(device)), stats


def load_generator(folder: str | Path | None = None, device: str = "auto"):
    """The pretrained LAFITE-style generator (checksum verified), in eval mode."""

    return sg.load_generator(path("gan", folder), runtime.pick_device(device))


def load_shape_judge(folder: str | Path | None = None, device: str = "auto"):
    """The pretrained shape judge as a :class:`lib.models.shape_judge.ShapeJudge` (checksum verified)."""

    return shape_judge.load(path("judge", folder), device)


def provenance(stage: str, folder: str | Path | None = None) -> dict:
    """What a copy or a product of pretrained model ``stage`` records of it: file name and sha256."""
    p = path(stage, folder)
    return {"file": p.name, "sha256": entry(p)["sha256"]}


def conditioned_on(folder: str | Path | None = None) -> dict:
    """:func:`provenance` of the embedding the pretrained generator was trained on (from the manifest)."""
    g = entry(path("gan", folder))
    clip = read_manifest(Path(folder or MODELS_DIR) / MANIFEST)["models"].get(g["conditioned_on"])
    if clip is None:
        raise ModelError(
            f"{FILES['gan']}: conditioned on {g['conditioned_on']}, which the manifest does not list"
        )
    return {"file": g["conditioned_on"], "sha256": clip["sha256"]}
