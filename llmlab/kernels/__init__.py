"""Fast implementations of the model's hot operations, each checked against a plain reference.

    cpu_linear           - oneDNN-packed nn.Linear for CPU inference (the engine applies it on CPU)
    cpu_paged_attention  - paged decode attention for the CPU in C, built on first use (the engine's CPU default)
    paged_attention      - the same for CUDA in Triton

Triton kernels for the GPU (flash and paged attention) belong here too, with a pure-PyTorch
reference each (see DESIGN.md).
"""
