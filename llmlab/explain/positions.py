"""Position encodings: what sinusoidal positions and RoPE really encode, which encodings extrapolate
beyond the trained length (ALiBi), and why token embeddings are multiplied by √d_model.

Experiments call llmlab's `sinusoidal_embedding`, `rope_inv_freq`, `rope_cos_sin`, `apply_rope`,
`alibi_slopes` and `alibi_bias` (the functions the Transformer uses), and train tiny llmlab
`Transformer`s with `train_step` for the extrapolation test.
"""

from __future__ import annotations

import math

import torch

from llmlab.config import ModelConfig
from llmlab.explain.normalization import _tiny
from llmlab.explain.registry import SEED_001, SEED_002, SEED_003, Claim, Context, Result, Table, topic
from llmlab.model.layers import alibi_bias, alibi_slopes, apply_rope, rope_cos_sin, rope_inv_freq, sinusoidal_embedding
from llmlab.model.transformer import Transformer
from llmlab.train.loop import train_step
from llmlab.train.optim import AdamW, LossScaler, param_groups


@topic("sinusoidal-positions", theme="positions",
       question_en="Do sinusoidal position encodings carry only absolute position?",
       question_zh="正弦/余弦位置编码是否只提供绝对位置信息?",
       claims=[Claim("absolute-only", SEED_003, "信息的局限性:固定的位置编码仅提供了位置的绝对信息,而没有考虑序列中元素之间的相对关系。")],
       answer_en="No: PE(p + k) is a fixed rotation of PE(p) for every p, and PE(p)·PE(p + k) depends only on k.",
       answer_zh="不是:对任意 p,PE(p + k) 都是 PE(p) 的同一个旋转,且 PE(p)·PE(p + k) 只取决于 k。")
def sinusoidal_positions(ctx: Context) -> Result:
    d, k = 64, 5
    pos = torch.arange(200)[None]
    pe = sinusoidal_embedding(pos, d)[0].double()  # (200, d)
    # M: on each (sin, cos) pair with frequency w, rotate by k·w — the same matrix for every position p.
    w = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    m = torch.zeros(d, d, dtype=torch.float64)
    c, s = torch.cos(k * w), torch.sin(k * w)
    for i in range(d // 2):  # [sin, cos](p + k) = [sin, cos](p) @ [[c, -s], [s, c]]
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = c[i], -s[i]
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = s[i], c[i]
    err = float((pe[:200 - k] @ m - pe[k:]).abs().max())
    dots = [(pe[p] @ pe[p + k]).item() for p in (0, 37, 150)]
    spread = max(dots) - min(dots)
    rows = [[f"max |PE(p+{k}) − PE(p)·M| over p = 0..194", err],
            [f"PE(p)·PE(p+{k}) at p = 0, 37, 150", ", ".join(f"{x:.6f}" for x in dots)],
            ["spread of those dot products", spread]]
    return Result(
        verdicts={"absolute-only": "wrong"},
        numbers={"linear_map_error": err, "dot_spread": spread},
        corrected_en=f"One fixed linear map M (a block-diagonal rotation by k·ω_i on each sin/cos pair) turns "
                     f"llmlab's PE(p) into PE(p + {k}) for every p to {err:.1e} (fp32 rounding), and PE(p)·PE(p + {k}) is the same at every p (spread "
                     f"{spread:.1e}). Relative offsets are linearly available to attention, which is why Vaswani et al. chose sinusoids.",
        corrected_zh=f"一个固定的线性映射 M(对每对 sin/cos 旋转 k·ω_i 的分块对角矩阵)对任意 p 都把 llmlab 的 PE(p) 变成 PE(p + {k}),"
                     f"误差 {err:.1e}(fp32 舍入);"
                     f"PE(p)·PE(p + {k}) 在任何 p 处都相同(差异 {spread:.1e})。相对位移可以被注意力线性地读出,这正是 Vaswani 等选择正弦函数的原因。",
        conclusion_en="The notes' 'only absolute information' is wrong for sinusoids (it holds for learned absolute embeddings).",
        conclusion_zh="笔记所说“仅提供绝对信息”对正弦编码是错误的(对可学习的绝对位置嵌入才成立)。",
        tables=[Table("llmlab sinusoidal_embedding, d = 64", "llmlab sinusoidal_embedding,d = 64", ["measurement", "value"], rows)])


@topic("rope-relative", theme="positions",
       question_en="What does RoPE encode — is its rotation generated from the content?",
       question_zh="旋转位置编码(RoPE)的原理是什么?旋转矩阵是否随输入内容变化?",
       claims=[Claim("dynamic", SEED_003, "旋转矩阵是动态生成的,这意味着它们可以根据输入\n    序列的内容进行调整,从而更好地捕捉长距离依赖。")],
       answer_en="RoPE rotates q and k by angles fixed by position only; q_m·k_n then depends only on m − n. Nothing depends on content and nothing is learned.",
       answer_zh="RoPE 按只由位置决定的角度旋转 q 和 k;于是 q_m·k_n 只依赖 m − n。旋转与内容无关,也没有可学习参数。")
def rope_relative(ctx: Context) -> Result:
    cfg = ModelConfig(vocab_size=8, hidden_size=64, num_layers=1, num_heads=1, max_position_embeddings=4096)
    inv = rope_inv_freq(cfg)
    g = ctx.generator()
    q, k = torch.randn(1, 1, 1, 64, generator=g), torch.randn(1, 1, 1, 64, generator=g)

    def score(m: int, n: int, qv=q, kv=k) -> float:
        cm, sm = rope_cos_sin(inv, torch.tensor([[m]]), torch.float64)
        cn, sn = rope_cos_sin(inv, torch.tensor([[n]]), torch.float64)
        return float((apply_rope(qv.double(), cm, sm) * apply_rope(kv.double(), cn, sn)).sum())

    shifts = [score(10 + s, 3 + s) for s in (0, 100, 1000, 3000)]
    spread = max(shifts) - min(shifts)
    # The rotation applied to two different contents at the same position is the same matrix.
    c, s_ = rope_cos_sin(inv, torch.tensor([[42]]), torch.float64)
    x1, x2 = torch.randn(1, 1, 1, 64, generator=g).double(), torch.randn(1, 1, 1, 64, generator=g).double()
    linear_err = float((apply_rope(x1 + 2 * x2, c, s_) - apply_rope(x1, c, s_) - 2 * apply_rope(x2, c, s_)).abs().max())
    norm_err = float((apply_rope(x1, c, s_).norm() - x1.norm()).abs())
    rows = [["q_m·k_n for (m, n) = (10, 3) shifted by 0, 100, 1000, 3000", ", ".join(f"{x:.6f}" for x in shifts)],
            ["spread of those scores", spread],
            ["rope(x1 + 2 x2) − rope(x1) − 2 rope(x2): linear, content-independent", linear_err],
            ["‖rope(x)‖ − ‖x‖: a rotation", norm_err],
            ["learned parameters in RoPE", 0]]
    return Result(
        verdicts={"dynamic": "wrong"},
        numbers={"shift_spread": spread, "linear_err": linear_err, "norm_err": norm_err},
        corrected_en="RoPE's rotation for position m is the fixed block-diagonal matrix R(m·θ_i), θ_i = 10000^(−2i/d): "
                     f"it is linear in the input ({linear_err:.1e}), norm-preserving ({norm_err:.1e}), has no parameters and "
                     f"never looks at content. What it buys is relativity: shifting both positions by up to 3000 changes "
                     f"q_m·k_n by {spread:.1e}.",
        corrected_zh="RoPE 对位置 m 的旋转是固定的分块对角矩阵 R(m·θ_i),θ_i = 10000^(−2i/d):它对输入是线性的"
                     f"({linear_err:.1e})、保持范数({norm_err:.1e})、没有参数,也从不看内容。它带来的是相对性:两个位置同时平移至多 3000,"
                     f"q_m·k_n 只变化 {spread:.1e}。",
        conclusion_en="The notes' 'dynamically generated from the content' is wrong; RoPE is a deterministic function of position.",
        conclusion_zh="笔记所说“根据输入内容动态生成”是错误的;RoPE 是位置的确定性函数。",
        tables=[Table("llmlab apply_rope, head_dim 64", "llmlab apply_rope,head_dim 64", ["measurement", "value"], rows)])


def _previous_token(ctx: Context, batch: int, seq: int, offset: int, vocab: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A task that needs attention at distance 1: the label at position t is the token at t − 1."""
    x = torch.randint(0, vocab, (batch, seq), generator=ctx.generator(offset))
    y = torch.roll(x, 1, dims=1)
    y[:, 0] = -100
    return x, y


@topic("alibi-extrapolation", theme="positions",
       question_en="Which position encodings are absolute and which relative — and which extrapolate beyond the trained length?",
       question_zh="位置编码有哪些类型?(绝对:可学习、Sinusoidal;相对:RoPE、ALiBi)哪些能外推到训练长度之外?",
       claims=[Claim("types", SEED_001, "包括绝对位置编码(可学习、Sinusoidal)和相对位置编码(RoPE、ALiBi)。")],
       answer_en="The classification is right, but 'relative' does not mean 'extrapolates': trained on 16 tokens, ALiBi "
                 "keeps its loss at 16× the length while RoPE and learned-position models collapse past ~2×.",
       answer_zh="分类正确,但“相对”不等于“能外推”:在 16 个 token 上训练后,ALiBi 在 16 倍长度上损失基本不变,"
                 "而 RoPE 与可学习位置的模型超过约 2 倍长度就失效。")
def alibi_extrapolation(ctx: Context) -> Result:
    train_len, lengths, vocab = 16, (16, 32, 64, 256), 32
    rows, nums = [], {}
    for pos in ("alibi", "rope", "sinusoidal", "learned"):
        torch.manual_seed(ctx.seed)
        model = Transformer(_tiny(position=pos, vocab_size=vocab, max_position_embeddings=max(lengths)))
        opt = AdamW(param_groups(model, 0.0), lr=1e-2)
        scaler = LossScaler(enabled=False)
        for s in range(120):
            train_step(model, model, [_previous_token(ctx, 8, train_len, 1 + s)], opt, scaler, device="cpu",
                       precision="fp32", grad_clip=1.0)
        model.eval()
        with torch.no_grad():
            losses = [float(model.loss(*_previous_token(ctx, 4, T, 10_000))) for T in lengths]
        rows.append([pos, *losses])
        for T, loss in zip(lengths, losses):
            nums[f"loss_{pos}_{T}"] = loss
    slopes = alibi_slopes(4)
    bias = alibi_bias(slopes, torch.tensor([[255]]), torch.tensor([[255 - 1, 255 - 16, 0]]))[0, :, 0]  # (H, 3)
    bias_rows = [[h, float(slopes[h]), *[float(b) for b in bias[h]]] for h in range(4)]
    nums["uniform_loss"] = math.log(vocab)
    a16, a256 = nums["loss_alibi_16"], nums["loss_alibi_256"]
    s16, s256 = nums["loss_sinusoidal_16"], nums["loss_sinusoidal_256"]
    fitted = s16 < 1.0  # a model that never fit the trained length shows nothing about extrapolating beyond it
    sin_en = (f"fails beyond it too ({s16:.2f} → {s256:.2f})" if fitted else
              f"did not fit even the trained length in 120 steps ({s16:.2f} nats at {train_len} tokens), so its "
              f"{s256:.2f} at 256 says little about extrapolation")
    sin_zh = (f"在训练长度之外同样失效({s16:.2f} → {s256:.2f})" if fitted else
              f"120 步内连训练长度都没拟合({train_len} 个 token 上 {s16:.2f} nats),所以它在 256 上的 {s256:.2f} "
              "说明不了外推能力")
    return Result(
        verdicts={"types": "confirmed"},
        numbers=nums,
        corrected_en="",
        corrected_zh="",
        conclusion_en=f"The notes' classification is right. What it does not say: trained on {train_len} tokens for a task that "
                      "only needs the previous token, llmlab's ALiBi model goes from "
                      f"{a16:.2f} to {a256:.2f} nats at 256 tokens, because its bias −slope·distance is defined for every "
                      "distance and pushes unseen far keys further down. RoPE is relative too but its unseen large rotation "
                      f"angles break it ({nums['loss_rope_16']:.2f} → {nums['loss_rope_256']:.2f}); learned positions fail "
                      f"beyond the trained length (rows past {train_len} were never trained); the sinusoidal model {sin_en}. "
                      f"All three end above the uniform-guess loss ln {vocab} = {math.log(vocab):.2f}.",
        conclusion_zh=f"笔记的分类正确。它没有说的是:在只需要前一个 token 的任务上用 {train_len} 个 token 训练后,llmlab 的 ALiBi 模型在 256 个 "
                      f"token 上损失从 {a16:.2f} 变为 {a256:.2f} nats,因为它的偏置 −slope·距离 对任何距离都有定义,并把没见过的远处 key "
                      f"压得更低。RoPE 同样是相对编码,但没见过的大旋转角使它失效({nums['loss_rope_16']:.2f} → {nums['loss_rope_256']:.2f});"
                      f"可学习位置在训练长度之外失效(超过 {train_len} 的位置行从未被训练);正弦位置的模型{sin_zh}。这三者最终都高于"
                      f"均匀猜测的损失 ln {vocab} = {math.log(vocab):.2f}。",
        tables=[Table(f"previous-token task: trained at {train_len} tokens (120 steps), loss at longer lengths",
                      f"前一个 token 任务:在 {train_len} 个 token 上训练(120 步),更长序列上的损失",
                      ["position", *[f"loss @ {T}" for T in lengths]], rows),
                Table("llmlab alibi_bias at query 255 (4 heads)", "llmlab alibi_bias,query 位置 255(4 个头)",
                      ["head", "slope", "bias @ distance 1", "bias @ 16", "bias @ 255"], bias_rows)])


@topic("embedding-scale", theme="positions",
       question_en="Why are the token embeddings multiplied by √d_model?",
       question_zh="为何在获取输入词向量之后需要对矩阵乘以embedding size的开方?意义是什么?",
       claims=[Claim("xavier", SEED_002, "embedding matrix的初始化方式是xavier init,这种方式的方差是1/embedding size,因此乘以embedding size的开方使得embedding matrix的方差是1,在这个scale下可能更有利于embedding matrix的收敛。", numeric=True)],
       answer_en="Xavier on a V × d table has variance 2/(V + d), not 1/d; the scale matters for N(0, 1/d) tables (tied with the "
                 "output layer), where ×√d brings a token vector to norm √d, on par with the sinusoidal PE's √(d/2).",
       answer_zh="V × d 的词表用 Xavier 初始化时方差是 2/(V + d),不是 1/d;这个缩放针对的是 N(0, 1/d) 初始化(与输出层共享)的词表,"
                 "×√d 使 token 向量范数变为 √d,与正弦位置编码的 √(d/2) 相当。")
def embedding_scale(ctx: Context) -> Result:
    V, d, cfg_vocab = 32000, 512, 1000
    table = torch.empty(V, d)
    torch.nn.init.xavier_uniform_(table, generator=ctx.generator())
    xavier_var = float(table.var())
    ids = torch.randint(0, cfg_vocab, (1, 64), generator=ctx.generator(1))
    pe_norm = float(sinusoidal_embedding(torch.arange(64)[None], d).norm(dim=-1).mean())
    rows, nums = [], {"xavier_var": xavier_var, "xavier_formula": 2 / (V + d), "notes_var": 1 / d, "pe_norm": pe_norm}
    for init, std in (("llmlab default N(0, 0.02²)", 0.02), ("N(0, 1/d) (Vaswani, tied)", d ** -0.5),
                      (f"xavier_uniform on {cfg_vocab} × d", None)):
        for scale in (False, True):
            torch.manual_seed(ctx.seed)
            cfg = ModelConfig(vocab_size=cfg_vocab, hidden_size=d, num_layers=1, num_heads=8, position="sinusoidal",
                              embedding_scale=scale, max_position_embeddings=64)
            model = Transformer(cfg).eval()
            with torch.no_grad():
                if std is None:
                    torch.nn.init.xavier_uniform_(model.embed.weight, generator=ctx.generator())
                else:
                    model.embed.weight.normal_(0.0, std, generator=ctx.generator())
            captured = {}
            hook = model.drop.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
            with torch.no_grad():
                model(ids)
            hook.remove()
            # The embedding stage's output is token part + PE: subtract llmlab's PE to see the token part.
            token = captured["x"][0] - sinusoidal_embedding(torch.arange(64)[None], d)[0]
            tnorm = float(token.norm(dim=-1).mean())
            rows.append([init, "× √d" if scale else "none", float(token.var()), tnorm, pe_norm, tnorm / pe_norm])
            nums[f"ratio_{std}_{scale}"] = tnorm / pe_norm
    nums["ratio_default"], nums["ratio_default_scaled"] = nums["ratio_0.02_False"], nums["ratio_0.02_True"]
    nums["ratio_vaswani"], nums["ratio_vaswani_scaled"] = nums[f"ratio_{d ** -0.5}_False"], nums[f"ratio_{d ** -0.5}_True"]
    nums["ratio_xavier_scaled"] = nums["ratio_None_True"]
    return Result(
        verdicts={"xavier": "wrong"},
        numbers=nums,
        corrected_en=f"Xavier-uniform on a {V} × {d} embedding table gives variance 2/(V + d) = {2 / (V + d):.2e} (measured "
                     f"{xavier_var:.2e}), not 1/d = {1 / d:.2e}; ×√d then gives variance {xavier_var * d:.3f}, not 1. The "
                     "scale is right for the original Transformer, whose embedding (shared with the output layer) is N(0, 1/d): "
                     f"there a token vector has norm ≈ 1 and the sinusoidal PE has norm √(d/2) = {pe_norm:.1f}, so without the "
                     f"scale position would swamp content (token/PE = {nums['ratio_vaswani']:.2f}); with it, {nums['ratio_vaswani_scaled']:.2f}.",
        corrected_zh=f"{V} × {d} 的嵌入表用 Xavier-uniform 初始化,方差是 2/(V + d) = {2 / (V + d):.2e}(实测 {xavier_var:.2e}),"
                     f"不是 1/d = {1 / d:.2e};再乘 √d 后方差为 {xavier_var * d:.3f},不是 1。这个缩放适用于原始 Transformer:"
                     f"其嵌入(与输出层共享)是 N(0, 1/d),token 向量范数约为 1,而正弦位置编码的范数是 √(d/2) = {pe_norm:.1f},"
                     f"不缩放时位置会淹没内容(token/PE = {nums['ratio_vaswani']:.2f});缩放后为 {nums['ratio_vaswani_scaled']:.2f}。",
        conclusion_en="The notes' arithmetic is wrong for Xavier; the reason for ×√d is the balance between content and "
                      "position (and the tied N(0, 1/d) output layer). With llmlab's default N(0, 0.02²) init, ×√d still "
                      f"leaves tokens at {nums['ratio_default_scaled']:.2f} of the PE norm — the scale belongs with its init.",
        conclusion_zh="笔记对 Xavier 的算术是错的;×√d 的理由是平衡内容与位置(以及与输出层共享的 N(0, 1/d) 初始化)。在 llmlab 默认的 "
                      f"N(0, 0.02²) 初始化下,×√d 后 token 也只有位置编码范数的 {nums['ratio_default_scaled']:.2f}——缩放必须与初始化配套。",
        tables=[Table(f"llmlab Transformer embedding stage, d = {d}, sinusoidal positions",
                      f"llmlab Transformer 嵌入阶段,d = {d},正弦位置",
                      ["token table init", "embedding_scale", "token var", "‖token‖", "‖PE‖", "‖token‖ / ‖PE‖"], rows)])
