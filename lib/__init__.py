"""NSD reconstruction workbench. Sub-packages by pipeline stage: ``lib.data`` (NSD reader, ROIs, mini-NSD
simulator, preparation), ``lib.models`` (embedding, encoders, generator, pretrained models), ``lib.analysis``
(decoding analyses, leave-one-out, metrics and judges), ``lib.report`` (figures, HTML report); beside them the
notebook setup (``lib.stage``), the hand-offs between notebooks (``lib.artifacts``), the training harness
(``lib.trainer``), the pipeline runner and pretraining."""

__version__ = "0.1.0"
