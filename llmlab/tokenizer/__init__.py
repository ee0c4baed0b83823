"""Tokenizers: byte-level BPE and WordPiece, trained here, and SentencePiece-style BPE (Llama 2, Mistral 7B),
all read from the files everyone uses.

    from llmlab import load_tokenizer
    tok = load_tokenizer("model_dir")                 # tokenizer.json | tokenizer.model | .tiktoken | .gguf | vocab.txt
    ids = tok.encode("Hello <|im_end|>", allowed_special="all")
    tok.decode(ids); tok.token_bytes(ids[0])          # exact bytes for streaming
    ids, mask = tok.render_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)

    from llmlab.tokenizer import train_bpe
    tok = train_bpe([Path("corpus.txt")], vocab_size=8192); tok.save("out_dir")

Modules: `bpe.py` (merge rules, patterns), `spm.py` (SentencePiece-style BPE: characters, "▁", byte
fallback), `spm_file.py` (tokenizer.model files), `wordpiece.py` (BERT normalizer, longest match),
`tokenizer.py` (the pipeline and `Tokenizer`), `train.py` (both trainers), `io.py` (file formats),
`chat.py` (chat templates, assistant masks), `cli.py` (`llmlab tokenizer train|encode`).
"""

from llmlab.tokenizer.bpe import PATTERNS, BPEModel
from llmlab.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from llmlab.tokenizer.io import load_tokenizer, save_tokenizer
from llmlab.tokenizer.spm import PieceBPEModel
from llmlab.tokenizer.tokenizer import Tokenizer
from llmlab.tokenizer.train import DEFAULT_SPECIAL_TOKENS, train_bpe, train_wordpiece
from llmlab.tokenizer.wordpiece import BertNormalizer, WordPieceModel

__all__ = [
    "BPEModel", "BertNormalizer", "DEFAULT_CHAT_TEMPLATE", "DEFAULT_SPECIAL_TOKENS", "PATTERNS", "PieceBPEModel",
    "Tokenizer", "WordPieceModel", "load_tokenizer", "render_chat", "save_tokenizer", "train_bpe",
    "train_wordpiece",
]
