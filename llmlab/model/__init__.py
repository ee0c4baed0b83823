"""The model: one decoder-only Transformer, its layers, attention backends, KV cache and checkpoints."""
