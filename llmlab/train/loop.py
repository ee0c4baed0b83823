"""The one training loop. Objectives are functions; precision, recompute and compile are switches.

    result = train(cfg)            # TrainConfig -> TrainResult
    result = train(cfg, resume=True)

Per optimizer step: `grad_accum` micro-batches (loss / grad_accum, so the sum of micro-gradients is
the gradient of the mean over the big batch), dynamic loss scaling for fp16, unscale -> clip ->
AdamW with the scheduled learning rate. Logged: JSONL metrics, a tqdm bar with tokens/s (and MFU on
a GPU with a known peak), periodic validation loss / perplexity, atomic checkpoints. Ctrl-C lets the step under
way finish, saves it and raises `TrainingInterrupted` (a KeyboardInterrupt); a second Ctrl-C stops at once.

Determinism: on CPU in fp32 a run resumed from step k replays exactly the batches, dropout masks
and updates of an uninterrupted run (data order is a function of (seed, step); RNG states are
checkpointed), so its losses are bitwise equal.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from llmlab.data.loader import TokenLoader, eval_batches
from llmlab.data.shards import ShardInfo
from llmlab.errors import CheckpointError, ConfigError, LlmlabError
from llmlab.estimate.flops import flops_per_token as estimate_flops_per_token
from llmlab.model.pretrained import resolve_device as checked_device
from llmlab.model.transformer import Transformer
from llmlab.train.attention_backend import choose_backends, prefer
from llmlab.train.checkpoint import (
    check_same_model,
    incomplete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
    same_vocabulary,
    save_checkpoint,
)
from llmlab.train.config import TrainConfig
from llmlab.train.objectives import causal_lm_loss
from llmlab.train.optim import AdamW, LossScaler, lr_at, param_groups
from llmlab.train.parallel import apply_activation_checkpointing
from llmlab.train.report import MetricsLog, plot_loss_curves, read_metrics
from llmlab.transfer import to_device

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# run keys that change the batches, the schedule or the updates: a resume that changes one is not exact
_TRAJECTORY_KEYS = ("batch_size", "grad_accum", "seq_len", "max_steps", "lr", "min_lr_ratio", "warmup_steps",
                    "weight_decay", "beta1", "beta2", "eps", "grad_clip", "precision")


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    val_loss: float | None
    tokens_per_s: float
    checkpoint: Path
    metrics: Path
    stopped_early: bool = False
    already_complete: bool = False  # resumed at max_steps: nothing trained or written, the checkpoint's numbers


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, raised once the step under way has finished and been saved to `checkpoint`."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted at step {step}; saved {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


def resolve_device(name: str) -> torch.device:
    """"auto" or a device name; the checks (bad names, GPU indices) are from_pretrained's."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but no CUDA GPU is available; use --device cpu.")
    return checked_device(name)


def autocast_context(device: torch.device, precision: str):
    dtype = _AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compiled_lm_loss(model):
    """torch.compile of model + next-token loss as one graph: the (tokens, vocab) logits, their fp32 upcast
    and the softmax of the cross-entropy fuse instead of round-tripping through memory (on GPT-2's 50k vocab
    that traffic is a large share of a step)."""

    def loss_fn(x, y):
        return causal_lm_loss(model(x), y)

    return torch.compile(loss_fn)


def accumulate_gradients(fwd, batches, *, device, precision: str, loss_scale: float = 1.0,
                         loss_fn=None) -> torch.Tensor:
    """Backward over micro-batches, each loss divided by their number: the gradients sum to the gradient of
    the mean loss over the concatenated batch. Returns that mean loss as a 0-d tensor (no device sync).
    `fwd(x)` gives logits; `loss_fn(x, y)`, when given, gives the loss directly (e.g. `compiled_lm_loss`)."""
    total = torch.zeros((), device=device)
    for x, y in batches:
        x, y = to_device(x, device), to_device(y, device)  # pinned: the host does not wait for the last step
        with autocast_context(device, precision):
            loss = (loss_fn(x, y) if loss_fn is not None else causal_lm_loss(fwd(x), y)) / len(batches)
        (loss * loss_scale).backward()
        total += loss.detach()
    return total


def train_step(model, fwd, batches, optimizer, scaler: LossScaler, *, device, precision: str,
               grad_clip: float, loss_fn=None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One optimizer step over micro-batches; returns (mean loss, grad norm, stepped). Loss and norm stay on
    the device: reading them is left to the caller, once per log interval, so steps queue up without syncs."""
    loss = accumulate_gradients(fwd, batches, device=device, precision=precision, loss_scale=scaler.scale,
                                loss_fn=loss_fn)
    params = [p for p in model.parameters() if p.grad is not None]
    ok = scaler.unscale_and_check(params)
    gnorm = torch.tensor(float("nan"))
    if ok and getattr(optimizer, "compiled", False):  # AdamW(compiled=True): clipping fused into the update
        gnorm = optimizer.clip_and_step(grad_clip if grad_clip > 0 else None)
    elif ok:
        gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, gnorm, ok


@torch.no_grad()
def evaluate(model, shards: ShardInfo, *, batch_size: int, seq_len: int, max_batches: int, device,
             precision: str) -> float:
    """Mean validation cross-entropy (nats per token) over fixed windows."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in eval_batches(shards, batch_size=batch_size, seq_len=seq_len, max_batches=max_batches):
        with autocast_context(device, precision):
            loss = causal_lm_loss(model(x.to(device)), y.to(device))
        total += float(loss) * y.numel()
        n += y.numel()
    model.train(was_training)
    return total / n


def no_validation_reason(shards: ShardInfo, seq_len: int) -> str | None:
    """Why a run on `shards` at `seq_len` can have no validation loss, or None when it has one."""
    if shards.val_tokens == 0:
        return "the shards have no validation split"
    if shards.windows("val", seq_len) == 0:
        return f"the validation split has {shards.val_tokens} tokens, fewer than one window of seq_len {seq_len} + 1"
    return None


def train(cfg: TrainConfig, *, resume: bool = False, log=print) -> TrainResult:
    cfg.validate()  # again: a field may have been set since construction
    device = resolve_device(cfg.device)
    shards = ShardInfo.load(cfg.data)
    if shards.vocab_size > cfg.model.vocab_size:
        fix = ("prepare the shards with init_from's tokenizer" if cfg.init_from
               else f"set model.vocab_size >= {shards.vocab_size}")
        raise ConfigError(f"the shards' tokenizer has {shards.vocab_size} tokens but model.vocab_size is "
                          f"{cfg.model.vocab_size}; {fix}.")
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None and not resume:  # a fresh run's checkpoints would mix with these (and be pruned by them)
        raise ConfigError(f"{out} already holds a run's checkpoints (newest {ckpt}); pass --resume to continue "
                          f"it, or give another --out to start a new run (or delete {ckpt_root}).")
    if ckpt is not None:  # before any work: a run that is done, or past this max_steps, trains nothing
        saved = read_trainer_state(ckpt)
        if same_vocabulary(ckpt, shards.path) is False:  # first: the run's vocab_size/EOS default to the shards'
            raise ConfigError(f"the shards in {shards.path} were made with another tokenizer than the one {ckpt} "
                              "trained on (the same ids mean other text); resume with the run's own shards, or "
                              "start a fresh run in a new --out.")
        check_same_model(ckpt, saved, cfg.model.to_dict())
        if saved["step"] > cfg.max_steps:
            raise ConfigError(f"the checkpoint {ckpt} is at step {saved['step']}, past max_steps {cfg.max_steps}; "
                              "raise --max_steps to train further.")
        if saved["step"] == cfg.max_steps:
            return _already_complete(ckpt, saved, out / "metrics.jsonl")
    if cfg.init_from:
        from llmlab import artifacts

        source = artifacts.resolve(cfg.init_from)
        same = same_vocabulary(source, shards.path)
        if same is False:
            raise ConfigError(f"the shards in {shards.path} were made with another tokenizer than init_from "
                              f"{cfg.init_from}'s (the same ids mean other text); prepare them with `llmlab data "
                              f"prepare --tokenizer {cfg.init_from}`.")
        if same is None:
            log(f"note: the shards' tokenizer could not be compared with init_from {cfg.init_from}'s (one of them has "
                "no byte-level tokenizer.json or GGUF vocabulary to read); make sure the shards were prepared with "
                f"`llmlab data prepare --tokenizer {cfg.init_from}`.")
    if cfg.warmup_steps >= cfg.max_steps:
        log(f"note: warmup_steps {cfg.warmup_steps} >= max_steps {cfg.max_steps}, so the learning rate never "
            f"reaches lr {cfg.lr:g} nor decays; lower --warmup_steps (e.g. to {max(cfg.max_steps // 10, 0)}).")
    _check_writable(ckpt_root)  # before any work: a run that cannot save would train for nothing
    torch.manual_seed(cfg.seed)
    model = _init_model(cfg).to(device).train()
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    optimizer = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                      compiled=cfg.compile)
    scaler = LossScaler(enabled=cfg.precision == "fp16")
    loader = TokenLoader(shards, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed)
    no_val = no_validation_reason(shards, cfg.seq_len)
    if no_val:
        fix = "prepare the shards with a larger --val-fraction" + (" or train with a shorter seq_len"
                                                                    if shards.val_tokens > 1 else "")
        log(f"note: {no_val}, so this run has no validation loss; {fix} to get one.")

    start = 0
    if resume and ckpt is None:  # lenient, so that one command both starts a run and continues it
        torn = sorted(d.name for d in incomplete_checkpoints(ckpt_root))
        why = f" ({', '.join(torn)} {'has' if len(torn) == 1 else 'have'} no trainer_state.json)" if torn else ""
        log(f"note: --resume found no complete checkpoint under {ckpt_root}{why}, so this is a new run from step 0 "
            "(check --out if you meant to continue one).")
    elif ckpt is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer)
        loader.load_state_dict(state["loader"])
        scaler.load_state_dict(state["scaler"])
        start = state["step"]
        log(f"resumed from {ckpt} (step {start})")
        changed = [f"{k} {saved['config'][k]!r} -> {getattr(cfg, k)!r}" for k in _TRAJECTORY_KEYS
                   if k in saved["config"] and saved["config"][k] != getattr(cfg, k)]
        old_dropout = saved["config"]["model"].get("dropout", cfg.model.dropout)
        if old_dropout != cfg.model.dropout:
            changed.append(f"model.dropout {old_dropout!r} -> {cfg.model.dropout!r}")
        if changed:
            log(f"note: this run's settings differ from the checkpoint's ({', '.join(changed)}); training continues "
                "with this run's, so its losses will not match an uninterrupted run.")
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=start if resume else None)
    loss_fn = compiled_lm_loss(model) if cfg.compile else None
    attention = _attention_order(cfg, model, device, log)
    # 6 x matmul weights (the LM head included: its matmul is real work) + the attention term.
    flops_per_token = estimate_flops_per_token(model.cfg, cfg.seq_len).train
    peak = _peak_flops(device, cfg.precision)

    def save(step: int, last_loss: float, val_loss: float | None) -> Path:
        def save_in(root: Path) -> Path:
            return save_checkpoint(root, step, model=model, optimizer=optimizer, keep_last=cfg.keep_last,
                                   tokenizer_dir=shards.path,
                                   trainer_state={"loader": loader.state_dict(), "scaler": scaler.state_dict(),
                                                  "train_loss": last_loss, "val_loss": val_loss,
                                                  "config": cfg.to_dict()})

        try:
            return save_in(ckpt_root)
        except OSError as e:  # e.g. a disk that filled up during the run: the trained steps are kept elsewhere
            return _rescue(save_in, step, ckpt_root, e)

    # Throughput counts the training steps only: the time of evals and checkpoints (`paused`) is left out.
    t_start = time.perf_counter()
    t_last, tokens_since, paused, paused_since_log = t_start, 0, 0.0, 0.0
    first_step_s = 0.0
    loss = val = float("nan")
    step, stopped_early, tok_s = start, False, 0.0
    bar = tqdm(total=cfg.max_steps, initial=start, desc="train", unit="step", disable=not cfg.progress,
               dynamic_ncols=True)
    say = bar.write if cfg.progress else log
    evaluated = saved_at = None  # the last eval's (step, val loss) and save's (step, path), if any
    interrupt = _StopAfterStep()
    try:  # the bar is closed before any error or Ctrl-C message is printed
        interrupt.install()
        for step in range(start, cfg.max_steps):
            lr = lr_at(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                       min_lr_ratio=cfg.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batches = [loader.next_batch() for _ in range(cfg.grad_accum)]
            with prefer(attention):  # torch.compile bakes the backend in when it traces: the same order every step
                loss_t, gnorm_t, ok = train_step(model, model, batches, optimizer, scaler, device=device,
                                                 precision=cfg.precision, grad_clip=cfg.grad_clip, loss_fn=loss_fn)
            tokens_since += cfg.tokens_per_step
            done = step + 1
            if done == start + 1:  # the first step compiles and warms up: the final tokens/s leaves it out
                if device.type == "cuda":
                    torch.cuda.synchronize()
                first_step_s = time.perf_counter() - t_start
            bar.update(1)
            out_of_time = 0 < cfg.time_budget_s < time.perf_counter() - t_start and done < cfg.max_steps
            if done % cfg.log_every == 0 or done == cfg.max_steps or out_of_time:
                loss, gnorm = float(loss_t), float(gnorm_t)
                if not math.isfinite(loss) and cfg.precision != "fp16":
                    raise LlmlabError(f"loss became {loss} at step {done}; lower the learning rate (now {cfg.lr}).")
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                tok_s = tokens_since / max(now - t_last - paused_since_log, 1e-9)
                t_last, tokens_since, paused_since_log = now, 0, 0.0
                record = {"kind": "train", "step": done, "loss": loss, "lr": lr, "grad_norm": gnorm,
                          "tokens_per_s": tok_s, "skipped": not ok}
                post = {"loss": f"{loss:.3f}", "tok/s": f"{tok_s:,.0f}"}
                if peak:
                    record["mfu"] = tok_s * flops_per_token / peak
                    post["mfu"] = f"{record['mfu']:.1%}"
                metrics.write(record)
                bar.set_postfix(post)
            eval_now = cfg.eval_every > 0 and not no_val and done % cfg.eval_every == 0 and done < cfg.max_steps
            save_now = cfg.ckpt_every > 0 and done % cfg.ckpt_every == 0 and done < cfg.max_steps
            if eval_now or save_now:
                if device.type == "cuda":
                    torch.cuda.synchronize()  # the queued training steps count as training, not as the pause
                t_pause = time.perf_counter()
                if eval_now:
                    val = evaluate(model, shards, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                   max_batches=cfg.eval_batches, device=device, precision=cfg.precision)
                    metrics.write({"kind": "eval", "step": done, "val_loss": val, "val_ppl": math.exp(val)})
                    say(f"step {done}: val loss {val:.4f} (ppl {math.exp(val):.2f})")
                    evaluated = (done, val)
                if save_now:
                    saved_at = (done, save(done, float(loss_t), val if eval_now else None))
                pause = time.perf_counter() - t_pause
                paused, paused_since_log = paused + pause, paused_since_log + pause
            if interrupt.asked and done < cfg.max_steps:  # (at max_steps the run ends and saves as usual)
                path = saved_at[1] if saved_at is not None and saved_at[0] == done else save(
                    done, float(loss_t), evaluated[1] if evaluated is not None and evaluated[0] == done else None)
                raise TrainingInterrupted(done, path)
            if out_of_time:
                stopped_early = True
                say(f"time budget of {cfg.time_budget_s:.0f}s reached at step {done}; stopping.")
                break
    finally:
        interrupt.restore()
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t_start - paused
    loss = float(loss_t)  # start < max_steps here (a resume at max_steps returned above): a step ran
    final_step = step + 1
    final_val = None
    if not no_val and evaluated is not None and evaluated[0] == final_step:  # a time-budget stop on an eval step
        final_val = evaluated[1]
    elif not no_val:
        final_val = evaluate(model, shards, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                             max_batches=cfg.eval_batches, device=device, precision=cfg.precision)
        metrics.write({"kind": "eval", "step": final_step, "val_loss": final_val, "val_ppl": math.exp(final_val)})
    if saved_at is not None and saved_at[0] == final_step and (no_val or evaluated == (final_step, final_val)):
        ckpt = saved_at[1]  # saved at this step already, with its val loss: a second save would only rewrite it
    else:
        ckpt = save(final_step, loss, final_val)
    plot_loss_curves(metrics.read(), out / "loss.png", title=f"{out.name}: {cfg.model.model_type} "
                     f"{model.num_parameters() / 1e6:.2f}M params")
    # Tokens trained by this process (a resume: since start) over their time, the first step's left out where
    # later steps were timed (its compile or warm-up is not the run's speed).
    steps_run, seconds = final_step - start, train_seconds
    if steps_run > 1:
        steps_run, seconds = steps_run - 1, train_seconds - first_step_s
    return TrainResult(steps=final_step, train_loss=loss, val_loss=final_val,
                       tokens_per_s=steps_run * cfg.tokens_per_step / max(seconds, 1e-9), checkpoint=ckpt,
                       metrics=metrics.path, stopped_early=stopped_early)


class _StopAfterStep:
    """Ctrl-C in the training loop: the step under way finishes and is saved (the loop reads `asked` after each
    step), instead of every step since the last checkpoint being lost (all of them with ckpt_every 0); a second
    Ctrl-C stops at once. Only where Python's own SIGINT handler is in place: in the main thread, and neither
    ignored (a background job) nor taken over by the program that calls `train`."""

    def __init__(self):
        self.asked, self._previous = False, None

    def install(self) -> None:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        try:
            print("\ninterrupt: saving a checkpoint when this step ends (Ctrl-C again to stop without it)",
                  file=sys.stderr, flush=True)
        except RuntimeError:  # the signal came inside a write to stderr (a reentrant call): the note is skipped
            pass


def _check_writable(root: Path) -> None:
    """Refuse a checkpoint directory that cannot be written, before anything is trained."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=".probe-", dir=root)).rmdir()
    except OSError as e:
        raise ConfigError(f"checkpoints cannot be written under {root} ({e.strerror or e}); give an --out where "
                          "files can be written.") from None


def _rescue(save_in, step: int, root: Path, error: OSError) -> Path:
    """A checkpoint that could not be written under `root`: write it to a new temporary directory instead, then
    stop with an error that says where it is (so nothing trained is lost)."""
    reason = error.strerror or str(error)
    try:
        rescue = Path(tempfile.mkdtemp(prefix="llmlab-rescue-"))
        path = save_in(rescue)
    except OSError as e2:
        raise CheckpointError(f"the checkpoint of step {step} could not be written under {root} ({reason}), nor to "
                              f"a temporary directory ({e2.strerror or e2}); free disk space and resume from the "
                              "last checkpoint.") from None
    raise CheckpointError(f"the checkpoint of step {step} could not be written under {root} ({reason}); it was "
                          f"saved to {path} instead: move it into {root} once it can be written, then --resume.")


def _already_complete(ckpt: Path, state: dict, metrics: Path) -> TrainResult:
    """The result of a run resumed at its max_steps: the checkpoint's numbers; nothing trained or written.
    Its val loss is the checkpoint's (older checkpoints: metrics.jsonl's at that step, when it is there)."""
    step = state["step"]
    records = read_metrics(metrics)
    val = state.get("val_loss")
    if "val_loss" not in state:
        val = next((r["val_loss"] for r in reversed(records) if r.get("kind") == "eval" and r.get("step") == step),
                   None)
    rates = [r["tokens_per_s"] for r in records if r.get("kind") == "train" and r["step"] <= step]
    return TrainResult(steps=step, train_loss=state.get("train_loss", float("nan")), val_loss=val,
                       tokens_per_s=rates[-1] if rates else float("nan"), checkpoint=ckpt, metrics=metrics,
                       already_complete=True)


def _attention_order(cfg: TrainConfig, model: Transformer, device: torch.device, log) -> list | None:
    """The SDPA backend order for this run (attention_backend), timed at its attention shape when "auto"."""
    dtype = _AUTOCAST[cfg.precision] or next(model.parameters()).dtype
    if device.type != "cuda" and cfg.attention_backend in ("flash", "cudnn", "efficient"):
        log(f"note: attention_backend {cfg.attention_backend} is a CUDA kernel; on {device.type} attention runs "
            "PyTorch's CPU kernels whatever the setting.")
    order, times = choose_backends(cfg.attention_backend, batch=cfg.batch_size, heads=model.cfg.num_heads,
                                   seq=cfg.seq_len, head_dim=model.cfg.head_dim, dtype=dtype, device=device)
    if times:
        ranked = sorted(times.items(), key=lambda kv: kv[1])
        log(f"attention: {ranked[0][0]} preferred (causal forward + backward at this run's shape: "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in ranked) + ")")
    return order


def _init_model(cfg: TrainConfig) -> Transformer:
    if not cfg.init_from:
        return Transformer(cfg.model)
    from llmlab.model.pretrained import from_pretrained

    model = from_pretrained(cfg.init_from)
    context = model.cfg.max_position_embeddings
    if cfg.seq_len > context:
        raise ConfigError(f"seq_len {cfg.seq_len} is above the context of init_from {cfg.init_from} ({context} "
                          f"positions); shorten seq_len to at most {context}.")
    differ = [f"{f.name} {getattr(cfg.model, f.name)!r} vs {getattr(model.cfg, f.name)!r}"
              for f in fields(model.cfg) if f.name != "dropout"
              and getattr(cfg.model, f.name) != getattr(model.cfg, f.name)]
    if differ:
        raise ConfigError(f"the run's model differs from init_from {cfg.init_from} ({', '.join(differ)}: run vs "
                          "checkpoint); leave the model to the checkpoint (build_config does, given init_from), "
                          "or train from scratch without init_from.")
    if cfg.model.dropout != model.cfg.dropout:  # dropout has no weights: the checkpoint's, with the run's dropout
        with_dropout = Transformer(cfg.model)
        with_dropout.load_state_dict(model.state_dict())
        return with_dropout
    return model


def _peak_flops(device: torch.device, precision: str) -> float | None:
    """Datasheet peak of this GPU for the run's precision, when the estimator knows the card."""
    if device.type != "cuda":
        return None
    from llmlab.estimate.hardware import gpu_from_device_name

    gpu = gpu_from_device_name(torch.cuda.get_device_name(device))
    try:
        return gpu.peak_flops({"fp32": "tf32"}.get(precision, precision)) if gpu else None
    except LlmlabError:  # e.g. a card without a bf16 path
        return None
