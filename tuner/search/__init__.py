"""What is sampled and how: the search space, samplers, pruners, and the optimizer and schedule
registries."""
