"""Serving: what PagedAttention saves over contiguous KV-cache allocation.

The allocator is the engine's own `BlockManager` (block size 16, ref-counted blocks, chained-hash
prefix cache) driving real `Sequence`s; contiguous allocation is what a per-request KV buffer
sized for the maximum length (llmlab's `KVCache.allocate(cfg, 1, max_model_len)`) reserves. No
tensors are needed: KV memory is proportional to token slots, so slots are the unit.
"""

from __future__ import annotations

import math

import torch

from llmlab.engine.block_manager import BlockManager
from llmlab.engine.sequence import SamplingParams, Sequence
from llmlab.explain.registry import SEED_003, Claim, Context, Result, Table, topic

MAX_LEN, BLOCK = 2048, 16


def _lengths(ctx: Context, n: int) -> list[tuple[int, int]]:
    """(prompt, output) token counts: log-normal around 300 and 150, as chat traffic is (long-tailed)."""
    g = ctx.generator()
    prompt = (torch.randn(n, generator=g) * 0.8 + math.log(300)).exp().clamp(8, 1536).long()
    output = (torch.randn(n, generator=g) * 0.8 + math.log(150)).exp().clamp(1, 512).long()
    return [(int(p), int(o)) for p, o in zip(prompt, output)]


def _paged(lengths: list[tuple[int, int]], num_blocks: int) -> tuple[BlockManager, list[Sequence]]:
    """Admit each request's prompt, then grow it to prompt + output tokens, as decoding does."""
    bm = BlockManager(num_blocks, BLOCK, enable_prefix_caching=False)
    seqs = []
    for i, (p, o) in enumerate(lengths):
        seq = Sequence(f"r{i}", list(range(p)), SamplingParams(max_tokens=o))
        bm.admit(seq, [], p)
        bm.grow(seq, p + o)
        seqs.append(seq)
    bm.check_invariants(seqs)
    return bm, seqs


@topic("paged-attention", theme="serving",
       question_en="What problem does PagedAttention solve, and how much does it save?",
       question_zh="PagedAttention的原理是什么,解决了LLM中的什么问题?",
       claims=[Claim("paging", SEED_003, "这项技术的核心思想是借鉴操作系统中虚拟内存和分页 的技术,将传统的注意力机制中的键值对(Key-Value pairs,简称K-V pairs)缓存以分页的形式存 储和管理。"),
               Claim("problem", SEED_003, "由于这些缓存的键值对大小是动态变化的,并且可能会占用大量的显存空间,因此 有效管理这些缓存成为一个挑战。传统的注意力算法在处理时会受限于显存的大小,这限制了模型的 批处理能力和整体的吞吐量。")],
       answer_en="Contiguous buffers reserve max_model_len slots per request and waste most of them; 16-token blocks waste "
                 "under one block per request, so several times more requests fit, and shared prefixes are stored once.",
       answer_zh="连续分配为每个请求预留 max_model_len 个槽位,大部分被浪费;16 token 的块每个请求浪费不到一个块,"
                 "因此能同时容纳数倍的请求,共享前缀只存一份。")
def paged_attention(ctx: Context) -> Result:
    n = 64
    lengths = _lengths(ctx, n)
    used = sum(p + o for p, o in lengths)
    contiguous = n * MAX_LEN
    bm, seqs = _paged(lengths, n * MAX_LEN // BLOCK)
    paged_slots = bm.num_used_blocks * BLOCK
    per_seq_waste = [len(s.block_table) * BLOCK - (p + o) for s, (p, o) in zip(seqs, lengths)]
    nums = {"tokens": used, "contiguous_slots": contiguous, "paged_slots": paged_slots,
            "contiguous_waste": 1 - used / contiguous, "paged_waste": 1 - used / paged_slots,
            "max_waste_per_seq": max(per_seq_waste)}
    # Capacity: a KV budget that holds 16 max-length contiguous buffers.
    budget_blocks = 16 * MAX_LEN // BLOCK
    bm_cap = BlockManager(budget_blocks, BLOCK, enable_prefix_caching=False)
    fit = 0
    for i, (p, o) in enumerate(lengths * 4):
        seq = Sequence(f"c{i}", list(range(p)), SamplingParams(max_tokens=o))
        if not bm_cap.can_admit([], p + o):
            break
        bm_cap.admit(seq, [], p + o)
        fit += 1
    nums["capacity_contiguous"], nums["capacity_paged"] = 16, fit
    # Prefix sharing: 32 requests = one 512-token system prompt + their own question.
    g = ctx.generator(1)
    system = torch.randint(0, 50_000, (512,), generator=g).tolist()
    questions = [torch.randint(0, 50_000, (int(torch.randint(20, 100, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(32)]  # the same 32 requests with caching off and on
    share_rows = []
    for caching in (False, True):
        bm_p = BlockManager(4096, BLOCK, enable_prefix_caching=caching)
        live = []
        for i, q in enumerate(questions):
            seq = Sequence(f"s{i}", system + q, SamplingParams())
            hits = bm_p.lookup(seq)
            bm_p.admit(seq, hits, len(seq))
            bm_p.commit(seq, len(seq))
            live.append(seq)
        bm_p.check_invariants(live)
        nums[f"prefix_blocks_{'cached' if caching else 'plain'}"] = bm_p.num_used_blocks
        share_rows.append(["on" if caching else "off", bm_p.num_used_blocks, bm_p.num_used_blocks * BLOCK,
                           bm_p.num_hits])
    nums["prefix_saving"] = 1 - nums["prefix_blocks_cached"] / nums["prefix_blocks_plain"]
    rows = [[f"{n} requests, tokens actually held (prompt + output)", used, "—"],
            [f"contiguous: {n} × max_model_len {MAX_LEN}", contiguous, nums["contiguous_waste"]],
            [f"paged: BlockManager, block_size {BLOCK}", paged_slots, nums["paged_waste"]],
            ["paged: worst waste in one request (slots)", nums["max_waste_per_seq"], "—"],
            [f"requests that fit in {16 * MAX_LEN:,} slots: contiguous / paged", f"16 / {fit}", "—"]]
    return Result(
        verdicts={"paging": "confirmed", "problem": "incomplete"},
        numbers=nums,
        corrected_en="The notes name the symptom, not the mechanism or its size. A contiguous cache must reserve "
                     f"max_model_len = {MAX_LEN} slots per request because the output length is unknown; with this mix of "
                     f"lengths {nums['contiguous_waste']:.0%} of the reserved slots are never used. llmlab's BlockManager "
                     f"hands out 16-token blocks on demand: waste is below one block per request ({nums['max_waste_per_seq']} "
                     f"slots at most; {nums['paged_waste']:.1%} overall), so the same memory holds {fit} requests instead of 16 — "
                     "that is the batch size and throughput gain. Blocks are also reference counted: 32 requests sharing a "
                     f"512-token system prompt need {nums['prefix_saving']:.0%} fewer blocks with prefix caching.",
        corrected_zh=f"笔记说了症状,没说机制和量级。连续缓存因为不知道输出多长,必须为每个请求预留 max_model_len = {MAX_LEN} 个槽位;"
                     f"在这组长度分布下,预留槽位中有 {nums['contiguous_waste']:.0%} 从未被使用。llmlab 的 BlockManager 按需分配 16 token 的块:"
                     f"每个请求的浪费不到一个块(最多 {nums['max_waste_per_seq']} 个槽位,总体 {nums['paged_waste']:.1%}),同样的显存能放 "
                     f"{fit} 个请求而不是 16 个——这就是批大小和吞吐量的提升。块还带引用计数:32 个共享 512 token 系统提示词的请求,"
                     f"开启前缀缓存后少用 {nums['prefix_saving']:.0%} 的块。",
        conclusion_en="Paging KV memory like virtual memory is the right description; the problem it solves is measured above: "
                      "internal fragmentation from max-length reservation (and duplicate prefixes), not attention itself.",
        conclusion_zh="把 KV 内存像虚拟内存一样分页的描述是对的;它解决的问题如上所测:按最大长度预留造成的内部碎片(以及重复的前缀),"
                      "而不是注意力计算本身。",
        tables=[Table("KV slots for a mix of request lengths", "不同长度请求混合时的 KV 槽位",
                      ["allocation", "slots", "wasted fraction"], rows),
                Table("prefix caching, 32 requests with a shared 512-token system prompt",
                      "前缀缓存:32 个请求共享 512 token 的系统提示词",
                      ["prefix caching", "blocks", "slots", "prompt tokens served from cache"], share_rows)])
