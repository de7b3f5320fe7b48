"""Which chat format a model gets, shared by every engine (chat, generate --chat, serve).

In order:

1. the model's own template (a GGUF's ``tokenizer.chat_template``, an HF
   tokenizer's ``chat_template``);
2. a published template known by the special tokens the vocabulary holds: a
   model with ``<start_of_turn>`` and ``<end_of_turn>`` is a Gemma instruction
   model, and gets the turn format published with Gemma 3
   (``<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n``; a system
   message goes in front of the first user turn, as Gemma has no system role);
3. none: the conversation is continued as plain text (the messages' contents one
   after another), and a note says so once. No role names are invented.

``end_of_turn`` lists the tokens that end a reply in each format; engines stop on them.
"""
from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from ..errors import SlmError

GEMMA_TURN = ("<start_of_turn>", "<end_of_turn>")     # tokens that identify Gemma's format
END_OF_TURN = ("<|im_end|>", "<end_of_turn>")          # ChatML's and Gemma's turn ends

_noted: set[str] = set()


@dataclass(frozen=True)
class ChatFormat:
    """How messages become a prompt for one model.

    Attributes:
        source: ``"model"`` (its own template), ``"gemma"`` (the published Gemma turn
            format, the model has none) or ``"plain"`` (no template: plain completion).
        template: the model's own Jinja template (``source == "model"``).
        bos: the beginning-of-sequence text a template may name as ``bos_token``.
    """

    source: str
    template: str | None = None
    bos: str = ""

    def render(self, messages: list[dict]) -> str:
        if self.source == "model":
            return _render_jinja(self.template, messages, self.bos)
        if self.source == "gemma":
            return gemma_prompt(messages)
        return plain_prompt(messages)


def choose(template: str | None, has_token, model_name: str, bos: str = "") -> ChatFormat:
    """The chat format for a model.

    Args:
        template: the model's own chat template, or None.
        has_token: ``has_token(text) -> bool``: whether the vocabulary holds ``text``
            as one special token.
        model_name: for the note shown when there is no template.
        bos: text of the BOS token, for templates that write ``bos_token``.
    """
    if template:
        return ChatFormat("model", template, bos)
    if all(has_token(t) for t in GEMMA_TURN):
        return ChatFormat("gemma")
    if model_name not in _noted:
        _noted.add(model_name)
        Console(stderr=True, highlight=False).print(
            f"[yellow]note:[/] {model_name} has no chat template and none is known for its "
            "tokens; chat continues the conversation as plain text (completion)")
    return ChatFormat("plain")


def end_of_turn_ids(token_id) -> set[int]:
    """Ids of the turn-end tokens the vocabulary holds (``token_id(text) -> id or None``)."""
    return {i for i in map(token_id, END_OF_TURN) if i is not None}


def gemma_prompt(messages: list[dict]) -> str:
    """Messages in Gemma 3's published turn format, ready for the model's turn.

    No BOS: the engines add it when they tokenize. Contents are stripped of surrounding
    whitespace; a system message is put in front of the first user message.
    """
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = _text(messages[0]) + "\n\n", messages[1:]
    out = []
    for i, m in enumerate(messages):
        if (m["role"] == "user") != (i % 2 == 0):
            raise SlmError("Gemma's chat format needs turns alternating user/assistant, "
                           "starting with the user", "send user and assistant turns in turn")
        role = "model" if m["role"] == "assistant" else "user"
        out.append(f"<start_of_turn>{role}\n{system if i == 0 else ''}{_text(m)}"
                   "<end_of_turn>\n")
    return "".join(out) + "<start_of_turn>model\n"


def plain_prompt(messages: list[dict]) -> str:
    """The messages' contents one after another (no roles): a text to continue."""
    return "\n".join(_text(m) for m in messages if _text(m)) + "\n"


def _text(m: dict) -> str:
    c = m.get("content") or ""
    if isinstance(c, list):                         # OpenAI content parts
        c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return str(c).strip()


def _render_jinja(template: str, messages: list[dict], bos: str,
                  add_generation_prompt: bool = True) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token="")


def _raise(msg):
    raise ValueError(msg)
