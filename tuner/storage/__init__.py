"""Where studies live: storage URLs, Optuna's RDB storage made faster and retrying, its private API
behind one door, artifacts."""
