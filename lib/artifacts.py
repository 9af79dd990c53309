"""What each stage hands the next: one registry of the files under ``build/<profile>/results/``, and typed save
and load functions that record what produced each file (the embedding model's key, the ROI and subject, the
settings later stages must share) and refuse a missing, stale or mismatched one with a one-line error naming the
notebook to rerun. Notebooks never spell another stage's file name; they go through :class:`Store`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lib import fileio, paths
from lib.models import embedding, stylegan2
from lib.models.lowlevel import LowLevelDecoder
from lib.models.mlp import MLPEncoder
from lib.models.ridge import RidgeEncoder

#: The notebooks, in execution order.
STAGES = (
    "00_data_prep",
    "01_joint_embedding",
    "02_fmri_encoder",
    "03_stylegan2",
    "04_leave_one_out",
    "05_evaluation",
    "06_few_sessions",
)

PREDICTIONS_FORMAT = "lib.encoders.predictions/1"  # the tag of files written before lib.artifacts, still read
RECONSTRUCTIONS_FORMAT = "lib.artifacts.reconstructions/1"
#: Settings of 03 that 04 and 05 must share (read from the reconstructions, never set twice).
GENERATION_SETTINGS = (
    "feature_ratio",
    "encoder",
    "opt_steps",
    "opt_lr",
    "opt_anchor",
    "opt_noise_maps",
    "combine",
    "opt_lowlevel",
    "impose_strength",
)


class ArtifactError(ValueError):
    """A hand-off file is missing, unreadable, or made by another model or setting than the caller expects."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    stage: str  # the notebook that writes it
    file: str  # its name in that notebook's results folder
    what: str


#: Every file one stage hands another, by name.
ARTIFACTS = {
    "embedder": Artifact("01_joint_embedding", "clip_model.pt", "the joint embedding 01 used (weights)"),
    "embedder_scratch": Artifact(
        "01_joint_embedding", "clip_scratch.pt", "the embedding 01 trained from scratch"
    ),
    "embeddings": Artifact(
        "01_joint_embedding", "embeddings.npz", "image and caption embeddings of the stimuli"
    ),
    "ridge_image": Artifact("02_fmri_encoder", "ridge_image.npz", "ridge: voxels -> image embedding"),
    "ridge_text": Artifact("02_fmri_encoder", "ridge_text.npz", "ridge: voxels -> caption embedding"),
    "mlp_image": Artifact("02_fmri_encoder", "mlp_image.pt", "residual MLP: voxels -> image embedding"),
    "mlp_text": Artifact("02_fmri_encoder", "mlp_text.pt", "residual MLP: voxels -> caption embedding"),
    "ridge_dino": Artifact("02_fmri_encoder", "ridge_dino.npz", "ridge: voxels -> DINO's image vector"),
    "mlp_dino": Artifact("02_fmri_encoder", "mlp_dino.pt", "residual MLP: voxels -> DINO's image vector"),
    "predictions": Artifact("02_fmri_encoder", "predictions.npz", "test-set predictions and targets of 02"),
    "lowlevel_ridge": Artifact(
        "02_fmri_encoder", "lowlevel_ridge.npz", "ridge: early visual voxels -> low-resolution image"
    ),
    "lowlevel_mlp": Artifact(
        "02_fmri_encoder", "lowlevel_mlp.pt", "residual MLP: early visual voxels -> low-resolution image"
    ),
    "generator": Artifact("03_stylegan2", "generator.pt", "the generator before fMRI tuning"),
    "generator_tuned": Artifact("03_stylegan2", "generator_tuned.pt", "the generator after fMRI tuning"),
    "reconstructions": Artifact(
        "03_stylegan2", "reconstructions.npz", "03's reconstructions of the test images"
    ),
}
ENCODERS = ("ridge_image", "ridge_text", "mlp_image", "mlp_text", "ridge_dino", "mlp_dino")
GENERATORS = ("generator", "generator_tuned")
LOWLEVEL = ("lowlevel_ridge", "lowlevel_mlp")


def _one_of(name: str, names, kind: str) -> None:
    if name not in names:
        raise ArtifactError(f"{kind} {name!r}: expected one of {', '.join(names)}")


def _read_npz(path, fmt: str, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The members ``keys`` (default: all but the tag) of an ``.npz`` hand-off, refused unless tagged ``fmt``."""
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"]) != fmt:
            raise ValueError(f"not a {fmt} file")
        return {k: z[k] for k in (keys or z.files) if k != "format"}


class Store:
    """The hand-off files of one profile (under ``root``, by default ``build/<profile>/results/``)."""

    def __init__(self, profile: str, root: str | os.PathLike | None = None):
        self.profile = profile
        self.root = Path(root) if root is not None else paths.results_dir(profile)

    def __repr__(self) -> str:
        return f"Store({self.profile!r}, {paths.display(self.root)!r})"

    def path(self, name: str) -> Path:
        """Where artifact ``name`` (a key of :data:`ARTIFACTS`) lives."""
        a = self._spec(name)
        return self.root / a.stage / a.file

    def work_dir(self, stage: str, *parts: str) -> Path:
        """A stage's own folder for resumable training states (created)."""
        if stage not in STAGES:
            raise ArtifactError(f"stage {stage!r}: expected one of {', '.join(STAGES)}")
        d = self.root.joinpath(stage, *parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    # ------------------------------------------------------------------------------------------------------------
    def _spec(self, name: str) -> Artifact:
        _one_of(name, ARTIFACTS, "artifact")
        return ARTIFACTS[name]

    def error(self, name: str, problem: str) -> ArtifactError:
        """A one-line error about artifact ``name`` that says which notebook to rerun, and how."""
        return ArtifactError(
            f"{paths.display(self.path(name))}: {problem}; rerun {paths.rerun(self._spec(name).stage, self.profile)}"
        )

    def require(self, name: str) -> Path:
        path = self.path(name)
        if not path.is_file():
            raise self.error(name, "missing")
        return path

    def _check(self, name: str, meta: dict, expect: dict[str, Any]) -> None:
        for k, want in expect.items():
            if want is None:
                continue
            got = meta.get(k)
            if got != want:
                raise self.error(name, f"made with {k}={got!r}, expected {want!r}")

    def _load(self, name: str, reader, expect: dict[str, Any]):
        path = self.require(name)
        try:
            obj = reader(path)
        except Exception as e:  # noqa: BLE001 - any unreadable or foreign file is the same user error
            first = (str(e).splitlines() or [""])[0][:160]
            raise self.error(name, f"unreadable ({type(e).__name__}: {first})") from None
        self._check(name, getattr(obj, "meta", None) or {}, expect)
        return obj

    # ------------------------------------------------------------------------------------------------ 01
    def save_embedder(self, emb, meta: dict | None = None, scratch: bool = False) -> Path:
        """The embedding model of 01 (``scratch``: the one trained from scratch beside it)."""

        return embedding.save_checkpoint(self.path("embedder_scratch" if scratch else "embedder"), emb, meta)

    def load_embedder(self, device: str = "auto", scratch: bool = False):

        name = "embedder_scratch" if scratch else "embedder"
        return self._load(name, lambda p: embedding.load(checkpoint=p, device=device), {})

    def save_embeddings(self, ids, image, text, model_key: str, text_each=None, **extra) -> Path:

        return embedding.save_embeddings(
            self.path("embeddings"), ids, image, text, model_key, text_each, **extra
        )

    def load_embeddings(self, model_key: str | None = None) -> dict[str, np.ndarray]:
        """01's embeddings of every stimulus (``ids``, ``image``, ``text``, ...); with ``model_key``, refused
        unless that embedding model made them."""

        vec = self._load("embeddings", embedding.load_embeddings, {})
        self._check("embeddings", {"model_key": vec["model_key"]}, {"model_key": model_key})
        return vec

    # ------------------------------------------------------------------------------------------------ 02
    def save_encoder(self, name: str, enc, model_key: str, roi: str, subject: int) -> Path:
        """An encoder of 02 (``name`` in :data:`ENCODERS`) with the embedding model, ROI and subject it maps."""
        _one_of(name, ENCODERS, "encoder")
        return enc.save(self.path(name), meta={"model_key": model_key, "roi": roi, "subject": int(subject)})

    def load_encoder(self, name: str, device: str = "auto", model_key: str | None = None, roi: str | None = None,
                     subject: int | None = None):  # fmt: skip
        """An encoder of 02; each given expectation (``model_key``, ``roi``, ``subject``) must match its file."""

        _one_of(name, ENCODERS, "encoder")
        reader = (
            RidgeEncoder.load if name.startswith("ridge") else lambda p: MLPEncoder.load(p, device=device)
        )
        return self._load(name, reader, {"model_key": model_key, "roi": roi, "subject": subject})

    def save_lowlevel(self, dec, roi: str, subject: int) -> Path:
        """02's spatial-pathway decoder (:class:`lib.models.lowlevel.LowLevelDecoder`) with the ROI and subject
        whose prepared voxels it reads; the file of the other decoder model is removed, so one decoder is current."""
        name = f"lowlevel_{dec.model}"
        for other in LOWLEVEL:
            if other != name and self.exists(other):
                self.path(other).unlink()
        return dec.save(self.path(name), meta={"roi": roi, "subject": int(subject)})

    def load_lowlevel(self, device: str = "auto", roi: str | None = None, subject: int | None = None):
        """02's current spatial-pathway decoder; each given expectation (``roi``, ``subject``) must match."""

        name = next((n for n in LOWLEVEL if self.exists(n)), LOWLEVEL[0])
        return self._load(
            name, lambda p: LowLevelDecoder.load(p, device=device), {"roi": roi, "subject": subject}
        )

    def save_predictions(
        self, test_ids, model_key: str, roi: str, subject: int, **arrays: np.ndarray
    ) -> Path:
        """02's test-set predictions (``pred_<encoder>``: its retrieval space, ``head_<encoder>``: an MLP's
        regression head) and targets (``true_<kind>``), with the test ids and what made them."""
        meta = json.dumps({"model_key": model_key, "roi": roi, "subject": int(subject)})
        with fileio.atomic_path(self.path("predictions"), suffix=".npz") as tmp:
            np.savez(tmp, format=np.array(PREDICTIONS_FORMAT), test_ids=np.asarray(test_ids),
                     model_key=np.array(model_key), meta=np.array(meta), **arrays)  # fmt: skip
        return self.path("predictions")

    def load_predictions(self, model_key: str | None = None, roi: str | None = None,
                         subject: int | None = None) -> dict[str, np.ndarray]:  # fmt: skip
        def read_with_meta(path):
            out = _read_npz(path, PREDICTIONS_FORMAT)
            meta = json.loads(str(out.pop("meta"))) if "meta" in out else {"model_key": str(out["model_key"])}
            return out, meta

        out, meta = self._load("predictions", read_with_meta, {})
        self._check("predictions", meta, {"model_key": model_key, "roi": roi, "subject": subject})
        return out

    # ------------------------------------------------------------------------------------------------ 03
    def save_generator(self, name: str, G, model_key: str, **meta) -> Path:
        """A generator of 03 (``name`` in :data:`GENERATORS`) with the embedding model it is conditioned on."""

        _one_of(name, GENERATORS, "generator")
        return stylegan2.save_generator(self.path(name), G, {"model_key": model_key, **meta})

    def load_generator(self, name: str, device: str = "cpu", model_key: str | None = None):
        """A generator of 03, refused unless conditioned on ``model_key``'s space (when given)."""

        _one_of(name, GENERATORS, "generator")
        return self._load(
            name, lambda p: stylegan2.load_generator(p, device=device), {"model_key": model_key}
        )

    def save_reconstructions(self, test_ids, variants: dict[str, np.ndarray], provenance: dict[str, str],
                             model_key: str, settings: dict[str, Any]) -> Path:  # fmt: skip
        """03's reconstructions (variant -> uint8 (N, S, S, 3)), each with a line saying what produced it, and the
        settings of :data:`GENERATION_SETTINGS` that later stages reuse."""
        if set(provenance) != set(variants):
            raise ArtifactError(f"provenance names {sorted(provenance)}, variants are {sorted(variants)}")
        missing = [k for k in GENERATION_SETTINGS if k not in settings]
        if missing:
            raise ArtifactError(f"settings: missing {', '.join(missing)}")
        meta = {
            "model_key": model_key,
            "provenance": provenance,
            "settings": settings,
            "variants": list(variants),
        }
        with fileio.atomic_path(self.path("reconstructions"), suffix=".npz") as tmp:
            np.savez_compressed(tmp, format=np.array(RECONSTRUCTIONS_FORMAT), test_ids=np.asarray(test_ids),
                                meta=np.array(json.dumps(meta)), **{f"v{i}": v for i, v in enumerate(variants.values())})  # fmt: skip
        return self.path("reconstructions")

    def load_reconstructions(self, model_key: str | None = None) -> Reconstructions:
        def read(path):
            z = _read_npz(path, RECONSTRUCTIONS_FORMAT)
            meta = json.loads(str(z["meta"]))
            variants = {name: z[f"v{i}"] for i, name in enumerate(meta["variants"])}
            return Reconstructions(z["test_ids"], variants, meta["provenance"], meta["settings"], meta)

        rec = self._load("reconstructions", read, {"model_key": model_key})
        self._settings(rec.settings)
        return rec

    def generation_settings(self) -> dict[str, Any]:
        """03's settings that 04 and 05 reuse (:data:`GENERATION_SETTINGS`: the perturbation ratio, the encoder
        03 optimised, the latent optimisation's), read from the reconstructions file without its images."""

        def read(path):  # the meta member only: the images are not read
            return json.loads(str(_read_npz(path, RECONSTRUCTIONS_FORMAT, ["meta"])["meta"]))["settings"]

        return self._settings(self._load("reconstructions", read, {}))

    def _settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` checked to hold every one of :data:`GENERATION_SETTINGS` (an older 03 wrote fewer)."""
        missing = [k for k in GENERATION_SETTINGS if k not in settings]
        if missing:
            raise self.error(
                "reconstructions", f"written without the setting(s) {', '.join(missing)} (an older 03)"
            )
        return settings


@dataclasses.dataclass
class Reconstructions:
    """03's hand-off to 05: the test ids, the variants, what produced each, and 03's generation settings."""

    test_ids: np.ndarray
    variants: dict[str, np.ndarray]
    provenance: dict[str, str]
    settings: dict[str, Any]
    meta: dict[str, Any]
