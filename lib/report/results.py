"""One results type per notebook: what its metrics JSON holds, written through :meth:`lib.stage.Stage.save_results`
and read back by the report through :func:`load`. A key added, renamed or dropped on one side is an error naming it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


class ResultsError(ValueError):
    """A metrics file that does not hold its stage's results type: the message names the file and the key."""


#: what every metrics file holds beside its stage's results: the run's profile, seed and device
HEADER = ("profile", "seed", "device")


@dataclasses.dataclass
class DataPrep:
    """00: the prepared voxels, trials and images, and the data-quality numbers (noise ceiling, ncsnr)."""

    n_test_images: int
    n_test_trials: int
    n_train_images: int
    n_train_trials: int
    n_voxels: int
    n_voxels_dropped_nonfinite: int
    ncsnr_median: float
    noise_ceiling_test_median_pct: float
    roi: str
    simulate_seconds: float | None  # None on real NSD
    split_half_reliability_median: dict
    subject: int
    voxels_per_roi: dict
    ncsnr_vs_truth_r: float | None = None  # mini-NSD: r of the estimated ncsnr with each voxel's true one
    # every subject of the common parameter ``subjects``, each prepared on its own (voxels, ROI, z-scoring):
    # {subjNN: sizes, median ncsnr and noise ceiling}
    subjects: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class JointEmbedding:
    """01: the embedding's probes and retrieval, and DINO's k-NN probes, beside random initialisation."""

    chance: float
    clip_steps: int
    dino_source: str
    embedding_source: str
    img2txt_top1: float
    model: dict
    n_test_images: int
    n_train_images: int
    scratch_seed_spread: dict | None  # None when no embedding was trained here (or on real data)
    subject: int
    torch_threads: int
    train_seconds: float
    txt2img_top1: float
    txt2img_top1_single_caption: float
    embedding_probes: dict | None = None  # only on simulated data (the probes read the scene attributes)
    probe_majority: dict | None = None  # only on simulated data
    probe_uncertainty: dict | None = None  # only on simulated data
    dino_knn: dict | None = None  # only with DINO (simulated data)
    dino_knn_clip_image: dict | None = None  # only with DINO
    dino_knn_random_init: dict | None = None  # only with DINO
    knn_majority: dict | None = None  # only with DINO
    linear_probe: dict | None = None  # only with DINO
    dino_grid_knn: dict | None = None  # only with DINO: its patch tokens pooled on a 2 x 2 grid
    dino_grid_knn_random_init: dict | None = None  # only with DINO
    dino_versus_random: dict | None = None  # only with DINO: {probe: {pair: {attribute: paired difference}}}
    dino_batch_entropy_final: float | None = None  # only when DINO is trained here
    dino_steps: int | None = None  # only when DINO is trained here
    dino_teacher_entropy_final: float | None = None  # only when DINO is trained here
    dino_train_seconds: float | None = None  # only when DINO is trained here


@dataclasses.dataclass
class FmriEncoder:
    """02: each encoder's scores on the test images, ROI groups, the spatial pathway, intervals and seed spread."""

    chance: float
    encoders: dict
    lowlevel: dict
    mlp_epochs: dict
    mlp_train_seconds: dict
    n_test: int
    n_train: int
    ridge_alpha: dict
    ridge_learning_curve: dict
    roi: str
    roi_chance: dict
    roi_groups: dict
    roi_groups_ceiling: dict | None  # None on real data (no noise-free responses)
    roi_uncertainty: dict
    seed_spread: dict
    subject: int
    test_on: str
    train_on: str
    uncertainty: dict
    voxel_r_median: dict
    best_fraction_of_ceiling: float | None = None  # only on simulated data, where the ceiling is known
    dino_retrieval_ratio: float | None = None  # only with DINO targets: best DINO / best CLIP-image retrieval
    spatial_targets: dict | None = (
        None  # only with DINO (simulated data): the spatial pathway's candidate targets
    )


@dataclasses.dataclass
class Generator:
    """03: the generator, its fMRI tuning, each reconstruction variant's own scores, and the generation settings 04 and 05 reuse."""

    align_pixel: float
    align_seconds: float
    align_steps: int
    chance: dict
    combine: str
    encoder: str
    feature_ratio: float
    gan_adversarial_seconds: float
    gan_monitor: list
    gan_steps: int
    gan_train_seconds: float
    generator: str
    generator_parameters: int
    impose_strength: float
    lafite_checkpoint: object | None
    n_test: int
    n_train: int
    opt_anchor: float
    opt_lowlevel: float
    opt_lr: float
    opt_noise_maps: bool
    opt_steps: int
    oracle_two_way_adversarial_only: float
    ratio_effect: dict
    resolution: int
    roi: str
    subject: int
    tune_pixel: float
    tune_seed_spread: dict
    tune_steps: int
    variants: dict


@dataclasses.dataclass
class LeaveOneOut:
    """04: voxel importance against the truth, effect maps checked against pRFs, and ROI-group effects."""

    combined_prf: dict | None  # None: no pRF centres (neither the simulator's truth nor NSD's pRF files)
    combined_voxels: list
    encoder: str
    examples: list
    generator: str
    group_effects: dict
    local_radius_deg: float
    localisation: dict
    lowlevel: str
    lowlevel_prf: dict | None  # None: no pRF centres
    lowlevel_prf_by_area: dict
    lowlevel_prf_files: dict | None  # None: no NSD-format pRF files
    n_samples: int
    n_voxels: int
    ratio: float
    replace: str
    roi: str
    roi_only_two_way: dict
    spearman_loo_vs_saliency: float
    subject: int
    sweep_seconds: float
    # checks against the simulator's truth (None on real data)
    prf_chance_error_px: float | None = None
    prf_median_error_px: float | None = None
    prf_p_value: float | None = None
    prf_readout_chance_error_px: float | None = None
    prf_readout_median_error_px: float | None = None
    prf_readout_p_value: float | None = None
    prf_voxels: int | None = None
    spearman_by_area: dict | None = None
    spearman_importance_vs_ncsnr: float | None = None
    spearman_importance_vs_truth: float | None = None


@dataclasses.dataclass
class Evaluation:
    """05: the field's metrics and the read-back judges for every variant, with intervals and paired comparisons."""

    baselines: list
    chance: dict
    generation_seconds: float
    generation_settings: dict
    n_test: int
    provenance: dict
    readback: dict
    readback_chance: dict
    readback_uncertainty: dict
    roi: str
    roi_table: dict
    roi_uncertainty: dict
    score_seconds: float
    subject: int
    table: dict
    unavailable: dict
    uncertainty: dict


@dataclasses.dataclass
class FewSessions:
    """06: each target subject decoded from its first k sessions, alone (ridge, MLP) and through the encoder shared
    with the other subjects (:mod:`lib.stage.few_sessions`), on its shared test images."""

    ks: list  # session counts (0: all)
    models: list
    subjects: list
    targets: list
    table: dict  # {subjNN: {"<model> @ k": {metric: value}}}
    intervals: dict  # {subjNN: {"<model> @ k": {metric: [low, high]}}}
    comparisons: dict  # {subjNN: {"a − b": {metric: paired}}}
    across_targets: dict  # {"<model> @ k": {metric: spread over targets}}
    seed_spread: dict  # {"<model> @ k": {metric: spread over seeds}} of the first target
    goals: dict  # the ratios at 1 session, for the first target
    new_subject_seconds: dict  # {subjNN: seconds to add it at the first k: maps, then fine-tuning}
    per_subject_parameters: dict  # {subjNN: its map's parameters}
    pretrain_seconds: dict  # {subjNN: seconds to pretrain on the others}
    seconds: dict  # {subjNN: {model: {k: seconds}}}
    peak_memory_mb: float
    roi: str
    shared_config: dict
    reconstructions: dict = dataclasses.field(
        default_factory=dict
    )  # judged 1-session reconstructions, when made


#: the results type of each notebook
TYPES: dict[str, type] = {
    "00_data_prep": DataPrep,
    "01_joint_embedding": JointEmbedding,
    "02_fmri_encoder": FmriEncoder,
    "03_stylegan2": Generator,
    "04_leave_one_out": LeaveOneOut,
    "05_evaluation": Evaluation,
    "06_few_sessions": FewSessions,
}


def stage_of(results) -> str:
    """The notebook whose results ``results`` are (e.g. ``02_fmri_encoder``)."""
    for stage, cls in TYPES.items():
        if type(results) is cls:
            return stage
    raise ResultsError(f"{type(results).__name__}: not a results type (expected one of {', '.join(TYPES)})")


def as_record(results, header: dict) -> dict:
    """The metrics JSON of ``results`` under ``header`` (profile, seed, device): what :func:`load` reads back."""
    stage_of(results)
    if set(header) != set(HEADER):
        raise ResultsError(f"header {sorted(header)}: expected {list(HEADER)}")
    return dict(header) | dataclasses.asdict(results)


def from_record(stage: str, record: dict, where: str = "") -> object:
    """``record`` (a metrics JSON's content) as the results type of ``stage``; a key the type lacks, or a required
    field the record lacks, is an error naming it and ``where`` (the file)."""
    if stage not in TYPES:
        raise ResultsError(f"stage {stage!r}: expected one of {', '.join(TYPES)}")
    cls, where = TYPES[stage], where or stage
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - set(fields) - set(HEADER))
    if unknown:
        raise ResultsError(f"{where}: key(s) {unknown} are not fields of {cls.__name__} (lib.report.results)")
    required = {n for n, f in fields.items() if f.default is dataclasses.MISSING}
    missing = sorted(required - set(record))
    if missing:
        raise ResultsError(f"{where}: {cls.__name__} field(s) {missing} are missing; rerun {stage}")
    return cls(**{k: v for k, v in record.items() if k in fields})


def load(folder: str | Path, stage: str) -> object | None:
    """The results of ``stage`` in the metrics ``folder`` (``<stage>.json``), or None when that file is absent."""
    path = Path(folder) / f"{stage}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not JSON ({e})") from None
    return from_record(stage, record, str(path))
