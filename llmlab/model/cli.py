"""`llmlab generate`: load a model (HF directory, .gguf or registry name) and continue a prompt."""

from __future__ import annotations

import argparse
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
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from llmlab.errors import LlmlabError
    from llmlab.model.pretrained import from_pretrained

    if (args.prompt is None) == (args.ids is None):
        raise LlmlabError("pass exactly one of --prompt TEXT or --ids 1,2,3.")
    if args.max_new_tokens < 1:
        raise LlmlabError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if args.temperature == 0 and (args.top_k is not None or args.top_p is not None):
        raise LlmlabError("--top-k and --top-p shape sampling, and --temperature 0 (the default) is greedy; set "
                          "--temperature > 0 to sample, or drop them.")
    if args.prompt is not None and not args.prompt:
        raise LlmlabError("the prompt is empty; pass some text with --prompt (or ids with --ids).")
    model = from_pretrained(args.model, dtype=args.dtype)
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
        ids = tok.encode(args.prompt)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    out = model.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, generator=gen)
    dt = time.perf_counter() - t0
    new = out[0, len(ids):].tolist()
    ended = bool(new) and new[-1] in model.cfg.eos_ids
    # special tokens (the EOS that ended it) are not text, as in the engine and `llmlab chat`; ids show them all
    print(tok.decode(new, skip_special_tokens=True) if tok is not None else ",".join(map(str, new)))
    print(f"[{len(new)} tokens in {dt:.2f}s, {len(new) / dt:.1f} tok/s{'; stopped at EOS' if ended else ''}]")
    return 0


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
