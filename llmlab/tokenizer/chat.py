"""Chat templates: messages -> text -> (ids, assistant mask), as Hugging Face renders them.

A chat template is a Jinja2 program shipped with a model (`tokenizer_config.json` "chat_template",
`chat_template.jinja`, or GGUF `tokenizer.chat_template`). It is untrusted code, so it runs in
Jinja2's `ImmutableSandboxedEnvironment` with the set-up of transformers' `apply_chat_template`:
`trim_blocks`, `lstrip_blocks`, the `loopcontrols` extension, a non-HTML-escaping `tojson`, and the
globals `raise_exception` and `strftime_now`, plus the `{% generation %}...{% endgeneration %}` tag
that marks the assistant text a model is trained to produce.

The assistant mask (1 = train on this token) comes from `{% generation %}` spans when the template
has them; otherwise each assistant turn's span is found by rendering the conversation up to that
turn with and without it (the template must render a prefix of the conversation as a prefix of the
text, which ChatML-style templates do). Spans are mapped to tokens through byte offsets: for
byte-level BPE the token bytes concatenate to exactly the rendered text, so a token is assistant
text iff its first byte lies in a span. A template that defeats both gets an all-zero mask and a
warning (inference needs no mask; SFT should check `any(mask)`).

No double BOS: the rendered text is tokenized with `add_special_tokens=False` (the template emits
BOS itself if the model wants one), and special tokens in the rendered text are recognised.
"""

from __future__ import annotations

import json
import re
import warnings
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmlab.errors import TokenizerError

if TYPE_CHECKING:
    from llmlab.tokenizer.tokenizer import Tokenizer

# ChatML, the default for models trained by llmlab (special tokens <|im_start|>, <|im_end|>).
# The assistant's <|im_end|> is inside the generation span: the model must learn to stop.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class _GenerationTracker(jinja2.ext.Extension):
    """`{% generation %}` blocks: record the (start, end) character span of what they render."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment):
        super().__init__(environment)
        environment.extend(track_generation=self.track)
        self._blocks: list[str] | None = None
        self._spans: list[tuple[int, int]] | None = None

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_support"), [], [], body).set_lineno(lineno)

    def _support(self, caller) -> str:
        rv = caller()
        if self._blocks is not None:
            start = sum(map(len, self._blocks))
            self._spans.append((start, start + len(rv)))
        return rv

    @contextmanager
    def track(self, blocks: list[str], spans: list[tuple[int, int]]):
        self._blocks, self._spans = blocks, spans
        try:
            yield
        finally:
            self._blocks = self._spans = None


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
    """The template compiled in transformers' sandbox set-up (cached: compiling is slow)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(f"the chat template has a syntax error at line {e.lineno} ({e.message}); fix the template.") from None


def render_text(messages: list[dict], template: str, *, add_generation_prompt: bool = False,
                **variables) -> tuple[str, list[tuple[int, int]]]:
    """Rendered conversation and the character spans of its `{% generation %}` blocks."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise TokenizerError("messages must be a list of dicts with 'role' and 'content', "
                             "e.g. [{'role': 'user', 'content': 'Hi'}].")
    tpl = compile_template(template)
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        with tpl.environment.track_generation(blocks, spans):
            for block in tpl.generate(messages=messages, add_generation_prompt=add_generation_prompt, **variables):
                blocks.append(block)
    except jinja2.TemplateError as e:
        raise TokenizerError(f"the chat template refused these messages: {e}") from None
    except TypeError as e:  # e.g. content None or a list of parts where the template adds strings
        kinds = sorted({type(m.get("content")).__name__ for m in messages} - {"str"})
        if not kinds:  # every content is text: the fault is elsewhere (a tool that tojson cannot write, ...)
            raise TokenizerError(f"the chat template could not render these messages ({e}).") from None
        raise TokenizerError(f"the chat template could not render these messages ({e}); message content here is "
                             f"{', '.join(kinds)}: give each message a string 'content'.") from None
    return "".join(blocks), spans


def _turn_spans(messages, template, text, variables) -> list[tuple[int, int]]:
    """Assistant spans by prefix rendering, for templates without `{% generation %}`."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, _ = render_text(messages[:i], template, add_generation_prompt=True, **variables)
        upto, _ = render_text(messages[:i + 1], template, **variables)
        if not (upto.startswith(before) and text.startswith(upto)):
            warnings.warn("cannot locate assistant turns in this chat template's output, so the assistant "
                          "mask is all zeros; wrap assistant content in {% generation %}...{% endgeneration %}.",
                          stacklevel=3)
            return []
        spans.append((len(before), len(upto)))
    return spans


def chat_text(tokenizer: Tokenizer, messages: list[dict], template: str | None = None, *,
              add_generation_prompt: bool = False, continue_final_message: bool = False, **variables) -> str:
    """The prompt text of `messages` for inference, as transformers' apply_chat_template(tokenize=False) renders
    it: `template` (default: the tokenizer's own) with bos/eos/pad and `variables` (tools, enable_thinking, ...).
    `continue_final_message` cuts the text right after the last message's content, so the model goes on with that
    message (a partial assistant answer) instead of starting a new turn. No assistant mask: see render_chat."""
    template = _template_of(tokenizer, template)
    if continue_final_message and add_generation_prompt:
        raise TokenizerError("continue_final_message continues the last message and add_generation_prompt starts a "
                             "new one; set only one of them.")
    variables = {**_special_variables(tokenizer), **variables}
    text, _ = render_text(messages, template, add_generation_prompt=add_generation_prompt, **variables)
    if not continue_final_message:
        return text
    final = messages[-1].get("content") if messages else None
    if isinstance(final, list):  # content parts: continue the last text part
        final = next((p["text"] for p in reversed(final) if isinstance(p, dict) and "text" in p), None)
    if not isinstance(final, str) or not final.strip():
        raise TokenizerError("continue_final_message needs a last message with text content to continue.")
    at = text.rfind(final.strip())
    if at < 0:
        raise TokenizerError("continue_final_message: the chat template's output does not contain the last "
                             "message's text (the template rewrites it), so there is no place to continue from.")
    # keep the message's own trailing spaces where the template kept them; else end where the stripped text ends
    keep = final.lstrip()
    return text[:at + len(keep)] if text[at:at + len(keep)] == keep else text[:at + len(final.strip())]


_PARTS_LOOP = re.compile(r"for\s+\w+\s+in\s+\w+(\[\s*['\"]content['\"]\s*\]|\.content\b)")


def takes_content_parts(template: str) -> bool:
    """Whether a chat template loops over a message's content (OpenAI-style parts), as vLLM's "auto" content
    format detects: such a template gets the parts as they are, any other their text joined (text_content)."""
    return bool(_PARTS_LOOP.search(template))


def text_content(message: dict) -> dict:
    """`message` with OpenAI-style content parts ([{"type": "text", "text": ...}, ...]) joined into one string by
    newlines, as vLLM's "string" content format does for text-only templates."""
    parts = message.get("content") if isinstance(message, dict) else None
    if not isinstance(parts, list):
        return message
    texts = []
    for p in parts:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind != "text" or not isinstance(p.get("text"), str):
            raise TokenizerError(f"message content part {p!r} is not text ({{'type': 'text', 'text': ...}}); "
                                 "this model takes text only.")
        texts.append(p["text"])
    return {**message, "content": "\n".join(texts)}


def parts_content(message: dict) -> dict:
    """`message` with string content as one OpenAI-style text part and None as no parts, for templates that loop
    over a message's content (vLLM's "openai" content format)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return {**message, "content": [{"type": "text", "text": content}]}
    if content is None and isinstance(message, dict) and "content" in message:
        return {**message, "content": []}
    return message


def _template_of(tokenizer: Tokenizer, template: str | None) -> str:
    template = template if template is not None else tokenizer.chat_template
    if template is None:
        raise TokenizerError("this tokenizer has no chat template; pass one (chat_template=... to "
                             "apply_chat_template, template=... to render_chat and chat_text), e.g. "
                             "llmlab.tokenizer.chat.DEFAULT_CHAT_TEMPLATE.")
    return template


def _special_variables(tokenizer: Tokenizer) -> dict:
    """What transformers' apply_chat_template always defines: the special tokens, and tools / documents as None
    (so `{% if tools is not none %}` reads as it does there)."""
    return {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or "",
            "pad_token": tokenizer.pad_token or "", "tools": None, "documents": None}


def render_chat(tokenizer: Tokenizer, messages: list[dict], template: str | None = None, *,
                add_generation_prompt: bool = False, **variables) -> tuple[list[int], list[int]]:
    """(ids, assistant_mask) for `messages` with `template` (default: the tokenizer's own)."""
    template = _template_of(tokenizer, template)
    if not tokenizer.byte_level:
        raise TokenizerError("chat rendering needs a byte-level BPE tokenizer; WordPiece normalizes text, "
                             "so assistant spans cannot be mapped to tokens.")
    variables = {**_special_variables(tokenizer), **variables}
    text, spans = render_text(messages, template, add_generation_prompt=add_generation_prompt, **variables)
    if not spans:
        spans = _turn_spans(messages, template, text, variables)
    ids = tokenizer.encode(text, allowed_special="all")
    data = text.encode("utf-8")
    if tokenizer.decode_bytes(ids) != data:
        raise TokenizerError("this tokenizer does not reproduce the rendered text byte for byte (it "
                             "normalizes), so the assistant mask cannot be computed.")
    byte_spans = [(len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))) for s, e in spans]
    mask, pos = [], 0
    for i in ids:
        mask.append(int(any(s <= pos < e for s, e in byte_spans)))
        pos += len(tokenizer.token_bytes(i))
    return ids, mask
