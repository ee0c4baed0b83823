"""Architecture: encoder (bidirectional) vs decoder (causal) masks, why decoder-only models dominate
where it can be measured (the attention-matrix rank argument, KV-cache reuse), and BERT's summed
embeddings vs concatenation.

The causal mask is llmlab's `causal_mask`, attention is `attend` (an identity V makes its output
the attention matrix itself), the decoder is llmlab's `Transformer` with its contiguous `KVCache`.
llmlab has no encoder model: the bidirectional case is the same `attend` call without a mask, and
BERT's segment table is a plain `nn.Embedding` next to llmlab's token and learned position tables.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from llmlab.explain.normalization import _tiny
from llmlab.explain.registry import SEED_000, SEED_002, SEED_003, Claim, Context, Plot, Result, Table, topic
from llmlab.model.attention import attend, causal_mask
from llmlab.model.cache import KVCache
from llmlab.model.transformer import Transformer


def _attention_matrix(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """The (T, T) softmax matrix of llmlab's attend: with V = I the output is A itself. q, k (T, hd)."""
    T = q.shape[0]
    mask = causal_mask(T, T, q.device)[None, None] if causal else None
    eye = torch.eye(T, dtype=q.dtype)[None, None]
    # sdpa: the explicit backend requires V's head size to equal q's.
    return attend(q[None, None], k[None, None], eye, mask=mask, backend="sdpa")[0, 0]


def _sees(out_fn, T: int, d: int, g: torch.Generator) -> torch.Tensor:
    """(T, T) bool: does output i change when input j is perturbed?"""
    x = torch.randn(T, d, generator=g, dtype=torch.float64)
    base = out_fn(x)
    seen = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        x2 = x.clone()
        x2[j] += 1.0
        seen[:, j] = (out_fn(x2) - base).abs().amax(-1) > 1e-12
    return seen


@topic("encoder-vs-decoder-masks", theme="architecture",
       question_en="How do the decoder's (causal) and the encoder's (bidirectional) self-attention differ?",
       question_zh="Decoder阶段的多头自注意力和encoder的多头自注意力有什么区别?",
       claims=[Claim("causal", SEED_002, "让输入序列只看到过去的信息,不能让他看到未来的信息"),
               Claim("clm", SEED_003, "模型只能看到输入序列中已经生成的部分,而不能看到后续的内容。"),
               Claim("parallel", SEED_002, "Decode引入sequence mask就是为了并行化训练,Decoder推理过程没有并行,只能一个一个的解码"),
               Claim("bert-mask", SEED_002, "BERT和transformer的目标不一致,bert是语言的预训练模型,需要充分考虑上下文的关系,而transformer主要考虑句子中第i个元素与前i-1个元素的关系。")],
       answer_en="Only the mask differs: causal position i sees keys 0..i (itself included), T(T+1)/2 pairs; bidirectional sees all T². "
                 "The causal mask makes one training pass equal T incremental steps.",
       answer_zh="只有掩码不同:因果注意力中位置 i 看到 0..i(包括自己),共 T(T+1)/2 对;双向注意力看到全部 T² 对。"
                 "因果掩码使一次训练前向等于 T 次逐步解码。")
def encoder_vs_decoder_masks(ctx: Context) -> Result:
    g = ctx.generator()
    T, d = 8, 16

    def att(causal):
        return lambda x: attend(x[None, None], x[None, None], x[None, None], backend="explicit",
                                mask=causal_mask(T, T, x.device)[None, None] if causal else None)[0, 0]

    sees_causal, sees_bi = _sees(att(True), T, d, g), _sees(att(False), T, d, g)
    lower = torch.ones(T, T, dtype=torch.bool).tril()
    # The real decoder: perturb token j of a 1-layer llmlab Transformer, see which positions' logits change.
    torch.manual_seed(ctx.seed)
    model = Transformer(_tiny(num_layers=2, max_position_embeddings=64)).double().eval()
    ids = torch.randint(0, 64, (1, T), generator=g)
    with torch.no_grad():
        base = model(ids)[0]
        seen_model = torch.zeros(T, T, dtype=torch.bool)
        for j in range(T):
            ids2 = ids.clone()
            ids2[0, j] = (ids2[0, j] + 1) % 64
            seen_model[:, j] = (model(ids2)[0] - base).abs().amax(-1) > 1e-12
        # Teacher forcing: one causal pass gives the same logits as T one-token steps with a KV cache.
        cache = KVCache.allocate(model.cfg, 1, T, dtype=torch.float64)
        steps = torch.cat([model(ids[:, t:t + 1], cache=cache)[0] for t in range(T)])
    parallel_diff = float((steps - base).abs().max())
    nums = {"causal_pairs": int(sees_causal.sum()), "bi_pairs": int(sees_bi.sum()),
            "causal_is_lower": float(torch.equal(sees_causal, lower)), "model_is_lower": float(torch.equal(seen_model, lower)),
            "diagonal_seen": float(sees_causal.diagonal().all()), "parallel_diff": parallel_diff}
    grid = lambda m: ["".join("■" if v else "·" for v in row) for row in m.tolist()]  # noqa: E731
    rows = [[i, c, b, m] for i, (c, b, m) in enumerate(zip(grid(sees_causal), grid(sees_bi), grid(seen_model)))]
    return Result(
        verdicts={"causal": "confirmed", "clm": "confirmed", "parallel": "confirmed", "bert-mask": "incomplete"},
        numbers=nums,
        corrected_en="On BERT: the original Transformer's encoder is bidirectional too — only its decoder is causal — and a "
                     "causal position i sees i itself as well as the i − 1 before it (the diagonal is always visible: a "
                     "token's own key is what lets it carry its identity forward). BERT cannot mask scores causally because "
                     "MLM predicts a hidden token from both sides; it hides the token in the input ([MASK]) instead.",
        corrected_zh="关于 BERT:原始 Transformer 的 encoder 同样是双向的——只有 decoder 是因果的——而且因果注意力中位置 i 除了前 i − 1 个位置"
                     "还看得到自己(对角线总是可见:token 自己的 key 让它保留自身信息)。BERT 不能用因果方式屏蔽分数,因为 MLM 要从两侧预测"
                     "被遮住的 token;它改为在输入中遮住 token([MASK])。",
        conclusion_en=f"Perturbing input j and watching output i: llmlab's causal attend lets {nums['causal_pairs']} of {T * T} "
                      f"pairs through (exactly the lower triangle, T(T+1)/2 = {T * (T + 1) // 2}), bidirectional all "
                      f"{nums['bi_pairs']}; the whole llmlab Transformer shows the same lower triangle. One causal forward "
                      f"over {T} tokens equals {T} one-token KV-cache steps to {parallel_diff:.1e}: training is parallel, "
                      "generation is sequential, as the notes say.",
        conclusion_zh=f"扰动输入 j、观察输出 i:llmlab 因果 attend 放行 {T * T} 对中的 {nums['causal_pairs']} 对(恰好是下三角,"
                      f"T(T+1)/2 = {T * (T + 1) // 2}),双向注意力放行全部 {nums['bi_pairs']} 对;完整的 llmlab Transformer 也是同一个下三角。"
                      f"对 {T} 个 token 的一次因果前向与 {T} 次单 token 的 KV 缓存步骤结果一致(差 {parallel_diff:.1e}):训练可并行,"
                      "生成只能逐个进行,与笔记一致。",
        tables=[Table("which inputs j (columns) each output i (row) depends on", "每个输出 i(行)依赖哪些输入 j(列)",
                      ["i", "causal attend", "bidirectional attend", "llmlab Transformer"], rows)])


@topic("why-decoder-only", theme="architecture",
       question_en="Why are most large models decoder-only?",
       question_zh="主流大模型为何是Decoder-only?",
       claims=[Claim("question", SEED_003, "3.为什么现在的大模型大多是decoder-only的架构?"),
               Claim("autoregressive", SEED_000, "自回归生成:Decoder天然适合逐Token生成,Encoder-Decoder结构在训练时需对齐,效率低。"),
               Claim("fewer-params", SEED_000, "训练效率:Decoder-only架构参数量更少,预训练成本低(如GPT、LLaMA)。")],
       answer_en="Measurable reasons: a causal attention matrix is triangular with a positive diagonal, hence always full rank, "
                 "while bidirectional softmax(QKᵀ) loses rank when head_dim ≪ n; and a causal prefix never changes, so its "
                 "KV cache is reused exactly — decode costs one position per token instead of the whole sequence.",
       answer_zh="可测量的理由:因果注意力矩阵是对角线为正的下三角矩阵,总是满秩,而双向 softmax(QKᵀ) 在 head_dim ≪ n 时会丢秩;"
                 "因果前缀永不改变,其 KV 缓存可以精确复用——每生成一个 token 只算一个位置,而不是整个序列。")
def why_decoder_only(ctx: Context) -> Result:
    g = ctx.generator()
    n = 256
    rank_rows, nums = [], {}
    for hd in (4, 16, 64):
        q = torch.randn(n, hd, generator=g, dtype=torch.float64)
        k = torch.randn(n, hd, generator=g, dtype=torch.float64)
        for name, causal in (("causal", True), ("bidirectional", False)):
            a = _attention_matrix(q, k, causal)
            s = torch.linalg.svdvals(a)
            p = s / s.sum()
            eff = float(torch.exp(-(p * p.log()).sum()))  # entropy effective rank (Roy & Vetterli)
            above = int((s > 1e-3 * s[0]).sum())
            diag_min = float(a.diagonal().min())
            rank_rows.append([hd, name, above, eff, diag_min if causal else "—"])
            nums[f"rank_{name}_{hd}"], nums[f"eff_rank_{name}_{hd}"] = above, eff
            if causal:
                nums[f"causal_upper_{hd}"] = float(a.triu(1).abs().max())
                nums[f"causal_diag_min_{hd}"] = diag_min
                nums[f"causal_sigma_min_{hd}"] = float(s[-1] / s[0])
    # KV-cache reuse: a causal prefix's hidden states do not change when tokens are appended.
    torch.manual_seed(ctx.seed)
    cfg = _tiny(hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=256)
    model = Transformer(cfg).eval()
    prompt, new = 16, 64
    ids = torch.randint(0, cfg.vocab_size, (1, prompt + new), generator=g)
    with torch.no_grad():
        h_short = model.hidden_states(ids[:, :prompt])
        h_long = model.hidden_states(ids)[:, :prompt]
        x = torch.randn(prompt + 1, 16, generator=g)[None, None]
        bi_short = attend(x[:, :, :prompt], x[:, :, :prompt], x[:, :, :prompt], backend="explicit")
        bi_long = attend(x, x, x, backend="explicit")[:, :, :prompt]
        t0 = time.perf_counter()
        cache = KVCache.allocate(cfg, 1, prompt + new)
        cached = [model(ids[:, :prompt], cache=cache)[0, -1]]
        for t in range(prompt, prompt + new - 1):
            cached.append(model(ids[:, t:t + 1], cache=cache)[0, -1])
        t_cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = [model(ids[:, :t])[0, -1] for t in range(prompt, prompt + new)]
        t_full = time.perf_counter() - t0
    nums.update({"prefix_change_causal": float((h_short - h_long).abs().max()),
                 "prefix_change_bidirectional": float((bi_short - bi_long).abs().max()),
                 "cached_vs_full": float((torch.stack(cached) - torch.stack(full)).abs().max()),
                 "positions_cached": prompt + new - 1, "positions_full": sum(range(prompt, prompt + new)),
                 "time_ratio": t_full / t_cached})
    kv_rows = [["prefix hidden states change when 1 token is appended (llmlab causal Transformer)", nums["prefix_change_causal"]],
               ["same for bidirectional attend (no mask)", nums["prefix_change_bidirectional"]],
               [f"positions computed for {new} next-token logits: KVCache", nums["positions_cached"]],
               ["… recomputing the whole sequence each step", nums["positions_full"]],
               ["max |logits(cached) − logits(recomputed)|", nums["cached_vs_full"]],
               ["wall time, recompute / cached", nums["time_ratio"]]]

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        q = torch.randn(n, 4, generator=ctx.generator(1), dtype=torch.float64)
        k = torch.randn(n, 4, generator=ctx.generator(2), dtype=torch.float64)
        for name, causal in (("causal", True), ("bidirectional", False)):
            s = torch.linalg.svdvals(_attention_matrix(q, k, causal))
            ax.semilogy((s / s[0]).clamp(min=1e-20).tolist(), label=name)
        ax.set_xlabel("singular value index")
        ax.set_ylabel("σ_i / σ_1")
        ax.set_title(f"attention matrix spectrum, n = {n}, head_dim = 4")
        ax.legend()

    return Result(
        verdicts={"question": "incomplete", "autoregressive": "incomplete", "fewer-params": "incomplete"},
        numbers=nums,
        corrected_en="The notes leave out the two reasons that can be measured. (1) Rank: a causal attention matrix is lower "
                     f"triangular (largest entry above the diagonal {nums['causal_upper_4']:.0e}) with a positive diagonal, so "
                     "det = Π a_ii > 0 and it is full rank in exact arithmetic (numerically its last few singular values still fall to "
                     f"{nums['causal_sigma_min_4']:.0e}·σ₁: the gain is in the bulk of the spectrum); bidirectional softmax(QKᵀ/√d) comes from a "
                     f"rank-head_dim matrix and, at n = {n} and head_dim 4, keeps {nums['rank_bidirectional_4']} singular values "
                     f"above 1e-3·σ₁ against {nums['rank_causal_4']} for causal (effective rank {nums['eff_rank_bidirectional_4']:.0f} vs "
                     f"{nums['eff_rank_causal_4']:.0f}). At head_dim 16 and 64 the bidirectional matrix is as well conditioned as the "
                     "causal one or better — the argument holds only when head_dim ≪ n. "
                     "(2) Reuse: appending a token leaves a causal prefix unchanged "
                     f"({nums['prefix_change_causal']:.0e}) but changes every bidirectional state ({nums['prefix_change_bidirectional']:.2f}), "
                     f"so only a decoder can cache K/V: {nums['positions_cached']} positions instead of {nums['positions_full']} for "
                     f"{new} tokens, identical logits ({nums['cached_vs_full']:.0e}). 'Fewer parameters' is a choice of size, "
                     "not a property of the architecture (at equal depth and width an encoder-decoder adds only cross-attention).",
        corrected_zh="笔记漏掉了两个可以测量的理由。(1) 秩:因果注意力矩阵是下三角矩阵(对角线以上最大元素 "
                     f"{nums['causal_upper_4']:.0e}),对角线为正,所以 det = Π a_ii > 0,在精确算术下满秩(数值上最后几个奇异值仍低至 "
                     f"{nums['causal_sigma_min_4']:.0e}·σ₁:优势在谱的主体);双向 softmax(QKᵀ/√d) 来自秩为 "
                     f"head_dim 的矩阵,在 n = {n}、head_dim 4 时大于 1e-3·σ₁ 的奇异值只有 {nums['rank_bidirectional_4']} 个,因果为 "
                     f"{nums['rank_causal_4']} 个(有效秩 {nums['eff_rank_bidirectional_4']:.0f} 对 {nums['eff_rank_causal_4']:.0f})。"
                     "head_dim 为 16 和 64 时双向矩阵的条件数与因果矩阵相当甚至更好——这个论证只在 head_dim ≪ n 时成立。(2) 复用:追加一个 token 时因果前缀不变"
                     f"({nums['prefix_change_causal']:.0e}),而双向的每个状态都会变({nums['prefix_change_bidirectional']:.2f}),"
                     f"所以只有 decoder 能缓存 K/V:生成 {new} 个 token 只算 {nums['positions_cached']} 个位置而不是 {nums['positions_full']} 个,"
                     f"logits 相同({nums['cached_vs_full']:.0e})。“参数量更少”是规模的选择,而非架构的性质(同深度同宽度时 encoder-decoder "
                     "只多出交叉注意力)。",
        conclusion_en="The notes' reasons are incomplete: autoregressive fit is real, and what makes it cheap is exact KV-cache "
                      f"reuse (recomputing was {nums['time_ratio']:.1f}× slower here); the rank argument is real but only "
                      "for head_dim ≪ n; parameter count is not an architectural advantage.",
        conclusion_zh="笔记给出的理由不完整:适合自回归生成是对的,真正让它便宜的是 KV 缓存的精确复用(这里重算慢 "
                      f"{nums['time_ratio']:.1f} 倍);秩的论证成立但仅限 head_dim ≪ n;参数量不是架构上的优势。",
        tables=[Table(f"rank of the attention matrix, n = {n} (llmlab attend, V = I, float64)",
                      f"注意力矩阵的秩,n = {n}(llmlab attend,V = I,float64)",
                      ["head_dim", "mask", "σ > 1e-3·σ₁", "effective rank", "min diagonal"], rank_rows),
                Table("KV-cache reuse (llmlab Transformer, hidden 64, 2 layers)", "KV 缓存复用(llmlab Transformer,hidden 64,2 层)",
                      ["measurement", "value"], kv_rows)],
        plots=[Plot("why-decoder-only-rank", "Singular values of causal vs bidirectional attention", "因果与双向注意力矩阵的奇异值", draw)])


@topic("bert-embedding-sum", theme="architecture",
       question_en="Is it reasonable that BERT adds its token, position and segment embeddings?",
       question_zh="BERT的Embedding相加合理性?",
       claims=[Claim("sum-is-concat", SEED_000, "Embedding相加等价于拼接后投影,模型能自动学习各Embedding的交互。实验表明相加不影响效果且更高效。")],
       answer_en="Yes: the sum is exactly [one-hot(token); one-hot(pos); one-hot(seg)] times the stacked tables, and "
                 "concatenation followed by any linear map equals a sum of re-parameterised tables — at width d instead of 3d.",
       answer_zh="合理:相加恰好等于 [one-hot(token); one-hot(pos); one-hot(seg)] 乘以堆叠的嵌入表;拼接后接任意线性映射也等于"
                 "重新参数化的嵌入表相加——宽度是 d 而不是 3d。")
def bert_embedding_sum(ctx: Context) -> Result:
    g = ctx.generator()
    torch.manual_seed(ctx.seed)
    cfg = _tiny(position="learned", hidden_size=32, max_position_embeddings=64)
    model = Transformer(cfg).double().eval()
    segment = nn.Embedding(2, cfg.hidden_size).double()  # BERT's token-type table; llmlab's decoder has none
    T = 12
    ids = torch.randint(0, cfg.vocab_size, (1, T), generator=g)
    seg = (torch.arange(T) >= 5).long()[None]  # sentence A: 5 tokens, sentence B: 7
    captured = {}
    hook = model.drop.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        model(ids)
        hook.remove()
        summed = captured["x"] + segment(seg)  # what llmlab's embedding stage computes, plus the segment row
        tables = (model.embed.weight, model.pos_embed.weight, segment.weight)
        V, P = cfg.vocab_size, cfg.max_position_embeddings
        onehot = torch.cat([nn.functional.one_hot(ids, V), nn.functional.one_hot(torch.arange(T)[None], P),
                            nn.functional.one_hot(seg, 2)], dim=-1).double()  # (1, T, V + P + 2)
        via_onehot = onehot @ torch.cat(tables)  # concatenated one-hots, projected by the stacked tables
        concat = torch.cat([t[i] for t, i in zip(tables, (ids, torch.arange(T)[None], seg))], dim=-1)  # (1, T, 3d)
        d = cfg.hidden_size
        w_sum = torch.cat([torch.eye(d, dtype=torch.float64)] * 3, dim=1)  # (d, 3d) = [I I I]
        via_concat = concat @ w_sum.T
        w = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)  # any learned projection of the concatenation
        projected = concat @ w.T
        reparam = [t @ w[:, k * d:(k + 1) * d].T for k, t in enumerate(tables)]  # new tables E_k W_kᵀ
        reparam_sum = reparam[0][ids] + reparam[1][torch.arange(T)[None]] + reparam[2][seg]
    nums = {"onehot_diff": float((via_onehot - summed).abs().max()), "concat_identity_diff": float((via_concat - summed).abs().max()),
            "reparam_diff": float((projected - reparam_sum).abs().max()), "width_sum": d, "width_concat": 3 * d,
            "extra_params_concat": 3 * d * d}
    rows = [["sum of llmlab's token + learned-position rows (+ segment) vs one-hot concat × stacked tables", nums["onehot_diff"]],
            ["vs concat of the three embeddings × [I I I]", nums["concat_identity_diff"]],
            ["concat × random W (d × 3d) vs sum of re-parameterised tables E_k W_kᵀ", nums["reparam_diff"]],
            ["input width: sum / concat", f"{d} / {3 * d}"],
            ["extra projection parameters for concat + project", 3 * d * d]]
    return Result(
        verdicts={"sum-is-concat": "confirmed"},
        numbers=nums,
        corrected_en="", corrected_zh="",
        conclusion_en=f"The notes are right. llmlab's embedding stage (token row + learned position row, captured from the model) "
                      f"plus a segment row equals concatenated one-hot vectors times the stacked tables ({nums['onehot_diff']:.0e}); "
                      f"any projection W of the concatenated embeddings equals the sum of tables E_k W_kᵀ ({nums['reparam_diff']:.0e}), "
                      f"so summing loses nothing a linear layer could recover and keeps width {d} instead of {3 * d}. The "
                      "interactions between token, position and segment are not in the sum itself (it is additive); they "
                      "arise in the first attention and FFN layers.",
        conclusion_zh=f"笔记正确。llmlab 的嵌入阶段(从模型中截取的 token 行 + 可学习位置行)加上 segment 行,等于拼接的 one-hot 向量乘以"
                      f"堆叠的嵌入表({nums['onehot_diff']:.0e});拼接嵌入后接任意投影 W 等于嵌入表 E_k W_kᵀ 之和({nums['reparam_diff']:.0e}),"
                      f"所以相加不损失任何线性层能恢复的信息,且宽度是 {d} 而不是 {3 * d}。token、位置、segment 之间的交互并不在加和本身"
                      "(它是加性的),而是在第一层注意力和 FFN 中产生。",
        tables=[Table("summed vs concatenated embeddings (float64)", "相加与拼接的嵌入(float64)", ["check", "max |difference|"], rows)])
