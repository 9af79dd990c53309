"""A parameter profile (``params/<profile>.yaml``) and how a notebook's settings are resolved from it.

    description: what the profile is for
    defaults:            # common parameters (:class:`Common`), or any notebook's, for every notebook
      subject: 1
    notebooks:           # the parameters a notebook declares in its parameters cell
      "02": {lowlevel_size: 16}
    hyperparameters:     # the configuration dataclasses of lib.stage.configs.SECTIONS
      mlp: {width: 512, epochs: 40}

Overrides (``--set`` of ``python -m lib.pipeline``, or a notebook's ``overrides`` dict) name a common parameter
(``subject``) or a hyperparameter as ``section.field`` (``mlp.epochs``) and win over the profile."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from lib import paths
from lib.stage.configs import SECTIONS

TOP_LEVEL = ("description", "defaults", "notebooks", "hyperparameters")


class ProfileError(ValueError):
    """A profile, a parameter or an override that is not what was expected; the message names it."""


@dataclasses.dataclass(frozen=True)
class Common:
    """The parameters every notebook shares, declared once here and resolved by :func:`lib.stage.setup` from
    the profile's ``defaults`` and the notebook's ``overrides``."""

    data_root: str = (
        ""  # empty: data/<profile>, simulated on first use (or $NSD_ROOT for nsd); a path must exist
    )
    subject: int = 1  # NSD subject, 1..8; its shared images are the test set
    # the subjects 00 prepares and 06's shared-subject experiment uses (empty: [subject]); a simulated profile
    # simulates as many as the largest needs
    subjects: list = dataclasses.field(default_factory=list)
    sessions: list = dataclasses.field(
        default_factory=list
    )  # 1-based sessions read; empty: every one on disk
    roi: str = "nsdgeneral"  # ROI group: a name, 'file:label', or a '+'-joined union (lib.data.rois)
    seed: int = 0  # seed of initialisation, batches, crops, perturbations and draws
    device: str = "auto"  # auto: CUDA when present, else CPU
    nonfinite: str = "error"  # NaN/inf betas: "error" names the file, "drop" leaves those voxels out

    def __post_init__(self) -> None:
        if self.nonfinite not in ("error", "drop"):
            raise ProfileError(f"nonfinite={self.nonfinite!r}: expected 'error' or 'drop'")

    @property
    def subject_list(self) -> list[int]:
        """The subjects of :attr:`subjects` (default: the one subject), each 1..8, in order, once."""
        out = [int(s) for s in (self.subjects or [self.subject])]
        if any(isinstance(s, bool) or not 1 <= s <= 8 for s in out) or len(set(out)) != len(out):
            raise ProfileError(f"subjects={self.subjects!r}: expected distinct NSD subjects 1..8")
        return out

    @property
    def session_list(self) -> list[int] | None:
        """The sessions as the readers take them (None: every session on disk)."""
        return list(self.sessions) or None


COMMON = tuple(f.name for f in dataclasses.fields(Common))
_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "list": (list,)}


def type_ok(value, declared: str | None) -> bool:
    """Whether ``value`` is of a declared type name (bool, int, float, str, list; others are not checked): a
    float takes an int, and neither number takes a bool."""
    want = _TYPES.get(declared or "")
    return want is None or (
        isinstance(value, want) and not (isinstance(value, bool) and declared in ("int", "float"))
    )


def check_type(where: str, name: str, value, declared: str | None) -> None:
    """:func:`type_ok`, or an error naming ``where`` the value came from."""
    if not type_ok(value, declared):
        raise ProfileError(f"{where}: {name}={value!r} is {type(value).__name__}, expected {declared}")


def _type_name(field: dataclasses.Field) -> str:
    return str(field.type).split("|")[0].strip()


def load(profile: str) -> dict:
    """The profile as a dict with every top-level key present and its ``path``; an unknown key, section or
    field is an error naming the file."""
    path = paths.PARAMS_DIR / f"{profile}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in paths.PARAMS_DIR.glob("*.yaml"))
        raise ProfileError(f"profile {profile!r}: no {path} (profiles: {have})")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    unknown = set(cfg) - set(TOP_LEVEL)
    if unknown:
        raise ProfileError(
            f"{path}: unknown top-level keys {sorted(unknown)} (expected {', '.join(TOP_LEVEL)})"
        )
    cfg = {"description": cfg.get("description", ""), "defaults": cfg.get("defaults") or {},
           "notebooks": {str(k).zfill(2): v or {} for k, v in (cfg.get("notebooks") or {}).items()},
           "hyperparameters": cfg.get("hyperparameters") or {}, "path": Path(path)}  # fmt: skip
    for section, values in cfg["hyperparameters"].items():
        if not isinstance(values or {}, dict):
            raise ProfileError(f"{path}: hyperparameters.{section}: expected a mapping of field: value")
        where = f"{path} (hyperparameters)"
        check_hyperparameters({f"{section}.{k}": v for k, v in (values or {}).items()}, where)
    return cfg


def check_common(values: dict, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(Common)}
    for k, v in values.items():
        if k not in fields:
            raise ProfileError(
                f"{where}: {k!r} is not a common parameter (expected one of {', '.join(COMMON)})"
            )
        check_type(where, k, v, _type_name(fields[k]))


def check_hyperparameters(values: dict, where: str) -> None:
    """``{"section.field": value}`` against :data:`lib.stage.configs.SECTIONS`."""
    for key, v in values.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ProfileError(f"{where}: {key!r}: no hyperparameter section {section!r} "
                               f"(sections: {', '.join(sorted(SECTIONS))})")  # fmt: skip
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        if name not in fields:
            raise ProfileError(f"{where}: {key!r}: {SECTIONS[section].__name__} has no field {name!r} "
                               f"(fields: {', '.join(fields)})")  # fmt: skip
        check_type(where, key, v, _type_name(fields[name]))


def split_overrides(overrides: dict, where: str = "overrides") -> tuple[dict, dict]:
    """({common parameter: value}, {"section.field": value}) of ``overrides``, each checked."""
    common = {k: v for k, v in overrides.items() if "." not in k}
    hyper = {k: v for k, v in overrides.items() if "." in k}
    check_common(common, where)
    check_hyperparameters(hyper, where)
    return common, hyper


def resolve_common(cfg: dict, overrides: dict | None = None) -> Common:
    common, _ = split_overrides(overrides or {})
    defaults = {k: v for k, v in cfg["defaults"].items() if k in COMMON}  # the rest are notebook parameters
    check_common(defaults, f"{cfg['path']} (defaults)")
    return Common(**(defaults | common))


def resolve_config(cfg: dict, section: str, overrides: dict | None = None, **fixed):
    """The dataclass of hyperparameter ``section``: its defaults, then the profile's values, then ``overrides``
    (``section.field``), then ``fixed`` (what the notebook sets itself, e.g. the seed)."""
    if section not in SECTIONS:
        raise ProfileError(
            f"hyperparameter section {section!r}: expected one of {', '.join(sorted(SECTIONS))}"
        )
    _, hyper = split_overrides(overrides or {})
    values = dict(cfg["hyperparameters"].get(section) or {})
    values |= {k.partition(".")[2]: v for k, v in hyper.items() if k.partition(".")[0] == section}
    out = SECTIONS[section](**(values | fixed))
    if hasattr(out, "check"):
        try:
            out.check()
        except ValueError as e:
            raise ProfileError(f"{cfg['path']} (hyperparameters.{section}) or overrides: {e}") from None
    return out
