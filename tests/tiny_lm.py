"""A tiny causal LM built on the fly (nothing downloaded): a word-level tokenizer trained with
the ``tokenizers`` package on the texts it will see, and a Llama-architecture model from a
small config with random weights, both saved to a directory like a model from a hub."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def chat_rows(n: int) -> list[dict[str, object]]:
    """``n`` chat examples in OpenAI's fine-tuning format, answers that follow a pattern a
    small model learns quickly (so the loss falls)."""
    rows: list[dict[str, object]] = []
    for i in range(n):
        a, b = i % 7, i % 5
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a Python expert."},
                    {"role": "user", "content": f"add {a} and {b} in python"},
                    {"role": "assistant", "content": f"def add(): return {a} + {b}"},
                ]
            }
        )
    return rows


def _texts(rows: Iterable[dict[str, object]]) -> list[str]:
    texts = []
    for row in rows:
        for message in row["messages"]:  # type: ignore[attr-defined]
            texts.append(str(message["content"]))
    return texts


def build_tiny_lm(
    folder: Path,
    *,
    chat_template: bool = True,
    hidden: int = 32,
    layers: int = 2,
    extra_texts: Iterable[str] = (),
) -> Path:
    """Write a tokenizer and a random tiny Llama to ``folder``; return it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL)
    corpus = _texts(chat_rows(200)) + list(extra_texts) + [str(n) for n in range(100)]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        additional_special_tokens=SPECIAL[4:],
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=fast.vocab_size + len(SPECIAL),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def write_export(path: Path, n: int) -> Path:
    """An OpenAI chat JSONL export of ``n`` rows."""
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(n)), encoding="utf-8")
    return path
