"""The hyperparameter sections of a profile (``params/<profile>.yaml``, ``hyperparameters:``): each names the
configuration dataclass it feeds. ``python -m lib.pipeline --set clip.steps=500`` (or a notebook's ``overrides``)
changes one field; a section or field not listed here is an error naming it."""

from __future__ import annotations

from lib.analysis import loo, readback, stats
from lib.models import contrastive, dino, gan, mlp, shared
from lib.stage import fmri_encoder

#: section name -> configuration dataclass (its defaults are the values of a profile that names none)
SECTIONS: dict[str, type] = {
    "stats": stats.StatsConfig,
    "loo": loo.LooConfig,
    "clip": contrastive.ClipTrainConfig,
    "dino": dino.DinoConfig,
    "mlp": mlp.MLPConfig,
    "shared": shared.SharedConfig,  # 06's shared-subject encoder
    "encoder": fmri_encoder.EncoderConfig,
    "gan": gan.GANConfig,
    "align": gan.AlignConfig,
    "tune": gan.TuneConfig,
    "opt": gan.OptConfig,
    "readback": readback.ReadbackConfig,
}
