"""Ray Tune ASHA sweeps over the training driver: the paper's Table 1 space, results tables, sweep restore."""
