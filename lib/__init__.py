"""NSD reconstruction workbench: data access, mini-NSD simulator, preprocessing and the notebook pipeline."""

__version__ = "0.1.0"
