"""`llmlab chat`: talk to a model through the engine, streaming the reply as it is generated.

    llmlab chat --model smollm2-135m                      # interactive; an empty line, /exit or Ctrl-D ends
    llmlab chat --model DIR --message "Hi" --max-tokens 64   # one turn, for scripts
    llmlab chat --compile                                 # compiled decode step: slow to start, faster after

When the conversation outgrows the model's context, its oldest turns are dropped (the system message
stays) so that a reply has at least a quarter of the context; a reply that reaches the context ends
there (finish reason "length"). In an interactive chat, Ctrl-C during a reply stops that reply (what was
shown stays in the conversation) and the prompt comes back; Ctrl-C at the prompt ends the chat.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys
import threading


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model (engine, streaming)",
                       description="Chat with a model through llmlab's engine, using the model's chat template. "
                                   "Interactive unless --message is given: an empty line, /exit, /quit or Ctrl-D "
                                   "ends the conversation.")
    p.add_argument("--model", default="smollm2-135m",
                   help="HF model directory, .gguf file, or registry name (default: smollm2-135m)")
    p.add_argument("--message", action="append", help="a user message; skips the interactive prompt (repeatable)")
    p.add_argument("--system", help="a system message to start the conversation with")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="most new tokens in one reply (default: 256, or less where the model's context is shorter)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, 0 = greedy (default: the model's generation_config.json, else 0.7)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the fewest tokens whose probabilities sum to this, in (0, 1] (default: the "
                        "model's generation_config.json, else 0.95)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of this chat's sampling (default: none, so each run samples differently)")
    p.add_argument("--dtype", default=None,
                   help="float32 | bfloat16 | float16 | auto (default auto: fp32 on CPU; on CUDA the checkpoint's "
                        "16-bit dtype, bf16 for an fp32 one, fp16 on GPUs without bf16)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step: faster replies after a one-off compile before the first "
                        "prompt (about a minute for SmolLM2-135M on two CPU cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from llmlab.engine.llm import LLM
    from llmlab.engine.sequence import RequestError
    from llmlab.errors import TokenizerError

    # Bad settings are refused before the model loads (seconds), named by their flags.
    if args.temperature is not None and not 0 <= args.temperature < float("inf"):
        raise RequestError(f"--temperature must be a finite number >= 0 (0 is greedy), got {args.temperature}.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise RequestError(f"--top-p must be in (0, 1], got {args.top_p}; 1 keeps every token.")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise RequestError(f"--max-tokens must be at least 1, got {args.max_tokens}.")
    if args.message and not all(m.strip() for m in args.message):
        raise RequestError("--message is empty; give the text to send (an empty line ends an interactive chat).")
    # Loading and starting the engine (weights, tokenizer, timing the CPU kernels) takes seconds to tens of
    # seconds on a CPU: say so on stderr, so the wait before the first prompt is not silence.
    print(f"loading {args.model} and starting the engine...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    llm = LLM(args.model, dtype=args.dtype, max_num_seqs=1, compile_decode=args.compile)
    if llm.tokenizer is None:
        raise RequestError(f"{args.model} has no tokenizer to chat with; use `llmlab generate --ids` instead.")
    if llm.tokenizer.chat_template is None:
        raise RequestError(f"{args.model}'s tokenizer has no chat template (a base model?); use `llmlab generate "
                           "--prompt` instead, or add a chat_template to its tokenizer_config.json.")
    if args.max_tokens is None:  # a default the context cannot hold is not the user's to fix: replies end there
        args.max_tokens = min(256, llm.engine.max_model_len - 1)
    params = _sampling(llm, args)
    if args.max_tokens >= llm.engine.max_model_len:
        raise RequestError(f"--max-tokens {args.max_tokens} leaves no room for a prompt in the model's "
                           f"{llm.engine.max_model_len}-token context; lower it.")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if messages:  # a system message that fills the context alone would refuse every message, each blamed in turn
        try:
            alone = len(llm.tokenizer.apply_chat_template([*messages, {"role": "user", "content": ""}],
                                                          add_generation_prompt=True))
        except TokenizerError:  # a template that refuses an empty message: the first turn shows what it refuses
            alone = 0
        if alone >= llm.engine.max_model_len:
            raise RequestError(f"--system makes a {alone}-token prompt by itself, and the model's context is "
                               f"{llm.engine.max_model_len} tokens; give a shorter system message.")
    if args.compile:  # the one-off compile now, not in the middle of the first reply's text
        from llmlab.engine.sequence import SamplingParams

        llm.generate([llm.tokenizer.encode("Hello") or [0]], SamplingParams(temperature=0, max_tokens=2,
                                                                              ignore_eos=True), use_tqdm=False)
    interactive = not args.message
    print(f"ready in {time.perf_counter() - t0:.0f}s" + (
        "; type a message (an empty line, /exit or Ctrl-D ends)" if interactive else ""), file=sys.stderr, flush=True)
    turns = _read_turns() if interactive else iter(args.message)
    for user in turns:
        messages.append({"role": "user", "content": user})
        try:
            ids = _fit_history(llm, messages)
            reply = _stream_reply(llm, ids, params, interruptible=interactive)
        except RequestError as e:
            if not interactive:
                raise
            messages.pop()  # this message cannot be answered; the conversation goes on without it
            print(f"error: {e}", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": reply})
    return 0


def _sampling(llm, args: argparse.Namespace):
    """The reply's sampling: the flags given, else what the model's generation_config.json recommends (as vLLM and
    transformers take it: Qwen3's temperature 0.6, top_p 0.95, top_k 20), else temperature 0.7 and top_p 0.95."""
    from llmlab.engine.sequence import SamplingParams

    given, model = llm._sampling_defaults, llm.get_default_sampling_params()  # the file's keys, validated values
    recommended = {k: getattr(model, k) for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
                   if k in given}
    chosen = {**{"temperature": 0.7, "top_p": 0.95}, **recommended,
              **{k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v is not None}}
    seed = args.seed if args.seed is not None else random.randrange(2**31)  # a new chat, new samples (llama.cpp)
    return SamplingParams(**chosen, max_tokens=args.max_tokens, seed=seed)


def _fit_history(llm, messages: list[dict]) -> list[int]:
    """The rendered conversation, its oldest turns dropped (the system message kept) until it leaves room in the
    model's context for a reply of at least a quarter of it; a note says how many were dropped. A message that
    does not fit even alone is refused with the conversation left as it was."""
    from llmlab.engine.sequence import RequestError

    context = llm.engine.max_model_len
    system = messages[:1] if messages[0]["role"] == "system" else []
    whole, messages = messages, list(messages)  # dropped turns are written back only if the reply can be made
    dropped = 0
    while True:
        # the prompt as LLM.chat renders it (no assistant mask: that is for training, and history-rewriting
        # templates, which drop earlier turns' reasoning, would only warn about it here)
        ids = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if len(ids) <= context * 3 // 4 or len(messages) == len(system) + 1:
            break
        del messages[len(system):len(system) + 2]  # the oldest user message and its reply
        dropped += 2
    if len(ids) >= context:
        raise RequestError(f"this message makes a {len(ids)}-token prompt, and the model's context is {context} "
                           "tokens; send a shorter message.")
    if dropped:
        print(f"(dropped the {dropped} oldest messages to fit the model's {context}-token context)", file=sys.stderr)
        whole[:] = messages
    return ids


EXIT_COMMANDS = ("/exit", "/quit")  # as other chat CLIs; never sent to the model


def _read_turns():
    # The prompt only for a person at a terminal: with stdin piped, stdout carries just the replies, one per turn
    # (input() would write "you> " in front of each, into whatever reads the output).
    prompt = "you> " if sys.stdin.isatty() else ""
    while True:
        try:
            line = input(prompt).strip()
        except EOFError:
            return
        if not line or line.lower() in EXIT_COMMANDS:
            return
        yield line


def _stream_reply(llm, ids: list[int], params, *, interruptible: bool = False) -> str:
    """Stream one reply to stdout; return its text. `interruptible`: Ctrl-C stops this reply after the engine's
    current step (the request is aborted, its blocks freed) and returns what was shown, instead of ending the
    chat; a KeyboardInterrupt raised inside a step could leave the engine's bookkeeping half done."""
    engine = llm.engine
    engine.add_request("chat", ids, params)
    shown, last = "", None
    with _ctrl_c_stops() if interruptible else contextlib.nullcontext(threading.Event()) as stop:
        while engine.has_unfinished_requests():
            for out in engine.step():
                text = out.outputs[0].text
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown, last = text, out.outputs[0]
            if stop.is_set():
                engine.abort("chat")
                break
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stop.is_set() and (last is None or last.finish_reason is None):  # (Ctrl-C in its last step: it was done)
        print("(reply stopped; Ctrl-C at the prompt ends the chat)", file=sys.stderr)
    elif last is not None and last.finish_reason == "length":  # cut, not finished: say by what
        print(f"(reply cut at --max-tokens {params.max_tokens}; raise it for longer replies)"
              if len(last.token_ids) >= params.max_tokens else
              "(reply cut at the end of the model's context; start a new chat for more room)", file=sys.stderr)
    return shown


@contextlib.contextmanager
def _ctrl_c_stops():
    """While inside: the first SIGINT sets the yielded event (the caller stops at its next check); a second one
    interrupts as usual. Outside the main thread (no signal handlers there) Ctrl-C keeps its usual meaning."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
