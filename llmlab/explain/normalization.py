"""Normalization, residuals and train/eval behaviour: LayerNorm vs BatchNorm on padded batches,
pre-LN vs post-LN, residual gradient flow, model.train()/eval(), inverted dropout.

The models are llmlab `Transformer`s (norm_position pre|post, dropout) trained with llmlab's
`train_step` and `AdamW`; BatchNorm, which llmlab does not use, is torch's `nn.BatchNorm1d`.
"""

from __future__ import annotations

import torch
from torch import nn

from llmlab.config import ModelConfig
from llmlab.explain.registry import SEED_000, SEED_002, SEED_003, Claim, Context, Plot, Result, Table, topic
from llmlab.model.layers import make_norm
from llmlab.model.transformer import Transformer
from llmlab.train.optim import AdamW, LossScaler, param_groups
from llmlab.train.loop import train_step


def _tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_position_embeddings=64)
    return ModelConfig(**{**base, **kw})


def mapping_task(ctx: Context, batch: int, seq: int, vocab: int = 64, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy language learnable in a few dozen steps: the next token is (5·token + 1) mod vocab. Returns (x, y)."""
    x = torch.randint(0, vocab, (batch, seq), generator=ctx.generator(offset))
    return x, (x * 5 + 1) % vocab


def train_tiny(model: Transformer, ctx: Context, *, lr: float, steps: int, batch: int = 8, seq: int = 16,
               grad_clip: float = 0.0) -> list[float]:
    """`steps` llmlab train_step calls (AdamW, no warmup, fp32) on the mapping task; returns the losses."""
    opt = AdamW(param_groups(model, 0.0), lr=lr)
    scaler = LossScaler(enabled=False)
    losses = []
    for s in range(steps):
        loss, _, _ = train_step(model, model, [mapping_task(ctx, batch, seq, offset=1 + s)], opt, scaler,
                                device="cpu", precision="fp32", grad_clip=grad_clip)
        losses.append(float(loss))
    return losses


@topic("layernorm-vs-batchnorm", theme="normalization",
       question_en="Why do NLP models use LayerNorm rather than BatchNorm?",
       question_zh="为什么NLP用LayerNorm而不是BatchNorm?",
       claims=[Claim("padding", SEED_000, "而Batch Normalization需要对不同样本的同一位置特征进行标准化处理,所以无法应用;当然,输入的序列都要做padding补齐操作,但是补齐的位置填充的都是0,这些位置都是无意义的,此时的标准化也就没有意义了。"),
               Claim("per-sample", SEED_002, "LN:针对每个样本序列进行Norm,没有样本间的依赖。")],
       answer_en="BatchNorm's statistics mix in padding and other sentences, so a sentence's output depends on its batch; LayerNorm's never does.",
       answer_zh="BatchNorm 的统计量混入了 padding 和其他句子,一个句子的输出取决于它所在的 batch;LayerNorm 不会。")
def layernorm_vs_batchnorm(ctx: Context) -> Result:
    d = 32
    g = ctx.generator()
    a = torch.randn(5, d, generator=g) * 2 + 1  # sentence A: 5 tokens
    b = torch.randn(12, d, generator=g) * 0.5  # sentence B: 12 tokens
    ln = make_norm(_tiny(norm="layernorm", hidden_size=d))
    bn = nn.BatchNorm1d(d)

    def batch(*sents, pad_to: int):
        x = torch.zeros(len(sents), pad_to, d)
        for i, s in enumerate(sents):
            x[i, : len(s)] = s
        return x  # (B, T, d), zero padding

    outs_ln, outs_bn = [], []
    for partner, pad_to in ((None, 5), (None, 12), (b, 12), (b, 32)):
        x = batch(a, *(() if partner is None else (partner,)), pad_to=pad_to)
        with torch.no_grad():
            outs_ln.append(ln(x)[0, :5])
            outs_bn.append(bn.train()(x.reshape(-1, d)).reshape(x.shape)[0, :5])
    rows = [[name, float((outs_bn[i] - outs_bn[0]).abs().max()), float((outs_ln[i] - outs_ln[0]).abs().max())]
            for i, name in enumerate(["A alone (5 tokens)", "A padded to 12", "A + B, padded to 12", "A + B, padded to 32"])]
    return Result(
        verdicts={"padding": "confirmed", "per-sample": "confirmed"},
        numbers={"bn_change_pad": rows[1][1], "bn_change_partner": rows[3][1], "ln_change": max(r[2] for r in rows)},
        corrected_en="", corrected_zh="",
        conclusion_en=f"The same sentence A normalised by BatchNorm changes by up to {rows[3][1]:.2f} depending on how much "
                      f"zero padding and which other sentence share its batch; with llmlab's LayerNorm it changes by "
                      f"{max(r[2] for r in rows):.1e}. Batch statistics over padded positions are meaningless, as the "
                      "notes say, and they also make a token's output depend on other samples.",
        conclusion_zh=f"同一个句子 A 经 BatchNorm 后,随 batch 中 padding 的多少和同批的其他句子而变化,最大达 {rows[3][1]:.2f};"
                      f"用 llmlab 的 LayerNorm 变化为 {max(r[2] for r in rows):.1e}。正如笔记所说,对 padding 位置统计是无意义的,"
                      "而且它让一个 token 的输出依赖于其他样本。",
        tables=[Table("change of sentence A's normalised output vs A alone (max |Δ|)", "句子 A 归一化输出相对单独时的变化(最大 |Δ|)",
                      ["batch", "BatchNorm", "LayerNorm (llmlab)"], rows)])


@topic("pre-ln-vs-post-ln", theme="normalization",
       question_en="Pre-LN vs post-LN: where does LayerNorm go, and which trains more stably?",
       question_zh="介绍一下postlayernorm和prelayernorm的区别",
       claims=[Claim("no-answer", SEED_003, "21.介绍-下postlayernorm和prelayernorm的区别"),
               Claim("post-structure", SEED_002, "基本结构:Embedding + Position Embedding,Self-Attention,Add + LN,FN,Add +\n    LN")],
       answer_en="Post-LN (Add → LN, the original Transformer) puts a norm on the residual path and needs warmup: at a "
                 "high lr without it, it first learns, then diverges; pre-LN keeps an identity path and trains steadily.",
       answer_zh="Post-LN(先相加再 LN,原始 Transformer)把归一化放在残差路径上,需要 warmup:不用 warmup、学习率较高时"
                 "先学会再发散;Pre-LN 保留恒等路径,训练平稳。")
def pre_vs_post_ln(ctx: Context) -> Result:
    layers, steps, lr = 8, 40, 3e-2
    rows, curves, nums = [], {}, {}
    for pos in ("pre", "post"):
        cfg = _tiny(num_layers=layers, norm="layernorm", norm_position=pos, position="learned")
        torch.manual_seed(ctx.seed)
        model = Transformer(cfg).train()
        x, y = mapping_task(ctx, 8, 16)
        model.loss(x, y).backward()
        gnorms = [float(torch.cat([p.grad.flatten() for p in b.parameters()]).norm()) for b in model.blocks]
        model.zero_grad(set_to_none=True)
        losses = train_tiny(model, ctx, lr=lr, steps=steps)
        curves[(pos, lr)] = losses
        low, final = min(losses), sum(losses[-3:]) / 3
        rows.append([f"{pos}-LN", gnorms[0], gnorms[-1], gnorms[-1] / gnorms[0], low, final, final - low])
        nums[f"{pos}_min"], nums[f"{pos}_final"], nums[f"{pos}_rebound"] = low, final, final - low
        nums[f"{pos}_grad_ratio"] = gnorms[-1] / gnorms[0]

    def draw(fig, curves=curves):
        ax = fig.add_subplot(1, 1, 1)
        for (pos, lr), ls in curves.items():
            ax.plot(ls, label=f"{pos}-LN, lr {lr:g}")
        ax.set_xlabel("step"), ax.set_ylabel("train loss"), ax.legend(), ax.set_title(f"{layers}-layer llmlab model, no warmup")

    return Result(
        verdicts={"no-answer": "incomplete", "post-structure": "confirmed"},
        numbers=nums,
        corrected_en="The notes ask without answering (and 002 describes the post-LN layout 'Add + LN' without naming it). "
                     f"Measured on {layers}-layer llmlab models at init: the last block's gradient is "
                     f"{nums['post_grad_ratio']:.2f}× the first block's with post-LN and {nums['pre_grad_ratio']:.2f}× with "
                     f"pre-LN: the growth toward the output that Xiong et al. (2020) derive for post-LN does not show at "
                     f"this depth and width. Trained {steps} AdamW steps at lr {lr:g} without warmup, post-LN reaches a loss of "
                     f"{nums['post_min']:.2f} and then climbs back to {nums['post_final']:.2f}; pre-LN descends steadily to "
                     f"{nums['pre_final']:.2f} (rebound {nums['pre_rebound']:.2f}).",
        corrected_zh="笔记只有问题没有答案(002 描述的“Add + LN”就是 post-LN,但没有点明)。"
                     f"在 {layers} 层 llmlab 模型上初始化时实测:最后一个块的梯度是第一个块的 {nums['post_grad_ratio']:.2f} 倍(post-LN)"
                     f"和 {nums['pre_grad_ratio']:.2f} 倍(pre-LN):Xiong 等(2020)推导的 post-LN 梯度向输出层增大在这个深度和宽度下"
                     f"没有出现。不用 warmup、lr {lr:g} 的 AdamW 训练 {steps} 步:"
                     f"post-LN 先降到 {nums['post_min']:.2f} 又回升到 {nums['post_final']:.2f};pre-LN 平稳下降到 {nums['pre_final']:.2f}"
                     f"(回升 {nums['pre_rebound']:.2f})。",
        conclusion_en="Post-LN: x = LN(x + F(x)); pre-LN: x = x + F(LN(x)). At a high learning rate without warmup the "
                      "post-LN model is unstable in this run. Pre-LN keeps an un-normalised identity path from every layer to the output, "
                      "which is why GPT-2/LLaMA use it and train without the long warmup post-LN needs (Xiong et al. 2020).",
        conclusion_zh="Post-LN:x = LN(x + F(x));Pre-LN:x = x + F(LN(x))。本次运行中高学习率、无 warmup 时 post-LN 模型不稳定。"
                      "Pre-LN 从每一层到输出都有一条不经归一化的恒等路径,所以 GPT-2/LLaMA 采用它,且不需要 post-LN 那样长的 warmup"
                      "(Xiong 等 2020)。",
        tables=[Table(f"pre-LN vs post-LN, {layers} layers, d = 32, lr {lr:g}, no warmup",
                      f"pre-LN 与 post-LN,{layers} 层,d = 32,lr {lr:g},无 warmup",
                      ["model", "‖grad‖ first block", "‖grad‖ last block", "ratio", "min loss", "final loss", "rebound"], rows)],
        plots=[Plot("pre-ln-vs-post-ln", "Training loss of pre-LN vs post-LN without warmup",
                    "无 warmup 时 pre-LN 与 post-LN 的训练损失", draw)])


@topic("residual-gradient", theme="normalization",
       question_en="What do residual connections do for gradient flow?",
       question_zh="简单讲一下Transformer中的残差结构以及意义",
       claims=[Claim("vanishing", SEED_002, "就是ResNet的优点,解决梯度消失")],
       answer_en="The identity path makes each block's Jacobian I + ∂F/∂x: the gradient reaching the embeddings stays O(1) at any depth.",
       answer_zh="恒等路径让每个块的雅可比矩阵为 I + ∂F/∂x:任意深度下到达嵌入层的梯度都保持 O(1)。")
def residual_gradient(ctx: Context) -> Result:
    rows, nums = [], {}
    for depth in (2, 8, 24):
        cfg = _tiny(num_layers=depth)
        torch.manual_seed(ctx.seed)
        model = Transformer(cfg)
        x, y = mapping_task(ctx, 4, 16)
        B, T = x.shape
        pos = torch.arange(T).expand(B, T)
        res = {}
        for residual in (True, False):
            h0 = model.embed(x).detach().requires_grad_(True)
            h = h0
            actx = model._attention_context(None, pos, B, T, 0, h.dtype, None)
            for blk in model.blocks:  # the same llmlab blocks; without residual: F2(F1(x)) instead of x + F1 + F2
                h = blk(h, actx) if residual else blk.ffn(blk.norm2(blk.attn(blk.norm1(h), actx)))
            loss = torch.nn.functional.cross_entropy(model.lm_head(model.norm_f(h)).flatten(0, 1), y.flatten())
            loss.backward()
            res[residual] = float(h0.grad.norm())
        rows.append([depth, res[True], res[False], res[True] / res[False] if res[False] else float("inf")])
        nums[f"grad_res_{depth}"], nums[f"grad_nores_{depth}"] = res[True], res[False]
    return Result(
        verdicts={"vanishing": "confirmed"},
        numbers=nums,
        corrected_en="", corrected_zh="",
        conclusion_en=f"Gradient norm reaching the embeddings of an llmlab model: with residuals {nums['grad_res_2']:.2e} at 2 "
                      f"layers and {nums['grad_res_24']:.2e} at 24; chaining the same blocks without the skip connection gives "
                      f"{nums['grad_nores_2']:.2e} and {nums['grad_nores_24']:.2e}. The skip path keeps gradients from vanishing "
                      "with depth, as the notes say.",
        conclusion_zh=f"到达 llmlab 模型嵌入层的梯度范数:有残差时 2 层为 {nums['grad_res_2']:.2e},24 层为 {nums['grad_res_24']:.2e};"
                      f"同样的块去掉跳连后为 {nums['grad_nores_2']:.2e} 和 {nums['grad_nores_24']:.2e}。残差路径使梯度不随深度消失,与笔记一致。",
        tables=[Table("‖∂loss/∂embeddings‖ with and without residual connections", "有无残差连接时 ‖∂loss/∂embeddings‖",
                      ["layers", "residual", "no residual", "ratio"], rows)])


@topic("train-vs-eval", theme="normalization",
       question_en="What do model.train() and model.eval() change?",
       question_zh="在PyTorch中model.train()和model.eval()的作用?",
       claims=[Claim("modes", SEED_000, "model.eval()\n:切换为评估模式,关闭Dropout,固定BatchNorm的均值和方差(使用训练阶段的统计量)。")],
       answer_en="train(): dropout active, BatchNorm uses and updates batch statistics; eval(): dropout is identity, BatchNorm uses running stats.",
       answer_zh="train():dropout 生效,BatchNorm 使用并更新批统计量;eval():dropout 为恒等,BatchNorm 使用滑动统计量。")
def train_vs_eval(ctx: Context) -> Result:
    model = Transformer(_tiny(dropout=0.1))
    x, _ = mapping_task(ctx, 2, 16)
    with torch.no_grad():
        model.train()
        t1, t2 = model(x), model(x)
        model.eval()
        e1, e2 = model(x), model(x)
    bn = nn.BatchNorm1d(8)
    before = bn.running_mean.clone()
    z = torch.randn(16, 8, generator=ctx.generator()) + 3
    bn.eval()(z)
    eval_moved = float((bn.running_mean - before).abs().max())
    bn.train()(z)
    train_moved = float((bn.running_mean - before).abs().max())
    rows = [["llmlab model (dropout 0.1): two train() forwards differ by", float((t1 - t2).abs().max())],
            ["two eval() forwards differ by", float((e1 - e2).abs().max())],
            ["BatchNorm running mean moved by an eval() batch", eval_moved],
            ["BatchNorm running mean moved by a train() batch", train_moved]]
    return Result(
        verdicts={"modes": "confirmed"},
        numbers={"train_diff": rows[0][1], "eval_diff": rows[1][1], "bn_eval_moved": eval_moved,
                 "bn_train_moved": train_moved},
        corrected_en="", corrected_zh="",
        conclusion_en="Confirmed: in train() llmlab's dropout makes repeated forwards differ; eval() is deterministic; "
                      "BatchNorm's running statistics move only in train(). Neither mode turns off autograd — that is torch.no_grad().",
        conclusion_zh="正确:train() 下 llmlab 的 dropout 使重复前向结果不同;eval() 下结果确定;BatchNorm 的滑动统计量只在 train() 下更新。"
                      "两种模式都不会关闭自动求导——那是 torch.no_grad() 的作用。",
        tables=[Table("train() vs eval()", "train() 与 eval()", ["measurement", "value"], rows)])


@topic("inverted-dropout", theme="normalization",
       question_en="Does dropout need rescaling at test time?",
       question_zh="Dropout 在测试的需要有什么需要注意的吗?",
       claims=[Claim("scale-at-test", SEED_002, "Dropout测试的时候记得对输入整体呈上dropout的比率")],
       answer_en="No: PyTorch's dropout is inverted (kept units × 1/(1−p) during training), so eval() must not rescale; doing so shrinks activations by (1−p).",
       answer_zh="不需要:PyTorch 的 dropout 是 inverted dropout(训练时保留的单元乘 1/(1−p)),eval() 时不能再缩放;否则激活被缩小为 (1−p) 倍。")
def inverted_dropout(ctx: Context) -> Result:
    p = 0.3
    drop = nn.Dropout(p).train()
    x = torch.ones(200_000)
    kept_scale = float(drop(x).max())
    train_mean = float(drop(x).mean())
    rows = [["nn.Dropout(0.3) in train(): value of a kept unit (input 1)", "", kept_scale],
            ["mean of dropout(ones) in train()", "", train_mean]]
    torch.manual_seed(ctx.seed)
    model = Transformer(_tiny(dropout=p)).train()
    xe, _ = mapping_task(ctx, 8, 16)
    with torch.no_grad():
        h = model.embed(xe)  # the tensor the model's first dropout (model.drop) sees
        mc = sum(model.drop(h) for _ in range(2000)) / 2000  # what training feeds forward, on average
        err_eval = float((h - mc).norm() / mc.norm())  # eval(): dropout is the identity
        err_scaled = float((h * (1 - p) - mc).norm() / mc.norm())  # the notes' rule
    rows += [["llmlab model.drop: ‖eval() output − mean of 2000 train() masks‖ / ‖mean‖", "", err_eval],
             ["same with × (1 − p) at test (the notes' rule)", "", err_scaled]]
    nums = {"kept_scale": kept_scale, "train_mean": train_mean, "err_eval": err_eval, "err_scaled": err_scaled}
    return Result(
        verdicts={"scale-at-test": "wrong"},
        numbers=nums,
        corrected_en=f"With inverted dropout each kept unit is multiplied by 1/(1 − p) = {1 / (1 - p):.4f} during training "
                     f"(measured {kept_scale:.4f}), so E[dropout(x)] = x already and eval() is the identity. Against the "
                     f"average over 2000 masks of llmlab's embedding dropout, the eval() output is off by {err_eval:.1%} "
                     "(Monte-Carlo noise); "
                     f"multiplying by (1 − p) at test time, as the notes say, puts them off by {err_scaled:.1%}. "
                     "The notes' rule belongs to the original, non-inverted dropout.",
        corrected_zh=f"inverted dropout 在训练时把每个保留单元乘以 1/(1 − p) = {1 / (1 - p):.4f}(实测 {kept_scale:.4f}),因此 "
                     f"E[dropout(x)] = x,eval() 时就是恒等映射。以 llmlab 嵌入层 dropout 在 2000 个掩码上的平均输出为参照,eval() 的输出偏差 "
                     f"{err_eval:.1%}(蒙特卡洛噪声);按笔记在测试时再乘 (1 − p),偏差为 {err_scaled:.1%}。笔记的规则属于最初的非 inverted dropout。",
        conclusion_en="Wrong for PyTorch (and every modern framework): do nothing at test time beyond model.eval().",
        conclusion_zh="对 PyTorch(以及所有现代框架)而言是错误的:测试时只需 model.eval(),不要再做任何缩放。",
        tables=[Table("inverted dropout, p = 0.3", "inverted dropout,p = 0.3", ["measurement", "", "value"], rows)])
