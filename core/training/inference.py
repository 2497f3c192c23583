"""Evaluating local weights in-process: the base model with a LoRA adapter (or merged
weights) loaded once with ``transformers``, answering chat prompts by batched greedy
generation. Meant for small eval sets and CPUs; larger ones serve the adapter with vLLM's
OpenAI-compatible server (``--enable-lora --lora-modules``) and register that endpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import EvalError

from .local import CHATML_TEMPLATE, missing_training_stack

__all__ = ["LocalModel", "LocalWeights"]


@dataclass(frozen=True)
class LocalWeights:
    """Weights to evaluate: where they are, what they adapt, and their sha256."""

    path: str
    base_model: str
    sha256: str


class LocalModel:
    """A candidate's weights, loaded for generation."""

    def __init__(self, weights: LocalWeights, *, max_new_tokens: int = 512):
        missing = missing_training_stack()
        if missing:
            raise EvalError(
                f"Evaluating local weights in-process needs {', '.join(missing)}: "
                "`pip install -r requirements-train.txt`, or serve them with vLLM and give "
                "--base-url."
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(weights.path)
        if not folder.exists():
            raise EvalError(f"The candidate's weights at {folder} are gone.")
        adapter = (folder / "adapter_config.json").exists()
        source = str(folder) if (folder / "tokenizer_config.json").exists() else weights.base_model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            base = AutoModelForCausalLM.from_pretrained(
                weights.base_model if adapter else str(folder), dtype=torch.float32
            )
            if adapter:
                from peft import PeftModel

                base = PeftModel.from_pretrained(base, str(folder))
        except (OSError, ValueError) as exc:
            raise EvalError(f"The candidate's weights cannot be loaded: {exc}") from None
        if not self.tokenizer.chat_template:
            self.tokenizer.chat_template = CHATML_TEMPLATE
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model: Any = base.to(self.device).eval()
        self.max_new_tokens = max_new_tokens

    def answer(self, conversations: list[list[dict[str, str]]]) -> list[tuple[str, int, int]]:
        """Greedy answers to a batch of chats: (text, input tokens, output tokens) each."""
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        batch = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        width = batch["input_ids"].shape[1]
        answers = []
        for row, mask in zip(output, batch["attention_mask"], strict=True):
            new = row[width:]
            keep = new[new != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(keep, skip_special_tokens=True).strip()
            answers.append((text, int(mask.sum()), len(keep)))
        return answers
