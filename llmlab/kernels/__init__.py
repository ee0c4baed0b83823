"""Fast implementations of the model's hot operations, each checked against a plain reference.

    cpu_linear           - nn.Linear for CPU inference: per row count the fastest of oneDNN-packed, the panel
                           kernel and the C kernel for 1-4 rows, found by a start-up timing (the engine applies it)
    cpu_panel_linear     - register-tiled linear on 16-column weight panels (AVX-512; bf16: VDPBF16PS or widened)
    cpu_paged_attention  - paged decode attention for the CPU in C (the engine's CPU default)
    cpu_norm             - RMSNorm for CPU inference in one C call (the engine swaps it in on CPU); + residual add
    cpu_swiglu           - SiLU(gate) * up for CPU inference in one C call (the engine swaps it in on CPU)
    cpu_rope_cache       - RoPE on q and k and the paged KV write in one C call per layer (the engine's CPU default)
    cpu_argmax           - argmax over the last dimension of CPU fp32 rows in C (the sampler's greedy and sampled picks)
    cpu_decode           - the CPU decode step as one loop of direct C calls (the engine's CPU default)
    cpu_bpe.c            - the tokenizers' BPE merge loops (cmerge.py) and whole-text encoder (cencode.py)
    paged_attention      - paged decode attention for CUDA in Triton
    gemv, cuda_linear    - batch-1 GEMV in Triton, and routing each weight shape to it or cuBLAS
    cuda_decode          - the batch-1 decode step on CUDA in five Triton launches a layer (cuda_fused_decode)
    pdl                  - programmatic dependent launch for chains of Triton kernels (the fused step's, Hopper+)
    cbuild               - builds the C kernels on first use with the system compiler, cached per CPU

Triton kernels for the GPU (flash and paged attention) belong here too, with a pure-PyTorch
reference each that the tests compare them with.
"""
