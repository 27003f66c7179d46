"""Ray Tune search spaces and ASHA sweeps over the training driver (tuning issue)."""
