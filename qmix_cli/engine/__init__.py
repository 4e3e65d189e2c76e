"""Training engine: sample separation, target construction, losses and the co-training loop."""
