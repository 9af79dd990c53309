"""Analysis: decoding analyses on the encoders, leave-one-out perturbation, the field's metrics, the
perceptual judges and the attribute read-back."""
