"""A conversation that fits its context window.

The system prompt always stays; when the history and room for a reply no longer
fit, whole turns (a user message and the reply to it) go, oldest first. The
newest message alone must fit, or it is refused with a one-line error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .base import Engine, check_prompt_fits


@dataclass
class Conversation:
    """The turns of one chat with ``engine``.

    Attributes:
        engine: tokenizer, chat template and context length.
        system: the system prompt, or None.
        max_tokens: the most tokens one reply may take.
        messages: user and assistant turns, oldest first (the system prompt apart).
        dropped: messages dropped so far to fit the context.
    """

    engine: Engine
    system: str | None = None
    max_tokens: int = 256
    messages: list[dict] = field(default_factory=list)
    dropped: int = 0

    def history(self) -> list[dict]:
        """The messages the chat template sees: system prompt first."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def reply_room(self) -> int:
        """Tokens kept free for the reply: ``max_tokens``, at most half the context."""
        return max(1, min(self.max_tokens, self.engine.context_length // 2))

    def ask(self, text: str) -> tuple[list[int], int]:
        """Add a user message; returns the prompt's token ids and how many older
        messages were dropped now to fit it with room for the reply.

        Raises:
            PromptTooLong: the message (with the system prompt) fills the context on
                its own; it is not kept.
        """
        ctx, dropped = self.engine.context_length, 0
        alone = {"role": "user", "content": text}
        head = [{"role": "system", "content": self.system}] if self.system else []
        check_prompt_fits(len(self.engine.tokenize(self.engine.chat_prompt(head + [alone]))),
                          ctx)                        # refused whole: nothing is dropped
        self.messages.append(alone)
        ids = self._ids()
        while len(ids) + self.reply_room() > ctx and len(self.messages) > 1:
            n = 2 if len(self.messages) > 2 and self.messages[1]["role"] == "assistant" else 1
            del self.messages[:n]                     # the oldest turn: question and reply
            dropped += n
            ids = self._ids()
        self.dropped += dropped
        return ids, dropped

    def answer(self, text: str) -> None:
        """Record the model's reply (also a partial one)."""
        self.messages.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        """Forget the turns; the system prompt stays."""
        self.messages.clear()

    def save(self, path: str | Path) -> Path:
        """Append the conversation to ``path`` as one JSONL record ``{"messages": [...]}``
        (the chat format ``slm finetune --data`` reads)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"messages": self.history()}, ensure_ascii=False) + "\n")
        return path

    def _ids(self) -> list[int]:
        return self.engine.tokenize(self.engine.chat_prompt(self.history()))
