"""The model runner: owns the paged KV cache and turns a scheduled step into sampled token ids.

    prepare  - flatten the step: decode rows first, then prefill chunks, as (1, N) input ids and
               position ids, plus `PagedMetadata` (slot of every new token, and per segment the
               slots every query reads and its mask; see model/attention.py)
    run      - one `Transformer.hidden_states(ids, position_ids=..., cache=PagedKVCache)` over the
               whole step; the LM head only on rows whose next token is sampled
    sample   - one batched call (sampler.py); one `.tolist()` per step
    launch / collect - a decode step queued on the device and its sampled ids read later (async
               scheduling, llm_engine.py): the rows' input ids may be the last step's sampled ids, taken
               on the device; on CUDA the ids come back through pinned memory behind an event

Sizing. The cache is `num_blocks` blocks plus one scratch block (the last) that padded rows
write to and read from; the block manager never hands it out. On CUDA the block count comes from
`gpu_memory_utilization` after a warm-up forward of a full token budget measures peak activation
memory (as vLLM/nano-vllm do), less room for the decode gather (see below); on CPU from
`kv_cache_memory`.

Attention. Prefill chunks gather their sequence's K/V slots and run SDPA (model/attention.py).
Decode rows read K/V in place through the block tables instead of copying every row's whole context
once per layer and step (`paged_kernel="auto"`): on CUDA the Triton kernel of kernels/paged_attention.py
(when Triton is installed), on CPU the C kernel of kernels/cpu_paged_attention.py (built on first use
with the system C compiler; without one, a warning and the gather path), which there takes every prefill
token as a row of its own too (`_run_rows`). On CPU the linears (kernels/cpu_linear.py,
`cpu_pack_linears`) go, per row count, to whichever of MKL (`F.linear`), oneDNN with a packed weight, the
panel kernel (AVX-512 or AVX2) and the C kernel for 1-4 rows a start-up timing finds fastest on this CPU
(`tune_packing`: the decode batch sizes up to max_num_seqs and one prefill-sized count, a few seconds, kept
in the tuning cache for the next start on this machine: kernels/tuning_cache.py), and
RMSNorms run as one C call each (kernels/cpu_norm.py, `cpu_fast_norms`), as do SwiGLU's SiLU(gate) * up
(kernels/cpu_swiglu.py, `cpu_fast_swiglu`) and each layer's RoPE and KV write
(kernels/cpu_rope_cache.py, `cpu_fused_rope`; eager steps) and the sampler's argmax (kernels/cpu_argmax.py).
With all of those, a decode-only step of up to 32 sequences skips the forward's Python: kernels/cpu_decode.py calls
the same kernels directly, in the same order, into buffers allocated once (`cpu_direct_decode`; bitwise the
forward's logits).

CUDA graphs (decode only; cuda_graphs.py) per batch bucket, replaying the same `_decode_logits` the eager path
runs; with `cuda_fused_decode` the batch-1 graph captures kernels/cuda_decode.py's fused step instead.
Compiled CPU decode (`compile_decode=True`; compiled_decode.py): the decode step as one Inductor graph
with the weights frozen in.

Not here: which tokens to run (scheduler.py), stop rules (scheduler.py, llm_engine.py).
Reference: nano-vllm `engine/model_runner.py`; vLLM `worker/gpu_model_runner.py`.
"""

from __future__ import annotations

import gc
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from llmlab.engine.block_tables import BlockTableRows
from llmlab.engine.compiled_decode import CPU_GEMM_TEMPLATE_MAX_SEQS, FrozenDecode, own_code, panel_beats_template
from llmlab.engine.config import EngineConfig
from llmlab.engine.cuda_graphs import DecodeGraphs, bucket_batch, bucket_blocks
from llmlab.engine.sampler import SamplingBatch, logprobs_of, sample
from llmlab.engine.scheduler import PLACEHOLDER, ScheduledBatch
from llmlab.engine.sequence import Sequence
from llmlab.errors import ConfigError
from llmlab.kernels import cbuild, cpu_decode
from llmlab.kernels import cpu_paged_attention as cpu_paged
from llmlab.kernels import cpu_rope_cache as cpu_rope
from llmlab.kernels.cpu_linear import pack_linears, packed_layers, tune_packing
from llmlab.kernels.cpu_norm import use_fast_norms
from llmlab.kernels.cpu_swiglu import use_fast_swiglu
from llmlab.model.attention import PagedMetadata, PagedSegment, causal_mask
from llmlab.model.cache import PagedKVCache
from llmlab.model.transformer import Transformer, fuse_projections
from llmlab.transfer import device_tensor, to_device

if TYPE_CHECKING:
    from llmlab.kernels import cuda_decode

# The Triton modules (kernels/paged_attention.py, cuda_decode.py, cuda_linear.py) are imported where a CUDA engine
# uses them: importing Triton costs ~0.5 s that a CPU engine never needs.

_CPU_DEFAULT_KV_BYTES = 1 << 30


class ModelRunner:
    def __init__(self, model: Transformer, config: EngineConfig, *, pad_decode: bool = False):
        if model.cfg.position == "alibi":
            raise ConfigError("the engine's paged attention does not implement ALiBi; use model.generate for "
                              "ALiBi models.")
        self.model = model.eval()
        self.cfg = model.cfg
        self.config = config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        if self.device.type == "cpu":
            cbuild.prebuild()  # a first start on this machine: the C kernels side by side, with a line on stderr
        if config.fuse_projections:
            fuse_projections(model)  # before packing: the fused q/k/v and gate/up Linears are packed then
        self.gemv_report: list[dict] = []  # per weight shape: cuBLAS vs gemv timings and the choice (cuda_gemv)
        self.packing_report: list[dict] = []  # CPU: ms per kernel at each row count tune_packing timed
        if config.cuda_gemv:
            from llmlab.kernels import cuda_linear

            if not cuda_linear.available(self.device):
                raise ConfigError(f"cuda_gemv needs Triton and a model on a CUDA device (this one is on "
                                  f"{self.device.type}); drop cuda_gemv or move the model to the GPU.")
            cuda_linear.use_gemv(model)
            self.gemv_report = cuda_linear.tune_gemv(model)
        self.compile_cpu = config.compile_decode and self.device.type == "cpu"
        self.traced_panels = 0  # linears a compiled decode step runs through the panel kernel's custom op
        # Same parameters, faster CPU matmuls (a no-op where no kernel takes the dtype): each row count to the kernel
        # that is fastest for it on this CPU, timed here in a second or two. A compiled decode step of more than
        # CPU_GEMM_TEMPLATE_MAX_SEQS sequences traces the panel kernel (where this CPU has it) as an opaque op and
        # Inductor fuses the rest around it; smaller ones keep Inductor's GEMM template, which was faster there
        # (SmolLM2-135M, one sequence, bf16, 2-core EPYC: 83.9 tok/s against 72.2 with the op), except in bf16 on
        # CPUs without bf16 instructions (panel_beats_template).
        if self.device.type == "cpu" and config.cpu_pack_linears and pack_linears(model):
            decode = [r for r in (1, 2, 4, 8, 16, 32) if r <= config.max_num_seqs]
            rows = tuple(sorted({*decode, min(128, config.max_num_batched_tokens)}))
            self.packing_report = tune_packing(model, rows=rows, cache=True)
            if self.compile_cpu and (config.max_num_seqs > CPU_GEMM_TEMPLATE_MAX_SEQS
                                     or panel_beats_template(self.dtype)):
                self.traced_panels = sum(m.prepare_for_compile() for m in packed_layers(model))
        if self.device.type == "cpu" and config.cpu_fast_norms:
            # One C call per norm instead of ~8 small ops. A compiled engine's prefill stays eager and takes it too
            # (SmolLM2-135M, 16 x 128 tokens, bf16: the norms' ops were 57 of a 1,900 ms prefill); its compiled
            # decode graph traces the plain forward, which Inductor fuses.
            use_fast_norms(model)
        if self.device.type == "cpu" and config.cpu_fast_swiglu:
            use_fast_swiglu(model)  # SiLU(gate) * up in one C call (eager steps; a compiled decode step traces around it)
        self.decode_kernel = self._use_decode_kernel(config.paged_kernel)
        # RoPE and the KV write in one C call a layer (eager steps; a compiled decode step lets Inductor fuse them)
        self.rope_kernel = (self.device.type == "cpu" and config.cpu_fused_rope and self.cfg.position == "rope"
                            and cpu_rope.supports(self.dtype))
        self.block_size = config.block_size
        self.max_model_len = config.max_model_len or self.cfg.max_position_embeddings
        if self.max_model_len > self.cfg.max_position_embeddings:
            raise ConfigError(f"max_model_len {self.max_model_len} is beyond the model's "
                              f"{self.cfg.max_position_embeddings} positions; lower it.")
        self.max_blocks_per_seq = -(-self.max_model_len // self.block_size)
        self.num_blocks = config.num_blocks or self._blocks_from_memory()
        # One extra block at the end: scratch space for padded rows.
        self.kv = PagedKVCache.allocate(self.cfg, self.num_blocks + 1, self.block_size, dtype=self.dtype,
                                        device=self.device)
        self.scratch = self.num_blocks
        self.table_rows = BlockTableRows(self.max_blocks_per_seq, self.scratch)  # each running sequence's table
        # CPU decode-only steps as direct C calls (kernels/cpu_decode.py) where the forward runs the same kernels:
        # C norms, the RoPE + KV-write kernel, the C paged kernel, eager steps
        self.direct: cpu_decode.DirectDecode | None = None
        if (self.device.type == "cpu" and config.cpu_direct_decode and self.rope_kernel and self.decode_kernel == "cpu"
                and config.cpu_fast_norms and not self.compile_cpu and cpu_decode.unsupported(model, self.dtype) is None):
            # up to 32 rows (its buffers, logits included, are held for that many): by then the kernels' own time
            # dwarfs the Python the direct calls save, and larger steps take the forward
            self.direct = cpu_decode.DirectDecode(model, self.kv, max_rows=min(config.max_num_seqs, 32),
                                                  max_blocks=self.max_blocks_per_seq, scratch_block=self.scratch,
                                                  max_positions=self.max_model_len)
        # One-sequence decode steps as the fused kernels of kernels/cuda_decode.py (their graph is batch bucket 1)
        self.fused: cuda_decode.FusedDecode | None = None
        self.fused_report: dict = {}  # kernel -> us per tile choice, and the choices (tune, on CUDA)
        if config.cuda_fused_decode:
            from llmlab.kernels import cuda_decode

            if not cuda_decode.available(self.device):
                raise ConfigError(f"cuda_fused_decode needs Triton and a model on a CUDA device (this one is on "
                                  f"{self.device.type}); drop cuda_fused_decode or move the model to the GPU.")
            self.fused = cuda_decode.FusedDecode(model, self.kv)
            if self.device.type == "cuda":  # its attention as the batch-1 graph's tables make it: full width
                self.fused_report = self.fused.tune(table_width=bucket_blocks(self.max_blocks_per_seq))
        self.shared_generator = torch.Generator(self.device).manual_seed(config.seed)
        self.generators: dict[int, torch.Generator] = {}  # seq_id -> its own stream (seeded requests)
        self._last_sampling: tuple[tuple, SamplingBatch] | None = None  # the last step's rows and their tensors
        # Where the steps' time goes (LLMEngine.stats): seconds the host waited for the device to hand back the
        # sampled ids (on CUDA: the GPU work the host could not hide; on CPU ~0, the work runs in the call) and
        # steps that replayed a CUDA graph.
        self.sync_wait_s = 0.0
        # Ids the sampler may pick: the model's vocabulary, or the tokenizer's where that is smaller (a vocabulary
        # padded to a multiple of 64 has rows no tokenizer can decode; LLMEngine sets it).
        self.sample_vocab = self.cfg.vocab_size
        self.graph_steps = 0
        # The decode step, compiled on request (one graph for every batch and context size: dynamic shapes).
        self.decode_fn = self._decode_logits
        if self.compile_cpu:  # weights frozen into the graph: Inductor packs the linears, fuses the rest
            small = config.max_num_seqs <= CPU_GEMM_TEMPLATE_MAX_SEQS and not self.traced_panels
            self.decode_fn = FrozenDecode(own_code(self._decode_logits), model, small_batch=small)
        elif config.compile_decode:
            self.decode_fn = torch.compile(own_code(self._decode_logits), dynamic=True)
        self.use_graphs = self.device.type == "cuda" and not config.enforce_eager
        # (off CUDA the fused step runs only in Triton's interpreter, for tests: through the padded path)
        self.pad_decode = pad_decode or self.use_graphs or self.compile_cpu or self.fused is not None
        if self.decode_kernel == "triton" and self.device.type == "cuda":  # every split variant compiled now
            from llmlab.kernels.paged_attention import warm_up as paged_warm_up

            paged_warm_up(self.kv.k[0], self.kv.v[0], self.cfg.num_heads, self.block_size, self.scratch,
                          self.cfg.sliding_window)
            if self.fused is not None and self.fused.pdl:  # and the fused step's PDL variants
                paged_warm_up(self.kv.k[0], self.kv.v[0], self.cfg.num_heads, self.block_size, self.scratch,
                              self.cfg.sliding_window, pdl=True)
        self.graphs = DecodeGraphs(self) if self.use_graphs else None
        if self.graphs is not None and self.decode_kernel:  # one graph per batch bucket: capture them all now
            self.graphs.capture_all(min(config.max_num_seqs, config.cuda_graph_max_bs))

    def _use_decode_kernel(self, choice: str) -> str:
        """Which kernel decode rows use: "triton", "cpu" or "" (the gather path)."""
        if choice == "gather":
            return ""
        if choice == "cpu" or (choice == "auto" and self.device.type == "cpu"):
            if self.device.type != "cpu":
                raise ConfigError("paged_kernel='cpu' runs on CPU tensors; this model is on "
                                  f"{self.device.type}: use paged_kernel='auto'.")
            if cpu_paged.supports(self.dtype):
                return "cpu"
            why = cpu_paged.build_error() or f"it does not take {self.dtype}"
            if choice == "cpu":
                raise ConfigError(f"paged_kernel='cpu' is unavailable: {why}; use paged_kernel='gather'.")
            warnings.warn(f"CPU decode attention falls back to the slower gather path: {why}.", stacklevel=4)
            return ""
        from llmlab.kernels.paged_attention import available as paged_kernel_available

        usable = paged_kernel_available(self.device)
        if choice == "triton" and not usable:
            raise ConfigError("paged_kernel='triton' needs Triton and a CUDA device (or Triton >= 3.7 with "
                              "TRITON_INTERPRET=1 on CPU); install triton or use paged_kernel='auto'.")
        return "triton" if usable and (choice == "triton" or self.device.type == "cuda") else ""

    # ---- sizing ---------------------------------------------------------------------------------

    def _blocks_from_memory(self) -> int:
        per_block = PagedKVCache.bytes_per_block(self.cfg, self.block_size, self.dtype)
        if self.device.type == "cuda":
            gc.collect()  # engines nobody references any more give their caches back first
            torch.cuda.empty_cache()
        if self.config.kv_cache_memory is not None:
            budget = self.config.kv_cache_memory  # an explicit budget wins over gpu_memory_utilization (as vLLM)
            if self.device.type == "cuda":
                free = torch.cuda.mem_get_info(self.device)[0]
                if budget > free:
                    raise ConfigError(f"kv_cache_memory ({budget / 2**30:.2f} GiB) is more than the GPU has free "
                                      f"({free / 2**30:.2f} GiB); lower it.")
        else:
            # never more than max_num_seqs full-length sequences hold: on a card, 90% of the memory in a tiny model's
            # blocks was ~10^8 of them, seconds and GBs of host memory of bookkeeping for blocks no step could use
            wanted = self.config.max_num_seqs * self.max_blocks_per_seq * per_block
            budget = min(self._cuda_kv_budget() if self.device.type == "cuda" else _CPU_DEFAULT_KV_BYTES, wanted)
        blocks = budget // per_block
        if blocks < 1:
            raise ConfigError(f"the KV-cache budget ({budget} bytes) is below one block ({per_block} bytes); give "
                              "the engine more memory (kv_cache_memory / gpu_memory_utilization).")
        return int(blocks)

    def _cuda_kv_budget(self) -> int:
        """Bytes left for KV after weights and a warm-up forward of a full token budget."""
        torch.cuda.reset_peak_memory_stats(self.device)
        n = min(self.config.max_num_batched_tokens, self.max_model_len)
        tmp = PagedKVCache.allocate(self.cfg, -(-n // self.block_size), self.block_size, dtype=self.dtype,
                                    device=self.device)
        slots = torch.arange(n, device=self.device)
        meta = PagedMetadata(slots, [PagedSegment(0, 1, n, slots[None], None)])
        with torch.inference_mode():
            self.model.hidden_states(torch.zeros(1, n, dtype=torch.long, device=self.device),
                                     position_ids=slots[None], cache=tmp.with_meta(meta))
        torch.cuda.synchronize()
        del tmp
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        stats = torch.cuda.memory_stats(self.device)
        peak, current = stats["allocated_bytes.all.peak"], stats["allocated_bytes.all.current"]
        # The gather path copies each decode row's K and V out of the pages: keep room for the largest.
        rows = min(self.config.max_num_seqs, self.config.cuda_graph_max_bs)
        gather = 2 * rows * self.max_model_len * self.cfg.num_kv_heads * self.cfg.head_dim * self.dtype.itemsize
        if self.decode_kernel:
            gather = 0  # the kernel reads the pages in place
        used = total - free
        budget = int(total * self.config.gpu_memory_utilization - used - (peak - current) - gather)
        if budget < PagedKVCache.bytes_per_block(self.cfg, self.block_size, self.dtype):
            raise ConfigError(
                f"no GPU memory is left for the KV cache: {used / 2**30:.1f} GiB of {total / 2**30:.1f} GiB is in use "
                f"(weights, activations, other engines or processes) against gpu_memory_utilization="
                f"{self.config.gpu_memory_utilization}; free what another engine holds (del llm), raise "
                "gpu_memory_utilization, or pass kv_cache_memory=<bytes>.")
        return budget

    # ---- one step -------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> dict[int, tuple[int, float | None, dict[int, tuple] | None]]:
        """Run a scheduled step; return {seq_id: (token, logprob, {id: (logprob, rank)})} for sampling rows."""
        nt = batch.num_tokens  # (batch.samples(i), inlined)
        sampling = [i for i, s in enumerate(batch.seqs) if s.num_computed_tokens + nt[i] == len(s.token_ids)]
        decode_only = max(nt) == 1  # every entry >= 1
        # rows whose prompt logprobs are due (none in a step where every row samples and has one token)
        prompt_rows = None if decode_only and len(sampling) == len(batch) else self._prompt_rows(batch)
        if prompt_rows:
            decode_only = False  # a 1-token prompt chunk whose logprobs are asked for: the mixed path has them
        if decode_only and self.direct is not None and not self.pad_decode and len(batch) <= self.direct.max_rows:
            logits = self._run_direct(batch.seqs)
            if len(sampling) < len(batch):
                logits = logits[sampling]
        elif decode_only and self.pad_decode and (self.compile_cpu or len(batch) <= self.config.cuda_graph_max_bs):
            logits = self._run_decode_padded(batch.seqs)  # sampled at once, before the next replay reuses it
            if len(sampling) < len(batch):  # every decode row samples: no copy of the (rows, vocab) logits
                logits = logits[sampling]
        else:
            logits = self._run_mixed(batch, sampling, prompt_rows=prompt_rows)
        if not sampling:
            return {}
        if logits.shape[-1] > self.sample_vocab:
            logits = logits[:, :self.sample_vocab]
        seqs = [batch.seqs[i] for i in sampling]
        return self._sample(seqs, logits)

    # ---- async scheduling: launch a step now, read its tokens later -----------------------------------------

    def can_launch(self) -> bool:
        """Whether steps can run as async steps (launch): on the graph-shaped decode path's engines, any step
        (decode rows replay a graph, mixed steps run eagerly; either way the host does not wait)."""
        return self.pad_decode

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, prev: InflightStep | None = None) -> InflightStep:
        """Queue a step (can_launch) on the device and return without waiting for its sampled ids. With `prev`
        (the step before, still in flight) a row whose input is a placeholder takes prev's sampled id for its
        sequence, on the device (Scheduler.schedule_ahead)."""
        seqs, nt, rows = batch.seqs, batch.num_tokens, batch.on_placeholder
        if len(rows) == len(seqs):  # a decode step of sequences all in flight: every row samples
            sampling = rows
        else:
            sampling = [i for i, s in enumerate(seqs) if s.num_computed_tokens + nt[i] == len(s.token_ids)]
        pending = None  # (rows of the batch whose input is a placeholder, their ids on the device)
        if rows:
            # prev sampled every sequence on a placeholder, in the scheduler's running order, as `rows` lists
            # them: its ids serve as they are unless some of its sequences are not here (ended, aborted)
            ids = prev.tokens
            if len(rows) < len(prev.seqs):
                at = {s.seq_id: i for i, s in enumerate(prev.seqs)}
                ids = ids[device_tensor([at[seqs[i].seq_id] for i in rows], torch.long, ids.device)]
            pending = rows, ids
        one_token = max(nt) == 1
        prompt_rows = None if one_token and len(sampling) == len(seqs) else self._prompt_rows(batch)  # (as run())
        graphable = self.pad_decode and (self.compile_cpu or len(batch) <= self.config.cuda_graph_max_bs)
        if one_token and not prompt_rows and graphable:
            ids = None
            if pending is not None:  # the rows' input ids on the device, in batch order
                ids = pending[1]
                if len(pending[0]) < len(seqs):  # rows with known inputs too: the mixed path's fill, row i = i
                    known = device_tensor([[s.token_ids[s.num_computed_tokens] for s in seqs]], torch.long, ids.device)
                    ids = _with_pending(known, pending, range(len(seqs)))[0]
            logits = self._run_decode_padded(seqs, ids)
            if len(sampling) < len(seqs):
                logits = logits[sampling]
        else:
            logits = self._run_mixed(batch, sampling, pending, prompt_rows=prompt_rows)
        if logits.shape[-1] > self.sample_vocab:
            logits = logits[:, :self.sample_vocab]
        sampled = [seqs[i] for i in sampling]
        if not sampled:  # prompt chunks only: nothing to sample, nothing to wait for (no row of the next step
            step = InflightStep(batch, sampled, torch.empty(0, dtype=torch.long))  # reads its ids: on the host)
            step.out = [step.tokens, None, None, None]
            return step
        last = None  # sampling rows on a placeholder: their ids count as output tokens for penalties
        if pending is not None:
            if len(rows) == len(sampling):
                last = None, pending[1]  # every sampling row
            else:
                place = {i: r for r, i in enumerate(sampling)}
                last = [place[i] for i in rows], pending[1]
        tokens, chosen, top = self._sample_on_device(sampled, logits, last)
        step = InflightStep(batch, sampled, tokens)
        out = [tokens, chosen, *(top or (None, None))]  # ids, and their logprobs and top alternatives if asked
        if tokens.device.type == "cuda":  # copied to pinned memory behind the step; the host goes on
            step.out = [None if t is None else torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(
                t, non_blocking=True) for t in out]
            step.done = torch.cuda.Event()
            step.done.record()
        else:
            step.out = out
        return step

    def collect(self, step: InflightStep) -> tuple[list[int], dict]:
        """Wait for a launched step's sampled ids: (one per sequence in batch order, {seq_id: (token, logprob,
        top logprobs)} as run() gives)."""
        t0 = time.perf_counter()
        if step.done is not None:
            step.done.synchronize()
        tokens, chosen, top_v, top_i = step.out
        tokens = tokens.tolist()
        self.sync_wait_s += time.perf_counter() - t0
        return tokens, self._results(step.seqs, tokens, chosen, (top_v, top_i) if top_v is not None else None)

    def _run_direct(self, seqs: list[Sequence]) -> Tensor:
        """A decode-only CPU step through DirectDecode: its input arrays filled in place, then its call loop."""
        self._decode_inputs(seqs, *self.direct.inputs(len(seqs)))
        return self.direct.run(len(seqs))

    def _decode_inputs(self, seqs: list[Sequence], vec: np.ndarray, tables: np.ndarray,
                       rows: list[int] | None = None) -> None:
        """One decode token per sequence: its id, position, slot and context length into the columns of vec
        (4, >= n) and its block table, padded with the scratch block, into the first n rows of tables (their
        width at most max_blocks_per_seq); the rest untouched. `rows`: table_rows.rows(seqs) if already taken."""
        n, bs = len(seqs), self.block_size
        if rows is None:
            rows = self.table_rows.rows(seqs)
        pos = np.array([s.num_computed_tokens for s in seqs], dtype=np.int64)
        vec[0, :n] = [s.token_ids[s.num_computed_tokens] for s in seqs]
        vec[1, :n] = pos
        vec[2, :n] = self.table_rows.array[rows, pos // bs] * bs + pos % bs
        vec[3, :n] = pos + 1
        tables[:n] = self.table_rows.array[rows, :tables.shape[1]]

    def _run_mixed(self, batch: ScheduledBatch, sampling: list[int], pending=None,
                   prompt_rows: list[int] | None = None) -> Tensor:
        """A step of prefill chunks and decode rows, flattened. `pending` (async scheduling): (batch rows whose
        input is a placeholder, their ids on the device). `prompt_rows`: batch rows whose prompt chunk's logprobs
        are asked for (SamplingParams.prompt_logprobs), written into their sequences."""
        if self.decode_kernel == "cpu":
            return self._run_rows(batch, sampling, pending, prompt_rows)
        bs, dev = self.block_size, self.device
        order = sorted(range(len(batch)), key=lambda i: batch.num_tokens[i] != 1)  # decode rows first
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        row_of: dict[int, int] = {}  # batch index -> flattened row of its last token
        segments: list[PagedSegment] = []
        decodes = [i for i in order if batch.num_tokens[i] == 1]
        for i in order:
            seq, n = batch.seqs[i], batch.num_tokens[i]
            c = seq.num_computed_tokens
            ids += seq.token_ids[c:c + n]
            pos += range(c, c + n)
            row_of[i] = len(ids) - 1
            if n == 1:
                slots.append(seq.block_table[c // bs] * bs + c % bs)
            else:
                table = torch.tensor(seq.block_table, dtype=torch.long)
                seq_slots = (table[:, None] * bs + torch.arange(bs)).flatten()[:c + n]  # slot of every position
                slots += seq_slots[c:].tolist()
                mask = None
                if c > 0 or self.cfg.sliding_window is not None:
                    mask = window_mask(causal_mask(n, c + n, torch.device("cpu")), c, self.cfg.sliding_window)
                    mask = to_device(mask[None, None], dev)
                segments.append(PagedSegment(row_of[i] - n + 1, 1, n, to_device(seq_slots[None], dev), mask))
        if decodes:
            tables, ctx = self._decode_tables([batch.seqs[i] for i in decodes], max_blocks=None)
            segments.insert(0, decode_segment(0, to_device(tables, dev), to_device(ctx, dev), bs,
                                              self.cfg.sliding_window, gather=not self.decode_kernel))
        meta = PagedMetadata(device_tensor(slots, torch.long, dev), segments, decode_kernel=self.decode_kernel,
                             rope_kernel=self.rope_kernel)
        ids_t = _with_pending(device_tensor([ids], torch.long, dev), pending, row_of)
        h = self.model.hidden_states(ids_t, position_ids=device_tensor([pos], torch.long, dev),
                                     cache=self.kv.with_meta(meta))  # (1, N, d)
        if prompt_rows:
            self._prompt_logprobs(batch, prompt_rows, h[0], {i: row_of[i] - batch.num_tokens[i] + 1
                                                             for i in prompt_rows})
        rows = device_tensor([row_of[i] for i in sampling], torch.long, dev)
        return self.model.lm_head(h[0, rows]).float()  # (num sampling rows, V), in batch order

    def _run_rows(self, batch: ScheduledBatch, sampling: list[int], pending=None,
                  prompt_rows: list[int] | None = None) -> Tensor:
        """A step on CPU with the C paged kernel: every new token, prefill chunks included, is one query row over
        its own context (its sequence's block table, context = its position + 1), so one kernel call per layer
        covers the step, with no per-sequence gather or mask. Prefill attention of 16 x 128-token prompts with
        SmolLM2's heads (bf16, 2-core EPYC): 3.3 ms a layer against 6.6 ms for gather + CPU SDPA per sequence;
        the whole prefill step of SmolLM2-135M 1368 -> 1268 ms (best of 4, the two engines alternating). The kernel
        computes a chunk's rows together, as flash attention does (cpu_paged_attention.c, RUN_MIN): a 2048-token
        prompt's attention 66.7 -> 34.6 ms a layer (bf16, 2-core Zen 4)."""
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        owner: list[int] = []  # row -> index of its sequence in the batch
        last: list[int] = []  # sequence -> its last row, in batch order
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_tokens)):
            c, table = seq.num_computed_tokens, seq.block_table
            ids += seq.token_ids[c:c + n]
            pos += range(c, c + n)
            slots += [table[p // bs] * bs + p % bs for p in range(c, c + n)]
            owner += [i] * n
            last.append(len(ids) - 1)
        tables, _ = self._decode_tables(batch.seqs, max_blocks=None)
        rows = torch.tensor(owner, dtype=torch.long)
        positions = torch.tensor(pos, dtype=torch.long)
        segment = decode_segment(0, tables.index_select(0, rows), positions + 1, bs, self.cfg.sliding_window,
                                 gather=False)
        meta = PagedMetadata(torch.tensor(slots), [segment], decode_kernel=self.decode_kernel,
                             rope_kernel=self.rope_kernel)
        ids_t = _with_pending(torch.tensor([ids]), pending, last)
        h = self.model.hidden_states(ids_t, position_ids=positions[None], cache=self.kv.with_meta(meta))
        if prompt_rows:
            self._prompt_logprobs(batch, prompt_rows, h[0], {i: last[i] - batch.num_tokens[i] + 1
                                                             for i in prompt_rows})
        return self.model.lm_head(h[0, [last[i] for i in sampling]]).float()

    @staticmethod
    def _prompt_rows(batch: ScheduledBatch) -> list[int] | None:
        """Batch rows computing prompt tokens whose logprobs are asked for and not yet known (a sequence preempted
        after its prompt recomputes it, but keeps its prompt logprobs)."""
        rows = [i for i, s in enumerate(batch.seqs) if s.params.prompt_logprobs is not None and s.index == 0
                and len(s.prompt_logprobs) < s.num_prompt_tokens]  # (one of n samples: the request's first)
        return rows or None

    def _prompt_logprobs(self, batch: ScheduledBatch, rows: list[int], h: Tensor, first: dict[int, int],
                         chunk: int = 256) -> None:
        """Logprobs of the prompt tokens each chunk of `rows` predicts (hidden states h (N, d), `first`: the
        chunk's first row in h): position p's logits give token p + 1's logprob, its rank and the top
        prompt_logprobs alternatives, over the vocabulary the sampler uses; appended to seq.prompt_logprobs. The LM
        head runs on `chunk` positions at a time, so a long prompt holds (chunk, V) logits, not (N, V)."""
        for i in rows:
            seq, c = batch.seqs[i], batch.seqs[i].num_computed_tokens
            start = len(seq.prompt_logprobs) - 1  # the first position whose next token has no entry yet
            stop = min(c + batch.num_tokens[i], seq.num_prompt_tokens - 1)  # positions < stop predict prompt tokens
            k = seq.params.prompt_logprobs
            for a in range(max(start, c), stop, chunk):
                b = min(a + chunk, stop)
                logits = self.model.lm_head(h[first[i] + a - c:first[i] + b - c]).float()[:, :self.sample_vocab]
                targets = seq.token_ids[a + 1:b + 1]
                chosen, top = logprobs_of(logits.log_softmax(-1), torch.tensor(targets, device=logits.device), k)
                chosen = chosen.tolist()
                top_v, top_i = (top[0].tolist(), top[1].tolist()) if top is not None else ([[]] * len(targets),) * 2
                seq.prompt_logprobs += [_alternatives(t, *chosen[r], top_i[r], top_v[r])
                                        for r, t in enumerate(targets)]

    def _decode_tables(self, seqs: list[Sequence], max_blocks: int | None) -> tuple[Tensor, Tensor]:
        """(B, max_blocks) block tables padded with the scratch block, and (B,) context lengths."""
        tables = self._block_tables(seqs, len(seqs), max_blocks or max(len(s.block_table) for s in seqs))
        ctx = torch.tensor([s.num_computed_tokens + 1 for s in seqs], dtype=torch.long)
        return tables, ctx

    def _block_tables(self, seqs: list[Sequence], rows: int, width: int) -> Tensor:
        """(rows, width) block tables of `seqs`, then rows of the scratch block (from BlockTableRows)."""
        tables = np.full((rows, width), self.scratch, dtype=np.int64)
        held = self.table_rows.rows(seqs)  # before reading .array: it may grow
        tables[:len(seqs)] = self.table_rows.array[held, :width]
        return torch.from_numpy(tables)

    def _run_decode_padded(self, seqs: list[Sequence], ids: Tensor | None = None) -> Tensor:
        """Decode-only step in graph shape: batch and context padded to buckets (replayed on CUDA). Compiled on
        CPU, one graph takes every size from 2 up (Dynamo specialises sizes 0 and 1), so both are padded to 2.
        `ids`: the rows' input ids on the device (async scheduling: the last step's sampled ids, not yet known
        on the host), in place of their token_ids."""
        rows = self.table_rows.rows(seqs)
        nb = self.table_rows.widest
        if self.compile_cpu:
            b, nb = max(2, len(seqs)), max(2, nb)
        else:
            b, nb = bucket_batch(len(seqs)), min(bucket_blocks(nb), self.max_blocks_per_seq)
        n, bs = len(seqs), self.block_size
        # ids, positions, slots and context lengths as the rows of one array (one copy to the device); padded rows
        # read and write only the scratch block (context 1)
        vec = np.zeros((4, b), dtype=np.int64)
        vec[2, n:], vec[3, n:] = self.scratch * bs, 1
        tables = np.empty((b, nb), dtype=np.int64)
        tables[n:] = self.scratch
        self._decode_inputs(seqs, vec, tables, rows)
        vec, tables = torch.from_numpy(vec), torch.from_numpy(tables)
        if self.graphs is not None:
            # The paged kernel reads a row's table only up to its context, so with it one graph of the full
            # table width serves every context (graphs per batch bucket only; columns past a row's context may
            # hold an earlier step's entries). The gather path reads whole rows: a graph per width bucket.
            width = self.graphs.max_nb if self.decode_kernel else nb
            self.graph_steps += 1
            return self.graphs.replay(b, width, vec, tables, ids)[:n]
        vec = to_device(vec, self.device)
        if ids is not None:
            vec[0, :n] = ids
        return self.decode_call(b)(*vec[:3], to_device(tables, self.device), vec[3])[:n]

    def decode_call(self, batch: int):
        """The function a decode step of `batch` (padded) rows runs, or its CUDA graph captures: the fused
        one-sequence step (cuda_fused_decode) for batch 1, else `decode_fn`."""
        return self.fused if self.fused is not None and batch == 1 else self.decode_fn

    def _decode_logits(self, ids: Tensor, pos: Tensor, slot: Tensor, tables: Tensor, ctx: Tensor) -> Tensor:
        """(B,) ids/positions/slots, (B, nb) tables, (B,) context lengths -> (B, V) fp32 logits."""
        seg = decode_segment(0, tables, ctx, self.block_size, self.cfg.sliding_window, gather=not self.decode_kernel)
        meta = PagedMetadata(slot, [seg], decode_kernel=self.decode_kernel,
                             rope_kernel=self.rope_kernel)  # traced: PagedKVCache.fuses_rope says no
        h = self.model.hidden_states(ids[None], position_ids=pos[None], cache=self.kv.with_meta(meta))
        return self.model.lm_head(h[0]).float()

    # ---- sampling -------------------------------------------------------------------------------

    def _sample(self, seqs: list[Sequence], logits: Tensor):
        tokens, chosen, top = self._sample_on_device(seqs, logits)
        t0 = time.perf_counter()
        tokens = tokens.tolist()  # the step's one device -> host transfer (plus logprobs when asked)
        self.sync_wait_s += time.perf_counter() - t0
        return self._results(seqs, tokens, chosen, top)

    def _sample_on_device(self, seqs: list[Sequence], logits: Tensor,
                          last: tuple[list[int] | None, Tensor] | None = None
                          ) -> tuple[Tensor, Tensor | None, tuple | None]:
        """`last` (async scheduling): (rows whose token_ids end in a placeholder, None for all; those tokens on the
        device)."""
        # A decode step usually samples the same sequences as the one before: their parameter tensors are reused
        # then, unless penalties (they depend on the tokens so far) are on.
        key = (logits.shape[-1], *[s.seq_id for s in seqs])
        sb = self._last_sampling if self._last_sampling is not None and self._last_sampling[0] == key else None
        short = None  # rows below their min_tokens (their stop ids masked): looked for where a row has min_tokens
        if sb is None or sb[1].min_tokens_rows is not None:
            if sb is not None or any(s.params.min_tokens for s in seqs):
                short = [(i, s.stop_token_ids) for i, s in enumerate(seqs)
                         if s.num_output_tokens < s.params.min_tokens]
                if sb is not None and tuple(i for i, _ in short) != sb[1].min_tokens_rows:
                    sb = None  # a row reached its min_tokens: its stop ids are sampled again
        if sb is None or sb[1].seen is not None:
            params = [s.params for s in seqs]
            tokens = []
            if any(p.has_penalties for p in params):
                tokens = [s.token_ids[:-1] if s.token_ids[-1] == PLACEHOLDER else s.token_ids for s in seqs]
            sb = key, SamplingBatch.build(params, tokens, [s.num_prompt_tokens for s in seqs],
                                          [self._generator(s) for s in seqs], logits.shape[-1], logits.device,
                                          short)
            if last is not None and sb[1].seen is not None:  # the tokens known only on the device, counted there
                sb[1].add_output_tokens(last[1], last[0])
            self._last_sampling = sb
        return sample(logits, sb[1], self.shared_generator)

    def _results(self, seqs: list[Sequence], tokens: list[int], chosen: Tensor | None, top: tuple | None):
        """{seq_id: (token, logprob, {id: (logprob, rank)} of it and its top alternatives)} from a step's sampled
        ids (and logprobs when asked)."""
        if chosen is None:
            return {s.seq_id: (t, None, None) for s, t in zip(seqs, tokens)}
        chosen = chosen.tolist()
        top_v, top_i = (top[0].tolist(), top[1].tolist()) if top is not None else ([[]] * len(seqs), [[]] * len(seqs))
        out = {}
        for r, s in enumerate(seqs):
            k = s.params.logprobs
            if k is None:
                out[s.seq_id] = (tokens[r], None, None)
                continue
            lp, rank = chosen[r]
            out[s.seq_id] = (tokens[r], lp, _alternatives(tokens[r], lp, rank, top_i[r][:k], top_v[r][:k]))
        return out

    def _generator(self, seq: Sequence) -> torch.Generator | None:
        if seq.params.seed is None or seq.params.greedy:
            return None
        g = self.generators.get(seq.seq_id)
        if g is None:
            # Each of a request's n samples gets its own stream, derived from (seed, index).
            g = torch.Generator(self.device).manual_seed((seq.params.seed * 1_000_003 + seq.index) % (1 << 63))
            self.generators[seq.seq_id] = g
        return g

    def release(self, seq: Sequence) -> None:
        """Forget per-sequence state (its generator, its block table row) once it has finished."""
        self.generators.pop(seq.seq_id, None)
        self.table_rows.release(seq.seq_id)


def _alternatives(token: int, logprob: float, rank: float, top_ids: list[int], top_logprobs: list[float]
                  ) -> dict[int, tuple[float, int]]:
    """{id: (logprob, rank)}: the token first, then the top alternatives by rank (as vLLM's logprobs)."""
    alts = {token: (logprob, int(rank))}
    for n, (i, v) in enumerate(zip(top_ids, top_logprobs), 1):
        alts.setdefault(i, (v, n))
    return alts


def _with_pending(ids: Tensor, pending: tuple[list[int], Tensor] | None, row_of) -> Tensor:
    """ids (1, N) of a flattened step with the rows of `pending` (batch rows on a placeholder, their ids on the
    device) filled in on the device; row_of[i] is the flattened row of batch row i's last token."""
    if pending is not None:
        rows, values = pending
        ids[0, device_tensor([row_of[i] for i in rows], torch.long, ids.device)] = values
    return ids


class InflightStep:
    """A step launched on the device whose sampled ids the host has not read yet (async scheduling)."""

    __slots__ = ("batch", "seqs", "tokens", "out", "done", "where")

    def __init__(self, batch: ScheduledBatch, seqs: list[Sequence], tokens: Tensor):
        self.batch, self.seqs, self.tokens = batch, seqs, tokens  # tokens: (len(seqs),) on the device
        # ids, (logprobs, ranks), top logprobs, top ids (None where not asked); on CUDA pinned copies, ready after
        # `done`
        self.out: list[Tensor | None] = []
        self.done: torch.cuda.Event | None = None
        self.where: list[int] = []  # index in each sequence's token_ids of its token (Scheduler.advance)


def window_mask(mask: Tensor, past: int, window: int | None) -> Tensor:
    """Restrict a (q, k) causal mask whose first query sits at position `past` to a sliding window."""
    if window is None:
        return mask
    q = torch.arange(mask.shape[0], device=mask.device)[:, None] + past
    return mask & (q - torch.arange(mask.shape[1], device=mask.device)[None, :] < window)


def decode_segment(q_start: int, tables: Tensor, ctx: Tensor, block_size: int, window: int | None,
                   gather: bool = True) -> PagedSegment:
    """A segment of one query per row: keys = the row's first ctx slots (tables (B, nb), ctx (B,)).

    gather=False (the paged kernel reads tables and ctx itself) skips the per-key slots and mask.
    """
    B, nb = tables.shape
    if not gather:
        return PagedSegment(q_start, B, 1, None, None, block_tables=tables, context_lens=ctx, block_size=block_size,
                            window=window)
    offs = torch.arange(nb * block_size, device=tables.device)
    key_slots = tables.repeat_interleave(block_size, dim=1) * block_size + offs % block_size  # (B, nb*bs)
    mask = offs[None, :] < ctx[:, None]
    if window is not None:
        mask = mask & (offs[None, :] > ctx[:, None] - 1 - window)
    return PagedSegment(q_start, B, 1, key_slots, mask[:, None, None, :],  # mask (B, 1, 1, Lk)
                        block_tables=tables, context_lens=ctx, block_size=block_size, window=window)
