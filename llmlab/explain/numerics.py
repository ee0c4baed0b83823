"""Numerics: softmax overflow and max subtraction, log-softmax, broadcasting, cross-entropy vs KL,
mixed precision and loss scaling.

Experiments run llmlab's explicit attention (`attend(..., backend="explicit")`, which subtracts the
row max), its loss (`causal_lm_loss`, fp32 log-softmax) and its fp16 `LossScaler`; torch is used
directly only where the question is about torch semantics (broadcasting, dtype limits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmlab.config import ModelConfig
from llmlab.explain.registry import SEED_000, SEED_004, Claim, Context, Result, Table, topic
from llmlab.model.attention import attend
from llmlab.model.transformer import Transformer
from llmlab.train.objectives import causal_lm_loss
from llmlab.train.optim import LossScaler


@topic("softmax-overflow", theme="numerics",
       question_en="What are softmax overflow and underflow, and does subtracting the max fix them?",
       question_zh="什么是softmax上下溢出问题?减去最大值能否解决?",
       claims=[Claim("overflow", SEED_000, "上溢出:y=e^x中,如果x取非常大的正数,y(float32格式数据)就会溢出;", numeric=True),
               Claim("max-fix", SEED_000, "上溢出:最大值变为了0,因此y不会溢出;下溢出:分母必然存在1,因此不会为0。")],
       answer_en="exp overflows fp32 above x≈88.7; x−max fixes overflow and the zero denominator, "
                 "but tiny probabilities still underflow to 0 (log gives −inf): use log-softmax.",
       answer_zh="fp32 中 x≈88.7 以上 exp 溢出;减最大值解决上溢和分母为 0,但极小概率仍下溢为 0(取 log 得 −inf),需用 log-softmax。")
def softmax_overflow(ctx: Context) -> Result:
    x = torch.tensor([1000.0, 999.0, 0.0])
    naive = x.exp() / x.exp().sum()
    x_low = torch.tensor([-1000.0, -1001.0, -1100.0])
    naive_low = x_low.exp() / x_low.exp().sum()
    # llmlab's explicit attention subtracts the row max: feed it scores of the same size.
    # q·k / sqrt(hd) with hd = 1 and k = x: the scores are exactly x.
    q = torch.ones(1, 1, 1, 1)
    k = x.view(1, 1, 3, 1)
    v = torch.arange(3.0).view(1, 1, 3, 1)
    out = attend(q, k, v, backend="explicit", scale=1.0)  # sum_j p_j * j
    stable = torch.softmax(x, -1)
    overflow_at = math.log(torch.finfo(torch.float32).max)
    underflow_at = math.log(torch.finfo(torch.float32).smallest_normal) - 23 * math.log(2)  # subnormals
    tiny = torch.softmax(torch.tensor([0.0, -200.0]), -1)
    rows = [["naive exp / sum, x = [1000, 999, 0]", str([round(float(v), 4) for v in naive])],
            ["naive, x = [-1000, -1001, -1100]", str([round(float(v), 4) for v in naive_low])],
            ["max-subtracted, x = [1000, 999, 0]", str([round(float(v), 4) for v in stable])],
            ["llmlab attend(explicit), E[j] under those weights", f"{float(out):.4f}"],
            ["max-subtracted, x = [0, -200]: p[1]", f"{float(tiny[1]):.3g} (log = {float(tiny[1].log())})"]]
    return Result(
        verdicts={"overflow": "confirmed", "max-fix": "incomplete"},
        numbers={"overflow_threshold": overflow_at, "underflow_threshold": underflow_at,
                 "naive_is_nan": float(torch.isnan(naive).any()), "naive_low_is_nan": float(torch.isnan(naive_low).any()),
                 "attend_expectation": float(out), "tiny_prob": float(tiny[1])},
        corrected_en=f"fp32 exp overflows for x > ln(3.4e38) = {overflow_at:.2f} and underflows to 0 below "
                     f"x ≈ {underflow_at:.1f}. After x − max the largest exponent is e^0 = 1, so the sum is ≥ 1 — but "
                     "individual terms still underflow: softmax([0, −200])[1] = 0 exactly, and log of it is −inf.",
        corrected_zh=f"fp32 的 exp 在 x > ln(3.4e38) = {overflow_at:.2f} 时溢出,x < {underflow_at:.1f} 左右下溢为 0。"
                     "减去最大值后最大的指数项是 e^0 = 1,分母 ≥ 1;但单个概率仍会下溢:softmax([0, −200])[1] 恰为 0,取 log 得 −inf。",
        conclusion_en="The notes are right about the fix for overflow and for a zero denominator; they omit that small "
                      "probabilities still underflow, which is why losses use log-softmax (x − max − log Σ e^(x−max)) "
                      "instead of log(softmax). llmlab's explicit attention computes scores in fp32, adds −inf masks and "
                      "subtracts the row max; it returns finite weights for scores of 1000.",
        conclusion_zh="笔记对上溢和分母为 0 的解释正确;但遗漏了小概率仍会下溢,所以损失函数用 log-softmax"
                      "(x − max − log Σ e^(x−max))而不是 log(softmax)。llmlab 的显式注意力以 fp32 计算分数、加 −inf 掩码并减去行最大值,"
                      "分数为 1000 时仍输出有限的权重。",
        tables=[Table("softmax of large and small inputs (fp32)", "大/小输入的 softmax(fp32)", ["input", "output"], rows)])


@topic("log-softmax", theme="numerics",
       question_en="Why take the log of softmax (log-softmax) instead of softmax then log?",
       question_zh="对softmax做log是为什么?",
       claims=[Claim("stability", SEED_004, "数值稳定性:Softmax函数会产生非常小的概率值,直接在这些小值上进行后续计算(如交叉熵损失)可能会导致数值不稳定。"),
               Claim("logits", SEED_004, "取对数后的Softmax输出(logits)可以用来优化模型。")],
       answer_en="log_softmax = x − logsumexp(x) never takes log(0): the loss stays finite where log(softmax) is inf; "
                 "its outputs are log-probabilities, not logits.",
       answer_zh="log_softmax = x − logsumexp(x),从不计算 log(0):log(softmax) 为 inf 时损失仍有限;其输出是对数概率,不是 logits。")
def log_softmax(ctx: Context) -> Result:
    rows = []
    for gap in (10.0, 50.0, 100.0, 200.0):
        logits = torch.tensor([[[gap, 0.0]]])  # (B, T, V): the right token is the unlikely one
        target = torch.tensor([[1]])
        naive = -torch.log(torch.softmax(logits.float(), -1))[0, 0, 1]
        ours = causal_lm_loss(logits, target)
        rows.append([gap, float(naive), float(ours)])
    logits = torch.randn(5, generator=ctx.generator()) * 3
    lsm = torch.log_softmax(logits, -1)
    shift_invariant = float((torch.log_softmax(logits + 7.0, -1) - lsm).abs().max())
    return Result(
        verdicts={"stability": "confirmed", "logits": "wrong"},
        numbers={"naive_loss_gap200": rows[-1][1], "llmlab_loss_gap200": rows[-1][2],
                 "logsumexp_of_logprobs": float(torch.logsumexp(lsm, -1)), "shift_invariance": shift_invariant},
        corrected_en="log-softmax outputs are log-probabilities (logsumexp of them is 0, measured "
                     f"{float(torch.logsumexp(lsm, -1)):.1e}); logits are the inputs of softmax. With a logit gap of 200 "
                     f"log(softmax) gives loss {rows[-1][1]} while llmlab's causal_lm_loss gives {rows[-1][2]:.1f}.",
        corrected_zh="log-softmax 的输出是对数概率(其 logsumexp 为 0,实测 "
                     f"{float(torch.logsumexp(lsm, -1)):.1e}),logits 是 softmax 的输入。logit 差为 200 时,log(softmax) 得到损失 "
                     f"{rows[-1][1]},llmlab 的 causal_lm_loss 得到 {rows[-1][2]:.1f}。",
        conclusion_en="Stability is the real reason: computing x − max − log Σ exp(x − max) never forms a probability "
                      "that can underflow, so cross-entropy stays exact (here 200.0) where softmax-then-log returns inf. "
                      "Calling the result 'logits' is wrong.",
        conclusion_zh="数值稳定性确实是原因:x − max − log Σ exp(x − max) 不会先得到会下溢的概率,所以交叉熵保持精确(这里为 200.0),"
                      "而先 softmax 再 log 返回 inf。把结果称为 logits 是错误的。",
        tables=[Table("loss of the unlikely token (fp32)", "低概率 token 的损失(fp32)",
                      ["logit gap", "-log(softmax)", "llmlab causal_lm_loss"], rows)])


@topic("broadcasting", theme="numerics",
       question_en="What is the shape of a (22, 1) tensor minus a (12,) tensor — and minus a (12, 1) tensor?",
       question_zh="22x1维度的tensor减去12维度的tensor形状是多少?",
       claims=[Claim("22x1-12x1", SEED_004, "对于形状为 (22, 1) 的张量减去形状为 (12, 1) 的张量,结果的形状会是 (22, 1)。", numeric=True),
               Claim("22x1-12", SEED_004, "对于形状为 (22, 1) 的张量减去形状为 (12) 的张量,结果的形状会是 (22, 12)。", numeric=True)],
       answer_en="(22,1) − (12,) broadcasts to (22,12); (22,1) − (12,1) raises: 22 ≠ 12 and neither is 1.",
       answer_zh="(22,1) − (12,) 广播为 (22,12);(22,1) − (12,1) 报错:22 ≠ 12 且都不是 1。")
def broadcasting(ctx: Context) -> Result:
    a = torch.randn(22, 1, generator=ctx.generator())
    ok = (a - torch.randn(12, generator=ctx.generator(1))).shape
    try:
        bad = str(tuple((a - torch.randn(12, 1)).shape))
        raised = 0.0
    except RuntimeError as e:
        bad = f"RuntimeError: {str(e).splitlines()[0]}"
        raised = 1.0
    rows = [["(22, 1) - (12,)", str(tuple(ok))], ["(22, 1) - (12, 1)", bad]]
    return Result(
        verdicts={"22x1-12x1": "wrong", "22x1-12": "confirmed"},
        numbers={"rows": ok[0], "cols": ok[1], "raises": raised},
        corrected_en="Broadcasting aligns shapes from the right: (22, 1) vs (12, 1) compares 1 with 1 (fine) and 22 with "
                     "12 (neither is 1), so the subtraction raises; nothing is 'repeated to fit'. (22, 1) vs (12,) → "
                     "(22, 1) vs (1, 12) → (22, 12).",
        corrected_zh="广播从右往左对齐:(22, 1) 与 (12, 1) 先比较 1 与 1(可以),再比较 22 与 12(都不是 1),因此减法报错,"
                     "不存在“重复以适应”。(22, 1) 与 (12,) → (22, 1) 与 (1, 12) → (22, 12)。",
        conclusion_en="The notes' second answer is right, the first is wrong: PyTorch raises for (22, 1) − (12, 1).",
        conclusion_zh="笔记的第二个答案正确,第一个错误:PyTorch 对 (22, 1) − (12, 1) 直接报错。",
        tables=[Table("torch broadcasting", "torch 广播", ["expression", "result"], rows)])


@topic("cross-entropy-kl", theme="numerics",
       question_en="How are cross-entropy and KL divergence related?",
       question_zh="交叉熵与KL散度的含义?",
       claims=[Claim("kl", SEED_000, "KL散度=交叉熵-熵", numeric=True)],
       answer_en="KL(p‖q) = H(p, q) − H(p); with one-hot targets H(p) = 0, so the LM loss is also a KL divergence.",
       answer_zh="KL(p‖q) = H(p, q) − H(p);目标是 one-hot 时 H(p) = 0,所以语言模型损失也是 KL 散度。")
def cross_entropy_kl(ctx: Context) -> Result:
    g = ctx.generator()
    p = torch.softmax(torch.randn(50, generator=g), -1)
    logits = torch.randn(50, generator=g)
    logq = torch.log_softmax(logits, -1)
    ce = float(-(p * logq).sum())
    h = float(-(p * p.log()).sum())
    kl = float(F.kl_div(logq, p, reduction="sum"))
    target = torch.tensor([[7]])
    onehot_ce = float(causal_lm_loss(logits.view(1, 1, 50), target))
    onehot_kl = float(F.kl_div(logq, F.one_hot(torch.tensor(7), 50).float(), reduction="sum"))
    rows = [["soft p", ce, h, kl, ce - h], ["one-hot p (LM target)", onehot_ce, 0.0, onehot_kl, onehot_ce]]
    return Result(
        verdicts={"kl": "confirmed"},
        numbers={"ce": ce, "entropy": h, "kl": kl, "identity_error": abs(kl - (ce - h)),
                 "onehot_ce": onehot_ce, "onehot_kl": onehot_kl},
        corrected_en="", corrected_zh="",
        conclusion_en=f"Measured: H(p,q) − H(p) = {ce - h:.6f} and torch's KL = {kl:.6f}. Since H(p) does not depend on the "
                      "model, minimising cross-entropy minimises KL; for one-hot next-token targets they are equal "
                      "(llmlab's causal_lm_loss is that KL).",
        conclusion_zh=f"实测:H(p,q) − H(p) = {ce - h:.6f},torch 的 KL = {kl:.6f}。H(p) 与模型无关,所以最小化交叉熵就是最小化 KL;"
                      "下一个 token 的目标为 one-hot 时两者相等(llmlab 的 causal_lm_loss 就是该 KL)。",
        tables=[Table("cross-entropy, entropy, KL (nats)", "交叉熵、熵、KL(nats)",
                      ["target p", "H(p,q)", "H(p)", "KL(p||q)", "H(p,q) - H(p)"], rows)])


@topic("mixed-precision", theme="numerics",
       question_en="In mixed-precision training, which ops use fp16 and which stay fp32 — and why is loss scaling needed?",
       question_zh="混合精读训练,哪些层用fp16,哪些层用fp32,例如注意力,MLP,softmax,等",
       claims=[Claim("no-answer", SEED_004, "问题八:混合精读训练,哪些层用fp16,哪些层用fp32,例如注意力,MLP,softmax,等")],
       answer_en="Matmuls (attention projections, MLP) in fp16; softmax, norms, loss and the master weights in fp32; "
                 "fp16 loses gradients below 6e-8 and overflows above 65504, hence dynamic loss scaling.",
       answer_zh="矩阵乘(注意力投影、MLP)用 fp16;softmax、归一化、损失和主权重用 fp32;fp16 中小于 6e-8 的梯度归零、"
                 "超过 65504 溢出,所以需要动态损失缩放。")
def mixed_precision(ctx: Context) -> Result:
    fi = torch.finfo(torch.float16)
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                      max_position_embeddings=32)
    torch.manual_seed(ctx.seed)
    model = Transformer(cfg, attn_backend="explicit")
    x = torch.randint(0, 64, (2, 16), generator=ctx.generator())
    # Where does an fp16 forward keep fp32? Record the dtype each module returns under a half model.
    half = Transformer(cfg, attn_backend="explicit").half()
    half.load_state_dict({k: v.half() for k, v in model.state_dict().items()})
    logits16 = half(x)
    loss16 = causal_lm_loss(logits16, x)
    # Small gradients: the fp32 gradients of a loss shrunk by 1e-4, cast to fp16 with and without scaling.
    (causal_lm_loss(model(x), x) * 1e-4).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    lost_plain = float(((grads.half() == 0) & (grads != 0)).float().mean())
    scaler = LossScaler(init_scale=2.0**16)
    scaled16 = (grads * scaler.scale).half()
    lost_scaled = float(((scaled16 == 0) & (grads != 0)).float().mean())
    # Too large a scale overflows: the scaler skips the step and halves its scale.
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([1.0, 2.0, float("inf"), 3.0])
    big = LossScaler(init_scale=2.0**24)
    stepped = big.unscale_and_check([p])
    rows = [["fp16 max", fi.max], ["fp16 smallest subnormal", 2.0**-24], ["fp16 eps (1 + eps != 1)", fi.eps],
            ["grad entries lost in fp16 without scaling", lost_plain],
            ["grad entries lost in fp16 with scale 2^16", lost_scaled],
            ["fp16 loss dtype from causal_lm_loss", str(loss16.dtype)],
            ["LossScaler on an inf gradient: stepped", str(stepped)],
            ["LossScaler scale after the skip", big.scale]]
    return Result(
        verdicts={"no-answer": "incomplete"},
        numbers={"fp16_max": fi.max, "lost_plain": lost_plain, "lost_scaled": lost_scaled,
                 "loss_fp32": float(loss16.dtype == torch.float32), "skipped": float(not stepped),
                 "scale_after_skip": big.scale},
        corrected_en="The notes ask but give only links. Measured: casting this model's gradients (loss × 1e-4) to fp16 "
                     f"zeroes {lost_plain:.1%} of them; multiplying the loss by 2^16 first loses {lost_scaled:.1%}. "
                     "An inf gradient makes llmlab's LossScaler skip the step and halve the scale (2^24 → 2^23).",
        corrected_zh="笔记只提问、给了链接,没有答案。实测:把本模型的梯度(损失 × 1e-4)转成 fp16,有 "
                     f"{lost_plain:.1%} 变为 0;先把损失乘以 2^16 只损失 {lost_scaled:.1%}。出现 inf 梯度时 llmlab 的 LossScaler "
                     "跳过这一步并把缩放减半(2^24 → 2^23)。",
        conclusion_en="Under autocast, matmuls (Q/K/V/O projections, MLP, LM head) run in fp16/bf16; reductions that "
                      "need range stay fp32: softmax (llmlab's explicit attention computes scores in fp32), norm "
                      "statistics (RMSNorm upcasts), the loss (causal_lm_loss casts logits to fp32), and the optimizer "
                      "with fp32 master weights. fp16 needs loss scaling; bf16 has fp32's range and does not.",
        conclusion_zh="autocast 下矩阵乘(Q/K/V/O 投影、MLP、输出层)用 fp16/bf16;需要数值范围的归约保持 fp32:softmax"
                      "(llmlab 显式注意力以 fp32 计算分数)、归一化统计量(RMSNorm 先转 fp32)、损失(causal_lm_loss 把 logits 转为 fp32)"
                      "以及持有 fp32 主权重的优化器。fp16 需要损失缩放;bf16 与 fp32 范围相同,不需要。",
        tables=[Table("fp16 limits and loss scaling", "fp16 的范围与损失缩放", ["quantity", "value"], rows)])
