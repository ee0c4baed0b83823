"""Fast implementations of the model's hot operations, each checked against a plain reference.

    cpu_linear  - oneDNN-packed nn.Linear for CPU inference (the engine applies it on CPU)

Triton kernels for the GPU (flash and paged attention) belong here too, with a pure-PyTorch
reference each (see DESIGN.md).
"""
