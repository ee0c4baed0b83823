"""llmlab explain: every topic's key numbers, the notes' claims and verdicts, the handbook, the CLI.

All topics run once per module (`results` fixture); the handbook is written from those results in
both languages, so the whole file runs the experiments a single time.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from llmlab.cli import main
from llmlab.explain import VERDICTS, Context, all_topics, get_topic, write_handbook
from llmlab.explain.registry import UnknownTopicError

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
if not SEEDS.is_dir():
    SEEDS = Path("/work/shared/seeds")

# Every numeric claim (number, formula, shape or complexity) in the notes that a topic covers:
# (seed file, a verbatim fragment) -> the topic that must classify it.
NUMERIC_CLAIMS = {
    ("001_3e51f2b5132804a1.txt", "4096维度 × 2 × 4 = 2GB"): "kv-cache-7b",
    ("001_3e51f2b5132804a1.txt", "7B × 2字节 = 14GB"): "kv-cache-7b",
    ("001_3e51f2b5132804a1.txt", "激活值:约1-2GB"): "kv-cache-7b",
    ("001_3e51f2b5132804a1.txt", "总计:约17-18GB"): "kv-cache-7b",
    ("001_3e51f2b5132804a1.txt", "3.15×10²³ FLOPs"): "gpt3-training-time",
    ("001_3e51f2b5132804a1.txt", "单卡算力:312 TFLOPS"): "gpt3-training-time",
    ("001_3e51f2b5132804a1.txt", "训练时间:约3-4个月"): "gpt3-training-time",
    ("001_3e51f2b5132804a1.txt", "2 × n_bytes × n_layers × batch_size × n_context × n_heads × d_head"): "kv-cache-formula",
    ("001_3e51f2b5132804a1.txt", "KV缓存:序列长度 × 层数 × 隐藏维度"): "kv-cache-formula",
    ("001_3e51f2b5132804a1.txt", "需要4θ 字节"): "training-memory",
    ("001_3e51f2b5132804a1.txt", "2 4 θ 字节"): "training-memory",
    ("001_3e51f2b5132804a1.txt", "优化器状态:参数量的2-4倍"): "training-memory",
    ("001_3e51f2b5132804a1.txt", "O(N²)降低到O(N)"): "flash-attention-memory",
    ("001_3e51f2b5132804a1.txt", "才能让点积方差为1"): "scale-choice",
    ("001_3e51f2b5132804a1.txt", "可以使得点积的方差为1"): "scaled-dot-product",
    ("000_c954e959f8352d6f.txt", "时间复杂度:O(n^2*d)"): "attention-complexity",
    ("000_c954e959f8352d6f.txt", "KL散度=交叉熵-熵"): "cross-entropy-kl",
    ("000_c954e959f8352d6f.txt", "y(float32格式数据)就会溢出"): "softmax-overflow",
    ("000_c954e959f8352d6f.txt", "将 loss\n乘以常数等价于将学习率乘以相同的常数"): "loss-vs-lr-scaling",
    ("004_801fddf93243d484.txt", "(12, 1) 的张量,结果的形状会是 (22, 1)"): "broadcasting",
    ("004_801fddf93243d484.txt", "(12) 的张量,结果的形状会是 (22, 12)"): "broadcasting",
    ("002_8a7f49e5e726486c.txt", "e^0=1"): "padding-mask",
    ("002_8a7f49e5e726486c.txt", "一般来说-1000就可以"): "padding-mask",
    ("002_8a7f49e5e726486c.txt", "整体计算量和点积相似"): "additive-attention",
    ("003_1d6c1e62189d349b.txt", "GPT-3拥有的1750亿参数"): "gpt3-params",
    ("002_8a7f49e5e726486c.txt", "这种方式的方差是1/embedding size"): "embedding-scale",
}


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


@pytest.fixture(scope="module")
def results():
    return {t.id: (t, t.run(Context())) for t in all_topics()}


def num(results, topic_id: str) -> dict:
    return results[topic_id][1].numbers


# ---- the notes' claims ---------------------------------------------------------------------------


def test_claims_quote_the_notes_verbatim():
    seeds = {p.name: _squash(p.read_text(encoding="utf-8")) for p in SEEDS.glob("*.txt")}
    for t in all_topics():
        for c in t.claims:
            assert _squash(c.quote) in seeds[c.seed], f"{t.id}/{c.id} is not a quote from {c.seed}"


def test_every_numeric_claim_is_classified(results):
    for (seed, fragment), topic_id in NUMERIC_CLAIMS.items():
        assert _squash(fragment) in _squash((SEEDS / seed).read_text(encoding="utf-8")), fragment
        t, r = results[topic_id]
        covering = [c for c in t.claims if _squash(fragment) in _squash(c.quote)]
        assert covering, f"{topic_id} does not quote {fragment!r}"
        for c in covering:
            assert c.numeric, f"{topic_id}/{c.id} quotes a numeric claim but is not marked numeric"
            assert r.verdicts[c.id] in VERDICTS
    # and the other way round: every claim marked numeric is in the inventory above
    inventory = {_squash(f) for _, f in NUMERIC_CLAIMS}
    for t, _ in results.values():
        for c in t.claims:
            if c.numeric:
                assert any(f in _squash(c.quote) for f in inventory), f"{t.id}/{c.id} missing from NUMERIC_CLAIMS"


def test_every_topic_is_bilingual_and_has_a_verdict(results):
    for t, r in results.values():
        assert r.verdict in VERDICTS
        assert t.question_zh and t.answer_zh and r.conclusion_zh and r.conclusion_en
        assert bool(r.corrected_en) == bool(r.corrected_zh)
        assert r.tables, f"{t.id} shows no measurements"


def test_known_verdicts(results):
    expected = {"kv-cache-7b": "wrong", "gpt3-training-time": "wrong", "broadcasting": "wrong",
                "mha-gqa-mqa": "wrong", "inverted-dropout": "wrong", "cross-entropy-kl": "confirmed",
                "scaled-dot-product": "confirmed", "training-memory": "incomplete", "embedding-scale": "wrong",
                "bert-embedding-sum": "confirmed", "alibi-extrapolation": "confirmed", "paged-attention": "incomplete",
                "why-decoder-only": "incomplete", "bpe-vs-wordpiece": "incomplete"}
    for topic_id, verdict in expected.items():
        assert results[topic_id][1].verdict == verdict, topic_id


# ---- key numbers -----------------------------------------------------------------------------------


def test_numerics(results):
    n = num(results, "softmax-overflow")
    assert n["overflow_threshold"] == pytest.approx(88.72, abs=0.01)
    assert n["naive_is_nan"] == 1.0 and n["tiny_prob"] == 0.0
    assert n["attend_expectation"] == pytest.approx(1 / (1 + math.e), rel=1e-5)  # weights (e/(1+e), 1/(1+e), 0)
    n = num(results, "log-softmax")
    assert n["naive_loss_gap200"] == math.inf and n["llmlab_loss_gap200"] == pytest.approx(200.0)
    n = num(results, "broadcasting")
    assert (n["rows"], n["cols"], n["raises"]) == (22, 12, 1.0)
    n = num(results, "cross-entropy-kl")
    assert n["identity_error"] < 1e-5 and n["onehot_ce"] == pytest.approx(n["onehot_kl"], rel=1e-5)
    n = num(results, "mixed-precision")
    assert n["fp16_max"] == 65504.0 and n["lost_plain"] > 0.05 and n["lost_scaled"] < 0.01
    assert n["skipped"] == 1.0 and n["scale_after_skip"] == 2.0**23 and n["loss_fp32"] == 1.0


def test_attention(results):
    n = num(results, "scaled-dot-product")
    for d in (16, 64, 256, 1024):
        assert n[f"var_scaled_{d}"] == pytest.approx(1.0, rel=0.05)
        assert n[f"var_raw_{d}"] == pytest.approx(d, rel=0.05)
    assert n["maxw_raw_1024"] > 0.9 > 0.2 > n["maxw_scaled_1024"]
    assert n["grad_raw_1024"] < 0.5 * n["grad_scaled_1024"]
    n = num(results, "scale-choice")
    assert n["var_1/d_k_256"] == pytest.approx(1 / 256, rel=0.1) and n["entropy_1/d_k_256"] > 0.99
    assert num(results, "multi-head")["params_1"] == num(results, "multi-head")["params_8"]
    # heads that look at different places (W_Q was W_K: every head attended to itself, 4 heads differed by TV 0.03)
    assert num(results, "multi-head")["tv_4"] > 0.5 and num(results, "multi-head")["tv_8"] > 0.5
    n = num(results, "shared-qk")
    assert n["diag_argmax_shared"] > 0.7 > 0.2 > n["diag_argmax_separate"]
    assert num(results, "additive-attention")["mem_ratio_256"] > 10
    t, r = results["additive-attention"]  # the answer said 'd× the memory' (64×) over a measured 17×
    assert "d× the memory" not in t.answer_en or r.numbers["mem_ratio_256"] > 32
    assert "over 10× the bytes" in t.answer_en and "超过 10 倍" in t.answer_zh
    n = num(results, "padding-mask")
    assert n["masked_diff"] < 1e-5 and n["inf_diff"] < 1e-5 and n["m1000_diff"] < 1e-5
    assert n["zero_diff"] > 0.1 and n["unmasked_diff"] > 1e-3
    n = num(results, "attention-complexity")
    assert n["flops_slope"] == pytest.approx(2.0, abs=0.01) and n["memory_slope"] == pytest.approx(2.0, abs=0.01)
    assert n["flops_2048"] == 4 * 2048 * 2048 * 64
    n = num(results, "flash-attention-memory")
    assert n["slope_fused"] == pytest.approx(1.0, abs=0.1) and n["slope_explicit"] > 1.5 and n["max_diff"] < 1e-5
    n = num(results, "mha-gqa-mqa")
    assert (n["kv_gib_MHA"], n["kv_gib_GQA"], n["kv_gib_MQA"]) == (2.0, 0.5, 0.0625)
    assert n["kv_real_gib_GQA"] == n["kv_gib_GQA"] and n["gqa_vs_repeated_mha"] < 1e-6


def test_timings_run_on_one_thread():
    """Two threads on a busy 2-core machine stalled every attend call ~60 ms: attention-complexity printed a time
    slope of 0.1 under its 'slopes ≈ 2' answer, and additive attention measured 0.9× the dot product's time."""
    import torch

    from llmlab.explain.attention import _best_time

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        _best_time(lambda: seen.append(torch.get_num_threads()), repeat=2)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_positions(results):
    n = num(results, "sinusoidal-positions")
    assert n["linear_map_error"] < 1e-4 and n["dot_spread"] < 1e-4
    n = num(results, "rope-relative")
    assert n["shift_spread"] < 1e-3 and n["linear_err"] < 1e-12 and n["norm_err"] < 1e-6
    assert results["rope-relative"][1].verdict == "wrong"


def test_alibi_and_embedding_scale(results):
    n = num(results, "alibi-extrapolation")
    assert n["loss_alibi_256"] < 2 * n["loss_alibi_16"] + 0.2  # ALiBi holds at 16x the trained length
    for pos in ("rope", "learned"):  # fit the trained length, then collapse past the uniform guess
        assert n[f"loss_{pos}_16"] < 0.2 and n[f"loss_{pos}_256"] > n["uniform_loss"]
    assert n["loss_sinusoidal_256"] > n["loss_alibi_256"]
    t, r = results["alibi-extrapolation"]  # sinusoidal never fit 16 tokens (2.70 nats) yet 'failed beyond' them
    if n["loss_sinusoidal_16"] > 1.0:
        assert "sinusoidal" not in t.answer_en and "did not fit even the trained length" in r.conclusion_en
        assert "连训练长度都没拟合" in r.conclusion_zh
    n = num(results, "embedding-scale")
    assert n["xavier_var"] == pytest.approx(n["xavier_formula"], rel=0.02) and n["xavier_var"] < n["notes_var"] / 20
    assert n["pe_norm"] == pytest.approx(16.0, rel=1e-4)  # sqrt(d/2), d = 512
    assert n["ratio_vaswani"] == pytest.approx(1 / 16, rel=0.02) and n["ratio_vaswani_scaled"] == pytest.approx(math.sqrt(2), rel=0.02)


def test_normalization(results):
    n = num(results, "layernorm-vs-batchnorm")
    assert n["ln_change"] < 1e-6 and n["bn_change_pad"] > 0.1 and n["bn_change_partner"] > 0.1
    n = num(results, "pre-ln-vs-post-ln")
    assert n["post_rebound"] > 1.0 > n["pre_rebound"]
    t, r = results["pre-ln-vs-post-ln"]  # the one-line answer claimed post-LN gradients grow toward the output
    if "grow" in t.answer_en or "增大" in t.answer_zh:  # ... under a measured last/first ratio of 1.00
        assert n["post_grad_ratio"] > 1.2
    n = num(results, "residual-gradient")
    assert n["grad_res_24"] > 0.1 and n["grad_nores_24"] < 1e-6 and n["grad_res_24"] > 100 * n["grad_nores_2"] / 100
    for depth, res, nores, ratio in results["residual-gradient"][1].tables[0].rows:  # a gradient of 0 gave 'ratio 7e+29'
        assert ratio == (res / nores if nores else math.inf), depth
    n = num(results, "train-vs-eval")
    assert n["train_diff"] > 0 and n["eval_diff"] == 0 and n["bn_eval_moved"] == 0 and n["bn_train_moved"] > 0
    n = num(results, "inverted-dropout")
    assert n["kept_scale"] == pytest.approx(1 / 0.7, rel=1e-5)
    assert n["err_eval"] < 0.05 and n["err_scaled"] == pytest.approx(0.3, abs=0.02)


def test_memory(results):
    n = num(results, "kv-cache-7b")
    assert n["kv_bytes"] == 4 * 2**30 == n["kv_real_bytes"] and n["kv_gib"] == 4.0
    assert n["notes_kv_elements"] * 2 == n["kv_bytes"]
    n = num(results, "kv-cache-formula")
    assert n["real_MHA"] == n["notes_MHA"] and n["real_GQA"] * 2 == n["notes_GQA"]
    assert n["filled_bytes"] == n["filled_est"]
    # the short form 'seq × layers × hidden' is 2 (K, V) × 2 bytes = 4× too small for one fp16 sequence (it said 8×)
    assert n["short_factor_one_seq"] == 4 == n["real_MHA"] // (2 * 48 * 3 * 32)
    t, r = results["kv-cache-formula"]
    assert "4× too small for one fp16 sequence" in r.corrected_en and "对一条 fp16 序列小了 4 倍" in r.corrected_zh
    n = num(results, "training-memory")
    assert n["bytes_per_param"] == 16 and n["adamw_state_bytes_per_param"] == 8
    n = num(results, "zero-memory")
    assert [round(n[f"zero{k}_gb"], 1) for k in range(4)] == pytest.approx([120.2, 31.4, 16.7, 1.9], abs=0.15)
    assert num(results, "gpt3-params")["params"] == 174_604_259_328
    n = num(results, "gpt3-training-time")
    assert n["days"] == pytest.approx(38.9, abs=0.1) and n["flops"] == pytest.approx(3.14e23, rel=0.01)


def test_training(results):
    n = num(results, "loss-vs-lr-scaling")
    assert n["SGD"] < 1e-4 and n["SGD momentum 0.9"] < 1e-4
    assert n["SGD + weight decay 0.1"] > 0.1 and n["SGD + clip 0.1"] > 0.1
    assert n["Adam (llmlab AdamW, wd 0) vs base"] < 0.01 and n["Adam (llmlab AdamW, wd 0)"] > 1.0
    n = num(results, "gradient-accumulation")
    assert max(n["rel_diff_2"], n["rel_diff_4"], n["rel_diff_8"]) < 1e-5 and n["rel_diff_masked"] > 0.01
    n = num(results, "lr-warmup-and-dropout")
    assert n["lr_first"] == pytest.approx(0.1 / 15) and n["lr_peak"] == 0.1 and n["lr_last"] == pytest.approx(0.01)
    assert n["first_step_median_over_lr"] == pytest.approx(1.0, abs=0.05)  # Adam's first step: ±lr per weight
    high = (n["final_0.1_constant"], n["final_0.1_cosine, no warmup"])
    assert min(high) > 0.5 > 0.05 > n["final_0.1_warmup 15 + cosine"] and n["final_0.03_constant"] < 0.05
    assert n["dropout_sites"] == 3 and n["attn_dropout_layers"] == 2 and n["dropout_zeroed_eval"] == 0
    assert n["dropout_zeroed_mean"] == pytest.approx(0.1, abs=0.01)


def test_tokenization_and_sampling(results):
    n = num(results, "bpe-vs-wordpiece")
    assert n["tokens_per_word_BPE_2000"] < n["tokens_per_word_BPE_500"]  # vocabulary size vs sequence length
    assert n["tokens_per_word_WordPiece_2000"] < n["tokens_per_word_WordPiece_500"]
    assert n["wp_unk_fraction_zh"] == 1.0 and n["bpe_roundtrip_zh"] == 1.0  # unseen characters: [UNK] vs bytes
    assert n["bpe_roundtrip_probe"] == 1.0 and n["wp_roundtrip_probe"] == 0.0 and n["deterministic"] == 1.0
    n = num(results, "token-counts")
    for kind in ("English", "code"):  # a bigger vocabulary over the same English corpus: fewer tokens
        assert n[f"{kind}_English BPE, 2048"] < n[f"{kind}_English BPE, 512"] < n[f"{kind}_bytes"]
    assert n["English_spread"] > 1.3
    # no Chinese merges: one token per UTF-8 byte (3 per Chinese character); Chinese in the corpus: fewer
    assert n["Chinese_English BPE, 512"] == n["Chinese_English BPE, 2048"] == n["Chinese_bytes"] == 3 * 37 + 8
    assert n["zh_ratio"] > 1.3
    assert n["chat_tokens"] == n["text_tokens"] + n["chat_overhead"] and n["chat_overhead"] >= 6
    n = num(results, "temperature-top-k-top-p")
    for shape in ("peaked", "flat"):
        assert n[f"support_{shape}_T = 0.5"] == n[f"support_{shape}_T = 2"] == 50 and n[f"support_{shape}_top-k 5"] == 5
        assert n[f"entropy_{shape}_T = 0.5"] < n[f"entropy_{shape}_T = 1"] < n[f"entropy_{shape}_T = 2"]
    assert n["support_peaked_top-p 0.9"] < n["support_flat_top-p 0.9"]  # top-p adapts, top-k does not
    for name in ("T = 1", "T = 2", "top-k 5", "top-p 0.9"):
        assert n[f"tv_{name}"] < n["tv_noise_bound"] and n[f"outside_{name}"] == 0 == n[f"ref_outside_{name}"]
    assert n["greedy_is_argmax"] == 1.0
    n = num(results, "repetition")
    assert n["rep4_greedy"] > 0.3 and n["loops_greedy"] >= 3  # greedy on a random model loops
    for name in ("greedy + repetition_penalty 1.2", "greedy + presence_penalty 0.5", "greedy + frequency_penalty 0.5",
                 "T = 0.7", "T = 1"):
        assert n[f"rep4_{name}"] < n["rep4_greedy"] / 3 and n[f"loops_{name}"] <= 1, name
        assert n[f"distinct_{name}"] > n["distinct_greedy"], name
    # repetition_penalty reaches the prompt (2 / 1.2); presence/frequency only the output
    assert n["prompt_logit_greedy + repetition_penalty 1.2"] == pytest.approx(2 / 1.2)
    assert n["prompt_logit_greedy + presence_penalty 0.5"] == 2.0 == n["prompt_logit_greedy + frequency_penalty 0.5"]


def test_architecture_and_serving(results):
    n = num(results, "encoder-vs-decoder-masks")
    assert (n["causal_pairs"], n["bi_pairs"]) == (36, 64) and n["causal_is_lower"] == n["model_is_lower"] == 1.0
    assert n["diagonal_seen"] == 1.0 and n["parallel_diff"] < 1e-10
    n = num(results, "why-decoder-only")
    for hd in (4, 16, 64):
        assert n[f"causal_upper_{hd}"] == 0.0 and n[f"causal_diag_min_{hd}"] > 0  # triangular, det > 0: full rank
    assert n["rank_bidirectional_4"] < 0.5 * n["rank_causal_4"]  # head_dim << n: bidirectional loses rank
    assert n["rank_bidirectional_64"] >= n["rank_causal_64"]  # ... and not when head_dim is large
    assert n["prefix_change_causal"] == 0.0 and n["prefix_change_bidirectional"] > 0.01
    assert n["cached_vs_full"] < 1e-4 and (n["positions_cached"], n["positions_full"]) == (79, 3040)
    n = num(results, "bert-embedding-sum")
    assert n["onehot_diff"] < 1e-12 and n["concat_identity_diff"] < 1e-12 and n["reparam_diff"] < 1e-10
    n = num(results, "paged-attention")
    assert n["paged_slots"] - n["tokens"] < 64 * 16 and n["max_waste_per_seq"] <= 15
    assert n["contiguous_waste"] > 0.5 and n["paged_waste"] < 0.05
    assert n["capacity_paged"] > 2 * n["capacity_contiguous"] and n["prefix_saving"] > 0.5
    # caching off and on serve the same 32 requests: the 31 later ones reuse the system prompt's 512 / 16 blocks
    assert n["prefix_blocks_plain"] - n["prefix_blocks_cached"] == 31 * 512 // 16
    n = num(results, "continuous-batching")
    assert n["steps_static"] == n["steps_static_formula"]  # each static batch lasts as long as its longest request
    assert n["steps_lower_bound"] <= n["steps_continuous"] < n["steps_static"] / 1.3
    assert n["idle_continuous"] < n["idle_static"] and n["tokens_per_step_continuous"] > n["tokens_per_step_static"]
    assert n["mean_finish_continuous"] < 0.7 * n["mean_finish_static"]
    assert n["tokens_per_step_static"] * n["steps_static"] == pytest.approx(n["tokens"])


# ---- handbook and CLI ------------------------------------------------------------------------------


def test_handbook_builds_in_both_languages(results, tmp_path):
    paths = write_handbook(tmp_path, results=list(results.values()))
    assert [p.name for p in paths] == ["handbook.en.md", "handbook.zh.md"]
    en, zh = (p.read_text(encoding="utf-8") for p in paths)
    for t, r in results.values():
        assert f'<a id="{t.id}"></a>' in en and t.question_zh in zh
        for c in t.claims:
            assert c.quote in zh
    assert "| [kv-cache-7b](#kv-cache-7b) |" in en and "错误" in zh and "wrong" in en
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "scaled-dot-product.png" in pngs and all(f"plots/{p}" in en for p in pngs)


def test_cli_lists_runs_and_rejects(capsys, tmp_path):
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert all(t.id in out for t in all_topics())
    assert main(["explain", "broadcasting", "--lang", "zh", "--plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[错误]" in out and "(22, 12)" in out and "22x1维度的tensor减去12维度的tensor形状是多少" in out
    assert main(["explain", "kv-cache"]) == 2
    err = capsys.readouterr().err
    assert "no topic named 'kv-cache'" in err and "kv-cache-7b" in err
    assert main(["explain", "--all"]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(UnknownTopicError):
        get_topic("softmax-overflw-nope-zzz")
