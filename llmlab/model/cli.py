"""`llmlab generate`: load a model (HF directory, .gguf or registry name) and continue a prompt.

The continuation comes from llmlab's engine (one sequence, a KV cache sized to the prompt plus the new tokens),
the path `llmlab chat` and `LLM.generate` take: SmolLM2-135M in fp32 decoded at 24-29 tokens/s there against 9-12
through the model's own contiguous-cache `generate` (2-core Zen 3, alternating runs). ALiBi models, which the
engine's paged attention does not implement, run through the model's `generate`, and the stats line says so.
"""

from __future__ import annotations

import argparse
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a model",
                       description="Load a model and continue a prompt (greedy unless --temperature > 0).")
    p.add_argument("--model", default="smollm2-135m",
                   help="HF model directory, .gguf file, or registry name (default: smollm2-135m)")
    p.add_argument("--prompt", help="text prompt (needs the model's tokenizer)")
    p.add_argument("--ids", help="comma-separated prompt token ids instead of text")
    p.add_argument("--max-new-tokens", "--max-tokens", dest="max_new_tokens", type=int, default=32,
                   help="tokens to generate (default 32; --max-tokens as in `llmlab chat`)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature, 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample from the k most likely tokens, >= 1 (default: all; needs --temperature > 0)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the fewest tokens whose probabilities sum to this, in (0, 1] (default: 1; "
                        "needs --temperature > 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--dtype", default="float32",
                   help="float32 | bfloat16 | float16 | auto; default float32 (this command runs on the CPU, where auto "
                        "is float32 too; bfloat16 halves the memory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmlab.errors import LlmlabError
    from llmlab.model.pretrained import from_pretrained

    if (args.prompt is None) == (args.ids is None):
        raise LlmlabError("pass exactly one of --prompt TEXT or --ids 1,2,3.")
    if args.max_new_tokens < 1:
        raise LlmlabError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if not 0 <= args.temperature < float("inf"):
        raise LlmlabError(f"--temperature must be a finite number >= 0 (0 is greedy), got {args.temperature}.")
    if args.temperature == 0 and (args.top_k is not None or args.top_p is not None):
        raise LlmlabError("--top-k and --top-p shape sampling, and --temperature 0 (the default) is greedy; set "
                          "--temperature > 0 to sample, or drop them.")
    if args.top_k is not None and args.top_k < 1:
        raise LlmlabError(f"--top-k must be at least 1, got {args.top_k}; leave it out to keep every token.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise LlmlabError(f"--top-p: top_p must be in (0, 1], got {args.top_p}; leave it out to keep every token.")
    if args.prompt is not None and not args.prompt:
        raise LlmlabError("the prompt is empty; pass some text with --prompt (or ids with --ids).")
    model = from_pretrained(args.model, dtype="float32" if args.dtype == "auto" else args.dtype)
    if args.ids is not None:
        try:
            ids = [int(x) for x in args.ids.split(",") if x.strip()]
        except ValueError:
            raise LlmlabError(f"--ids must be comma-separated integers, got {args.ids!r}.") from None
        if not ids:
            raise LlmlabError("--ids holds no token ids; pass some, e.g. --ids 1,2,3.")
        tok = None
    else:
        tok = _load_tokenizer(args.model)
        ids = tok.encode(args.prompt, allowed_special="all", add_special_tokens=True)  # as LLM.generate encodes
    limit = model.cfg.max_position_embeddings
    if len(ids) + args.max_new_tokens > limit:
        raise LlmlabError(f"a prompt of {len(ids)} tokens plus {args.max_new_tokens} new ones is beyond the model's "
                          f"{limit} positions; shorten the prompt or ask for fewer new tokens.")
    if model.cfg.position == "alibi":
        new, ended, dt = _model_generate(model, ids, args)
        how = "; the model's own generate (the engine has no ALiBi)"
    else:
        new, ended, dt = _engine_generate(model, tok, ids, args)
        how = ""
    # special tokens (the EOS that ended it) are not text, as in the engine and `llmlab chat`; ids show them all
    print(continuation_text(tok, new) if tok is not None else ",".join(map(str, new)))
    # on stderr: `llmlab generate ... > out.txt` keeps only the text
    print(f"[{len(new)} tokens in {dt:.2f}s, {len(new) / dt:.1f} tok/s{'; stopped at EOS' if ended else ''}{how}]",
          file=sys.stderr)
    return 0


def _engine_generate(model, tok, ids: list[int], args: argparse.Namespace) -> tuple[list[int], bool, float]:
    """The continuation through the engine: (new ids, ended at EOS, seconds generating)."""
    from llmlab.engine.llm import LLM
    from llmlab.engine.sequence import SamplingParams

    total, block = len(ids) + args.max_new_tokens, 16
    llm = LLM(model, tokenizer=tok, max_num_seqs=1, max_model_len=total, block_size=block,
              num_blocks=-(-total // block), enable_prefix_caching=False)
    sampling = args.temperature > 0
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k or 0, top_p=args.top_p or 1.0,
                            seed=args.seed if sampling else None, max_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    out = llm.generate([ids], params)[0].outputs[0]
    return list(out.token_ids), out.finish_reason == "stop", time.perf_counter() - t0


def _model_generate(model, ids: list[int], args: argparse.Namespace) -> tuple[list[int], bool, float]:
    """The continuation through the model's own contiguous-cache generate (ALiBi models)."""
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    out = model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, generator=gen)
    dt = time.perf_counter() - t0
    new = out[0, len(ids):].tolist()
    return new, bool(new) and new[-1] in model.cfg.eos_ids, dt


def continuation_text(tok, new: list[int]) -> str:
    """The text of generated ids as it continues the prompt (as the engine streams it): a SentencePiece tokenizer's
    decode() drops the leading space of a text's first token, which here is the space after the prompt."""
    if not tok.byte_level:
        return tok.decode(new, skip_special_tokens=True)
    special = set(tok.special_tokens.values())
    return tok.decode_bytes([i for i in new if i not in special]).decode("utf-8", "replace")


def _load_tokenizer(model: str):
    from llmlab import artifacts
    from llmlab.errors import LlmlabError

    try:
        from llmlab.tokenizer import load_tokenizer
    except ImportError:
        raise LlmlabError("text prompts need llmlab's tokenizer, which is not installed; use --ids.") from None
    from llmlab.errors import TokenizerError

    try:
        return load_tokenizer(artifacts.resolve(model))
    except TokenizerError as e:
        raise TokenizerError(f"--prompt needs the model's tokenizer, and {e.args[0].rstrip('.').split(';')[0]}; "
                             "give token ids with --ids instead.") from None
