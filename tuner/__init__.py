"""tuner: hyperparameter search for deep-learning optimizers."""
