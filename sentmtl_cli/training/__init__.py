"""Training: the loop (a generator of steps and epochs), features and their cache, freezing, loss
objectives, task samplers, checkpoints, loggers, and the experiment runner."""
