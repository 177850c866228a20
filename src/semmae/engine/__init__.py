"""Training engine: run directories, metrics, optimisation, checkpoints and the loops."""
