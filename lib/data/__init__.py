"""Data: NSD's on-disk layout (reader, ROIs), the mini-NSD simulator and its scene grammar, the pretraining
corpus, and preparation into z-scored ROI matrices."""
