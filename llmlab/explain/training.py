"""Training mechanics: is loss ÷ 10 the same as learning rate ÷ 10, and is gradient accumulation
the same as a bigger batch?

Optimizers are llmlab's `AdamW` (weight_decay=0 is Adam) and `torch.optim.SGD`; accumulation is
llmlab's `accumulate_gradients`, the function the training loop calls.
"""

from __future__ import annotations

import torch

from llmlab.explain.normalization import _tiny, mapping_task
from llmlab.explain.registry import SEED_000, SEED_004, Claim, Context, Result, Table, topic
from llmlab.model.transformer import Transformer
from llmlab.train.loop import accumulate_gradients
from llmlab.train.optim import AdamW


def _trajectory(ctx: Context, make_opt, *, loss_scale: float, clip: float, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(ctx.seed)
    model = Transformer(_tiny(num_layers=1))
    opt = make_opt(model.parameters())
    for s in range(steps):
        x, y = mapping_task(ctx, 4, 8, offset=s)
        (model.loss(x, y) * loss_scale).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@topic("loss-vs-lr-scaling", theme="training",
       question_en="Is dividing the loss by 10 the same as dividing the learning rate by 10?",
       question_zh="深度网络中loss除以10和学习率除以10等价吗?",
       claims=[Claim("adaptive", SEED_000, "对于带有自适应学习率的优化器(如Adam、RMSprop), loss\n缩放与学习率调整并不等价。"),
               Claim("sgd", SEED_000, "对于经典的SGD和Momentum SGD,将 loss\n乘以常数等价于将学习率乘以相同的常数。", numeric=True)],
       answer_en="SGD/momentum: equivalent (without weight decay or clipping). Adam/AdamW: loss ÷ 10 does almost nothing (scale-invariant up to ε), lr ÷ 10 shrinks every step.",
       answer_zh="SGD/动量:等价(无权重衰减、无裁剪时)。Adam/AdamW:loss ÷ 10 几乎不起作用(除 ε 外尺度不变),lr ÷ 10 使每步缩小。")
def loss_vs_lr(ctx: Context) -> Result:
    lr = 0.05
    cases = [
        ("SGD", lambda lr_: (lambda ps: torch.optim.SGD(ps, lr=lr_)), 0.0),
        ("SGD momentum 0.9", lambda lr_: (lambda ps: torch.optim.SGD(ps, lr=lr_, momentum=0.9)), 0.0),
        ("SGD + weight decay 0.1", lambda lr_: (lambda ps: torch.optim.SGD(ps, lr=lr_, weight_decay=0.1)), 0.0),
        ("SGD + clip 0.1", lambda lr_: (lambda ps: torch.optim.SGD(ps, lr=lr_)), 0.1),
        ("Adam (llmlab AdamW, wd 0)", lambda lr_: (lambda ps: AdamW(ps, lr=lr_ / 50, weight_decay=0.0)), 0.0),
        ("AdamW wd 0.1 (llmlab)", lambda lr_: (lambda ps: AdamW(ps, lr=lr_ / 50, weight_decay=0.1)), 0.0),
        ("Adam, eps 1e-2 (llmlab)", lambda lr_: (lambda ps: AdamW(ps, lr=lr_ / 50, eps=1e-2, weight_decay=0.0)), 0.0),
    ]
    rows, nums = [], {}
    for name, factory, clip in cases:
        start = _trajectory(ctx, factory(lr), loss_scale=1.0, clip=clip, steps=0)
        base = _trajectory(ctx, factory(lr), loss_scale=1.0, clip=clip)
        loss_div = _trajectory(ctx, factory(lr), loss_scale=0.1, clip=clip)
        lr_div = _trajectory(ctx, factory(lr / 10), loss_scale=1.0, clip=clip)
        moved = float((lr_div - start).norm())
        rel = float((loss_div - lr_div).norm()) / moved
        rel_base = float((loss_div - base).norm()) / float((base - start).norm())
        rows.append([name, rel, rel_base])
        nums[name] = rel
        nums[name + " vs base"] = rel_base
    return Result(
        verdicts={"adaptive": "confirmed", "sgd": "incomplete"},
        numbers=nums,
        corrected_en="For plain and momentum SGD the two runs coincide to float rounding, as the notes say — but only "
                     f"without extras: with weight decay they differ by {nums['SGD + weight decay 0.1']:.0%} of the distance "
                     "moved (the decay term λ·θ is not scaled by the loss), and with gradient clipping by "
                     f"{nums['SGD + clip 0.1']:.0%} (clipping acts on the scaled gradient). For Adam, loss ÷ 10 leaves the "
                     f"trajectory where the unscaled run goes (off by {nums['Adam (llmlab AdamW, wd 0) vs base']:.1e} of "
                     "its movement) because m/√v cancels the scale; only ε breaks that when it is large "
                     f"({nums['Adam, eps 1e-2 (llmlab) vs base']:.0%} with ε = 1e-2).",
        corrected_zh="普通 SGD 与动量 SGD 下两种做法在浮点误差内重合,与笔记一致——但仅限于没有附加项时:加权重衰减后两者相差移动距离的 "
                     f"{nums['SGD + weight decay 0.1']:.0%}(衰减项 λ·θ 不随 loss 缩放),加梯度裁剪后相差 {nums['SGD + clip 0.1']:.0%}"
                     "(裁剪作用在缩放后的梯度上)。对 Adam,loss ÷ 10 的轨迹与不缩放时相同(差距为其移动距离的 "
                     f"{nums['Adam (llmlab AdamW, wd 0) vs base']:.1e}),因为 m/√v 抵消了缩放;只有 ε 较大时才打破这一点"
                     f"(ε = 1e-2 时 {nums['Adam, eps 1e-2 (llmlab) vs base']:.0%})。",
        conclusion_en="The notes are right about Adam and about SGD in the textbook setting, and incomplete: weight decay, "
                      "gradient clipping (and loss-scaled fp16 without unscaling) break the SGD equivalence.",
        conclusion_zh="笔记对 Adam 以及教科书设定下的 SGD 的判断正确,但不完整:权重衰减、梯度裁剪(以及未反缩放的 fp16 损失缩放)都会破坏 SGD 的等价性。",
        tables=[Table("5 steps of a 1-layer llmlab model: loss ÷ 10 vs lr ÷ 10", "1 层 llmlab 模型训练 5 步:loss ÷ 10 与 lr ÷ 10",
                      ["optimizer", "‖θ(loss÷10) − θ(lr÷10)‖ / ‖θ(lr÷10) − θ₀‖", "‖θ(loss÷10) − θ(base)‖ / ‖θ(base) − θ₀‖"], rows)])


@topic("gradient-accumulation", theme="training",
       question_en="What does gradient accumulation solve, and is it the same as a larger batch?",
       question_zh="梯度累加是解决什么问题?",
       claims=[Claim("memory", SEED_004, "内存限制: 在训练大模型时,尤其是当批量大小(batch size)过大时,可能会超出显存限制。通过将多个小批次的梯度累加,允许使用较小的批量进行训练,同时保持较大的有效批量大小。")],
       answer_en="k micro-batches with loss/k give the gradient of the k× batch (measured to 1e-7) while holding activations for one micro-batch.",
       answer_zh="k 个微批次、每个损失除以 k,得到的梯度等于 k 倍 batch 的梯度(实测误差 1e-7),而只需保存一个微批次的激活。")
def gradient_accumulation(ctx: Context) -> Result:
    torch.manual_seed(ctx.seed)
    model = Transformer(_tiny())
    x, y = mapping_task(ctx, 8, 16)
    rows, nums = [], {}

    def grads():
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
        return g

    accumulate_gradients(model, [(x, y)], device="cpu", precision="fp32")
    big = grads()
    for k in (2, 4, 8):
        micro = list(zip(x.chunk(k), y.chunk(k)))
        accumulate_gradients(model, micro, device="cpu", precision="fp32")
        diff = float((grads() - big).abs().max() / big.abs().max())
        rows.append([f"{k} micro-batches of {8 // k}", diff])
        nums[f"rel_diff_{k}"] = diff
    # Unequal token counts (ignored labels) break it: the mean of means is not the token mean.
    y_masked = y.clone()
    y_masked[:4, 4:] = -100  # the first half of the batch has far fewer target tokens
    accumulate_gradients(model, [(x, y_masked)], device="cpu", precision="fp32")
    big_m = grads()
    accumulate_gradients(model, list(zip(x.chunk(2), y_masked.chunk(2))), device="cpu", precision="fp32")
    nums["rel_diff_masked"] = float((grads() - big_m).abs().max() / big_m.abs().max())
    rows.append(["2 micro-batches, unequal target counts (-100 labels)", nums["rel_diff_masked"]])
    return Result(
        verdicts={"memory": "confirmed"},
        numbers=nums,
        corrected_en="", corrected_zh="",
        conclusion_en="llmlab's accumulate_gradients divides each micro-batch loss by their number, so k micro-batches "
                      f"reproduce the big batch's gradient (max relative difference {max(nums['rel_diff_2'], nums['rel_diff_4'], nums['rel_diff_8']):.1e}) "
                      "with one micro-batch of activations in memory — the notes' first point. It is exact only when every "
                      f"micro-batch has the same number of target tokens (unequal: {nums['rel_diff_masked']:.0%}) and no "
                      "layer uses batch statistics (BatchNorm).",
        conclusion_zh="llmlab 的 accumulate_gradients 把每个微批次的损失除以微批次数,因此 k 个微批次得到的梯度与大 batch 相同"
                      f"(最大相对差 {max(nums['rel_diff_2'], nums['rel_diff_4'], nums['rel_diff_8']):.1e}),而内存中只需一个微批次的激活"
                      f"——即笔记的第一点。只有在每个微批次的目标 token 数相同(不相同时差 {nums['rel_diff_masked']:.0%})且没有使用批统计量的层"
                      "(BatchNorm)时才严格相等。",
        tables=[Table("gradient of a batch of 8 vs accumulated micro-batches", "batch 8 的梯度与累加微批次的梯度",
                      ["accumulation", "max |Δg| / max |g|"], rows)])
