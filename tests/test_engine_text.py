"""The engine's text edge: UTF-8-safe streaming, stop strings across token boundaries, chat templates,
and the real SmolLM2 through `LLM` (artifact)."""

from __future__ import annotations

import json

import pytest
import torch

import llmlab
from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, LLMEngine, SamplingParams
from llmlab.engine.output import Detokenizer
from llmlab.tokenizer import DEFAULT_CHAT_TEMPLATE, render_chat, train_bpe

TEXT = "你好，世界！😀🎉 The quick brown fox says hello. Ünïcödé ok. "


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT * 10], vocab_size=300, progress=False)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_position_embeddings=128)
    return Transformer(cfg).eval()


def stream(tok, ids, params):
    """Feed ids one at a time; return the visible text after each and the stop string hit."""
    d = Detokenizer(tok, params)
    shown, hit = [], None
    for i in ids:
        hit = d.add(i)
        shown.append(d.visible(finished=hit is not None))
        if hit:
            break
    d.flush()
    return d, shown, hit


def test_streaming_never_shows_broken_utf8(tok):
    text = "你好，世界！😀🎉 ok"
    ids = tok.encode(text)
    assert any(len(tok.token_bytes(i).decode("utf-8", "ignore")) < len(tok.token_bytes(i)) for i in ids)  # splits chars
    d, shown, _ = stream(tok, ids, SamplingParams())
    assert all("\ufffd" not in s for s in shown)
    assert all(b.startswith(a) for a, b in zip(shown, shown[1:]))  # text only ever grows
    assert d.text == text


def test_unfinished_character_becomes_replacement_at_the_end(tok):
    ids = tok.encode("😀")
    d, shown, _ = stream(tok, ids[:-1], SamplingParams())
    assert shown[-1] == "" and d.text == "\ufffd"  # like bytes.decode(errors="replace")


@pytest.mark.parametrize("stop", ["世界！😀", "brown f", "o"])
def test_stop_string_across_tokens_is_trimmed_exactly(tok, stop):
    ids = tok.encode(TEXT)
    d, shown, hit = stream(tok, ids, SamplingParams(stop=["never there", stop]))
    assert hit == stop and d.text == TEXT[:TEXT.index(stop)]
    assert all(d.text.startswith(s) for s in shown)  # nothing shown while streaming is ever taken back


def test_partial_stop_string_is_held_back_while_streaming(tok):
    d = Detokenizer(tok, SamplingParams(stop=["fox says bye"]))
    for i in tok.encode("The quick brown fox says"):
        d.add(i)
    assert d.text == "The quick brown fox says" and d.visible(finished=False) == "The quick brown "
    assert d.visible(finished=True) == d.text


def test_special_tokens_are_not_text(tok):
    eos = tok.special_tokens["<|im_end|>"]
    d, _, _ = stream(tok, tok.encode("hi") + [eos], SamplingParams())
    assert d.text == "hi"
    d, _, _ = stream(tok, tok.encode("hi") + [eos], SamplingParams(skip_special_tokens=False))
    assert d.text == "hi<|im_end|>"


def test_engine_stop_string_spanning_a_token_boundary(tok, model):
    llm = LLM(model, tokenizer=tok)
    free = llm.generate("The quick", SamplingParams(temperature=0, max_tokens=24))[0].outputs[0]
    lengths, d = [], Detokenizer(tok, SamplingParams())
    for i in free.token_ids:
        d.add(i)
        lengths.append(len(d.text))
    assert d.text == free.text
    # A two-character stop string whose characters come from consecutive tokens.
    k = next(k for k in range(1, len(lengths) - 1)
             if lengths[k - 1] < lengths[k] < lengths[k + 1] and "\ufffd" not in free.text[lengths[k] - 1:lengths[k] + 1]
             and free.text.find(free.text[lengths[k] - 1:lengths[k] + 1]) == lengths[k] - 1)
    stop = free.text[lengths[k] - 1:lengths[k] + 1]
    out = llm.generate("The quick", SamplingParams(temperature=0, max_tokens=24, stop=stop))[0].outputs[0]
    assert out.text == free.text[:lengths[k] - 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.token_ids == free.token_ids[:k + 2]  # generation ends with the token that completed the stop


def test_engine_text_in_text_out_and_streaming_outputs(tok, model):
    engine = LLMEngine(model, tok)
    engine.add_request("a", "你好", SamplingParams(temperature=0, max_tokens=10))
    texts = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            texts.append(out.outputs[0].text)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert out.prompt == "你好" and out.prompt_token_ids == tok.encode("你好")
    assert texts[-1] == tok.decode(out.outputs[0].token_ids, skip_special_tokens=True)


def test_chat_renders_the_template(tok, model):
    llm = LLM(model, tokenizer=tok)
    messages = [{"role": "user", "content": "你好"}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=3), chat_template=DEFAULT_CHAT_TEMPLATE)[0]
    ids, _ = render_chat(tok, messages, DEFAULT_CHAT_TEMPLATE, add_generation_prompt=True)
    assert out.prompt_token_ids == ids and len(out.outputs[0].token_ids) == 3
    assert out.prompt == tok.decode(ids) and "你好" in out.prompt  # the rendered conversation, as vLLM reports it
    two = llm.chat([messages, messages], SamplingParams(temperature=0, max_tokens=3), chat_template=DEFAULT_CHAT_TEMPLATE)
    assert [o.outputs[0].token_ids for o in two] == [out.outputs[0].token_ids] * 2


@pytest.mark.artifact
def test_smollm2_through_llm_text_and_chat():
    llm = LLM("smollm2-135m", max_num_seqs=4)
    prompt = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=4))[0].outputs[0]
    assert out.text.startswith(" Rome.")
    ref = llm.model.generate(torch.tensor([llm.tokenizer.encode(prompt)]), max_new_tokens=4)[0, -4:].tolist()
    assert out.token_ids == ref
    chat = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                    SamplingParams(temperature=0, max_tokens=24))[0].outputs[0]
    assert "Paris" in chat.text
    assert isinstance(llmlab.LLM, type)


@pytest.mark.parametrize("flags", [[], ["--compile"]])
def test_cli_chat_one_turn(tok, model, tmp_path, capsys, monkeypatch, flags):
    """One reply from the CLI; --compile reaches the engine as compile_decode (the compiled step itself, a minute of
    Inductor with cold caches, is tested in test_engine_decode_paths.py: here the engine runs it eagerly)."""
    import llmlab.engine.llm as llm_module
    from llmlab.cli import main

    options, real, warm_ups = [], llm_module.LLM, []

    def llm(*args, **kwargs):
        options.append(kwargs.pop("compile_decode"))
        engine = real(*args, **kwargs)
        generate = engine.generate

        def before_the_first_prompt(*a, **kw):  # the CLI's warm-up: the compile's notice must not land in a reply
            warm_ups.append("ready in" not in capsys.readouterr().err)
            return generate(*a, **kw)

        engine.generate = before_the_first_prompt
        return engine

    monkeypatch.setattr(llm_module, "LLM", llm)
    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    assert main(["chat", "--model", str(tmp_path), "--message", "你好", "--max-tokens", "6", "--temperature", "0",
                 *flags]) == 0
    assert options == [bool(flags)] and warm_ups == [True] * bool(flags)
    captured = capsys.readouterr()
    reply = captured.out
    ids, _ = render_chat(tok, [{"role": "user", "content": "你好"}], add_generation_prompt=True)
    expected = LLM(model, tokenizer=tok).generate([ids], SamplingParams(temperature=0, max_tokens=6))[0].outputs[0]
    assert reply == expected.text + "\n"
    assert expected.finish_reason == "length" and "(reply cut at --max-tokens 6; raise it" in captured.err


def test_cli_chat_without_template_says_what_to_do(tok, model, tmp_path, capsys):
    from llmlab.cli import main

    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(["chat", "--model", str(tmp_path), "--message", "hi"]) == 2
    assert "has no chat template (a base model?); use `llmlab generate --prompt`" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
    (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--temperature", "-0.5"], "--temperature must be a finite number >= 0 (0 is greedy), got -0.5"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0 (0 is greedy), got inf"),
    (["--max-tokens", "0"], "--max-tokens must be at least 1, got 0"),
])
def test_cli_chat_refuses_bad_sampling_flags_before_loading(flags, message, capsys, monkeypatch):
    """A bad flag is named before the model loads (seconds for a real one): the loader here must never run."""
    from llmlab.cli import main
    from llmlab.engine import llm

    monkeypatch.setattr(llm.LLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["chat", "--model", "nowhere", "--message", "hi", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_cli_chat_drops_the_oldest_turns_when_the_context_fills(tok, model, tmp_path, capsys):
    from llmlab.cli import main

    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    long = "The quick brown fox says hello. " * 3  # ~30 tokens a message; the model has 128 positions
    assert main(["chat", "--model", str(tmp_path), "--max-tokens", "8", "--temperature", "0",
                 *[a for i in range(5) for a in ("--message", f"{i} {long}")]]) == 0
    err = capsys.readouterr().err
    assert "oldest messages to fit the model's 128-token context" in err


def test_cli_chat_interactive_survives_a_message_too_long(tok, model, tmp_path, capsys, monkeypatch):
    from llmlab.cli import main

    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    lines = iter(["The quick brown fox says hello. " * 40, "hi", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(tmp_path), "--max-tokens", "4", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert "the model's context is 128 tokens; send a shorter message" in captured.err
    ids, _ = render_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    expected = LLM(model, tokenizer=tok).generate([ids], SamplingParams(temperature=0, max_tokens=4))[0].outputs[0].text
    assert captured.out == expected + "\n"  # the second message answered as if it were the first


@pytest.mark.parametrize("end", ["/exit", "/quit", "", None])  # None: end of input (Ctrl-D, a pipe)
def test_cli_chat_interactive_ends_on_exit_commands(tok, model, tmp_path, capsys, monkeypatch, end):
    """`/exit` was sent to the model as a third message (a third reply), not taken as the end; and nothing
    said what was happening during the engine's start-up (~30 s for SmolLM2-135M on 2 CPU cores)."""
    from llmlab.cli import main

    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    lines = iter(["hi", "hello", *([] if end is None else [end]), "never read"])

    def fake_input(prompt=""):
        line = next(lines)
        if line == "never read" and end is None:
            raise EOFError
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["chat", "--model", str(tmp_path), "--max-tokens", "4", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2  # two replies, none for the exit command
    assert captured.err.startswith(f"loading {tmp_path} and starting the engine...\nready in ")
    assert "/exit or Ctrl-D ends" in captured.err


def test_cli_chat_from_a_pipe_prints_only_the_replies(tok, model, tmp_path, capfd):
    """`printf 'hi\\nhello\\n' | llmlab chat` wrote 'you> ' before every reply on stdout (input()'s prompt)."""
    import subprocess
    import sys

    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    args = ["--max-tokens", "4", "--temperature", "0"]
    run = subprocess.run([sys.executable, "-m", "llmlab", "chat", "--model", str(tmp_path), *args],
                         input="hi\nhello\n/exit\n", capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    llm = LLM(model, tokenizer=tok)
    replies, messages = [], []
    for user in ("hi", "hello"):
        messages.append({"role": "user", "content": user})
        ids, _ = render_chat(tok, messages, add_generation_prompt=True)
        replies.append(llm.generate([ids], SamplingParams(temperature=0, max_tokens=4))[0].outputs[0].text)
        messages.append({"role": "assistant", "content": replies[-1]})
    assert run.stdout == "".join(r + "\n" for r in replies)
    assert "you>" not in run.stdout + run.stderr


def test_cli_chat_refuses_max_tokens_that_fill_the_context(tok, model, tmp_path, capsys):
    from llmlab.cli import main

    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    assert main(["chat", "--model", str(tmp_path), "--message", "hi", "--max-tokens", "128"]) == 2
    assert "--max-tokens 128 leaves no room for a prompt in the model's 128-token context" in capsys.readouterr().err


def test_cli_chat_default_max_tokens_fits_a_short_context(tok, model, tmp_path, capsys):
    """The default of 256 was refused for this 128-token model as "--max-tokens 256 leaves no room", a flag the user
    never gave; now the default is what the context leaves, and the reply ends at the context."""
    from llmlab.cli import main

    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    assert main(["chat", "--model", str(tmp_path), "--message", "hi", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "error" not in err and "--max-tokens" not in err, err
