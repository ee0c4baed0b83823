"""Training: one loop for every stage, objectives as functions, optimizer, checkpoints."""
