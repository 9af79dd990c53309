"""ROI files, label tables and named ROI groups (V1 = V1v + V1d, early, ventral, floc-faces...) as NSD defines them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

#: ROI volumes NSD ships per subject, in the order a bare label name is looked up.
ROI_FILES = (
    "nsdgeneral",
    "prf-visualrois",
    "prf-eccrois",
    "streams",
    "floc-faces",
    "floc-bodies",
    "floc-places",
    "floc-words",
    "Kastner2015",
    "HCP_MMP1",
    "visualsulc",
    "corticalsulc",
    "fVTC",
)

#: Named groups: name -> (ROI file, label names, or None for every label > 0).
GROUPS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "V1": ("prf-visualrois", ("V1v", "V1d")),
    "V2": ("prf-visualrois", ("V2v", "V2d")),
    "V3": ("prf-visualrois", ("V3v", "V3d")),
    "V1-V3": ("prf-visualrois", ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d")),
    "V1-hV4": ("prf-visualrois", None),
    "early": ("streams", ("early",)),
    "midventral": ("streams", ("midventral",)),
    "midlateral": ("streams", ("midlateral",)),
    "midparietal": ("streams", ("midparietal",)),
    "ventral": ("streams", ("ventral",)),
    "lateral": ("streams", ("lateral",)),
    "parietal": ("streams", ("parietal",)),
    "higher": ("streams", ("ventral", "lateral", "parietal")),
}

#: The ROI groups a researcher compares first (used by notebooks for counts and decoding comparisons).
STANDARD_GROUPS = (
    "nsdgeneral",
    "V1-hV4",
    "V1",
    "V2",
    "V3",
    "hV4",
    "early",
    "ventral",
    "lateral",
    "parietal",
    "higher",
    "floc-faces",
    "floc-bodies",
    "floc-places",
)


@dataclass(frozen=True)
class Selection:
    """One resolved piece of an ROI name: a file, which labels of it (None = all > 0), and the hemisphere."""

    file: str
    labels: tuple[int, ...] | None
    hemi: str | None = None


def parse_ctab(text: str, source: str = "<ctab>") -> dict[int, str]:
    """Parse a FreeSurfer-style ``.ctab`` file (``<int> <name> [r g b a]`` per line) into {label: name}."""
    table: dict[int, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            label = int(parts[0])
        except ValueError:
            raise ValueError(f"{source}:{n}: expected '<int> <name>', got {line!r}") from None
        if len(parts) < 2:
            raise ValueError(f"{source}:{n}: label {label} has no name")
        table[label] = parts[1]
    return table


def format_ctab(table: dict[int, str]) -> str:
    """Write {label: name} in the ``.ctab`` layout NSD ships (``0 Unknown`` first)."""
    rows = {0: "Unknown", **table}
    return "".join(f"{k:>3d}  {v}\n" for k, v in sorted(rows.items()))


def split_union(name: str) -> list[str]:
    """``"V1+floc-faces"`` -> ``["V1", "floc-faces"]``; a name that itself has '+' (``ecc4+``) stays whole."""
    out: list[str] = []
    for p in name.split("+"):  # an empty part re-attaches its '+' to the label before it ("ecc4+")
        if p == "" and out:
            out[-1] += "+"
        else:
            out.append(p)
    return out


def resolve(name: str, available: dict[str, dict[int, str]], hemi: str | None = None) -> list[Selection]:
    """Resolve an ROI name into file/label selections.

    ``available`` maps each ROI file present for the subject to its {label: name} table. A name is, in order:
    a group of :data:`GROUPS`; an ROI file (all labels > 0); ``file:label``; a label name looked up in the files of
    :data:`ROI_FILES` order (then any other file); or a ``+``-joined union of these (a trailing '+' belongs to
    the label, as in ``ecc4+``).
    """
    if hemi not in (None, "lh", "rh"):
        raise ValueError(f"hemi={hemi!r}: expected None, 'lh' or 'rh'")
    if not isinstance(name, str) or not name:
        raise ValueError(f"ROI name {name!r}: expected a non-empty string")
    out = []
    for part in split_union(name):
        sel = _resolve_one(part, available, hemi)
        if sel is None:
            raise KeyError(_unknown(part, available))
        out.append(sel)
    return out


def _labels_of(
    file: str, names: tuple[str, ...], available: dict[str, dict[int, str]], roi: str
) -> tuple[int, ...]:
    table = available[file]
    inverse = {v: k for k, v in table.items()}
    missing = [n for n in names if n not in inverse]
    if missing:
        raise KeyError(
            f"ROI {roi!r}: label(s) {missing} not in {file}.mgz.ctab (has {sorted(table.values())})"
        )
    return tuple(inverse[n] for n in names)


def _resolve_one(name: str, available: dict[str, dict[int, str]], hemi: str | None) -> Selection | None:
    if name in GROUPS:
        file, names = GROUPS[name]
        if file not in available:
            raise KeyError(f"ROI {name!r} needs the ROI file {file!r}, which this subject lacks")
        return Selection(file, None if names is None else _labels_of(file, names, available, name), hemi)
    if name in available:
        return Selection(name, None, hemi)
    if ":" in name:
        file, label = name.split(":", 1)
        if file not in available:
            raise KeyError(f"ROI {name!r}: no ROI file {file!r} (available: {sorted(available)})")
        return Selection(file, _labels_of(file, (label,), available, name), hemi)
    order = [f for f in ROI_FILES if f in available] + sorted(set(available) - set(ROI_FILES))
    hits = [(f, k) for f in order for k, lname in available[f].items() if k > 0 and lname == name]
    if not hits:
        return None
    if len({f for f, _ in hits}) > 1:
        files = ", ".join(dict.fromkeys(f for f, _ in hits))
        warnings.warn(f"ROI {name!r} is a label of several ROI files ({files}): {hits[0][0]} is used; write "
                      f"'file:{name}' to choose", stacklevel=3)  # fmt: skip
    return Selection(hits[0][0], (hits[0][1],), hemi)


def _unknown(name: str, available: dict[str, dict[int, str]]) -> str:
    labels = sorted({v for t in available.values() for k, v in t.items() if k > 0})
    return (
        f"unknown ROI {name!r}: expected a group {sorted(GROUPS)}, an ROI file {sorted(available)}, "
        f"'file:label', a label name (e.g. {labels[:12]}), or a '+'-joined union"
    )
