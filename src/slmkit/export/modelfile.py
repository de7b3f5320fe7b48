"""An Ollama ``Modelfile`` beside an exported GGUF (``ollama create NAME -f Modelfile``).

It holds ``FROM ./model.gguf``, the chat template in Ollama's Go-template form,
``PARAMETER stop`` for every end-of-turn token, ``PARAMETER num_ctx`` and,
when one is given, ``SYSTEM``.

The template is translated from the model's Jinja chat template by what the
template does, not by parsing it: it is rendered on probe conversations with
marker contents, and the text around each marker gives the pieces of a
per-message template: the wrapper of each role, a default system turn written
when the conversation has none (SmolLM2), a system message folded into the first
user turn (Gemma 3, which has no system role) and the generation prompt. The
pieces are checked by predicting the Jinja render of further conversations
(multi-turn, with and without a system message, ending with a user or an
assistant turn); when a prediction misses, the template is reported as not
translatable and the Modelfile is written without ``TEMPLATE``.

Ollama hands the template every message, the system one included, as
``.Messages``; ``add_generation_prompt`` becomes "the last message is the
user's". The BOS token is left out: llama.cpp adds it when it tokenizes. A
template that trims message contents cannot be matched exactly (Go templates
cannot trim); that is said in a comment of the Modelfile.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engines.chat_format import END_OF_TURN, gemma_prompt, _render_jinja

MARK = {"system": "\u27e6S\u27e7", "user": "\u27e6U\u27e7", "assistant": "\u27e6A\u27e7",
        "user2": "\u27e6V\u27e7", "assistant2": "\u27e6B\u27e7"}


class Untranslatable(Exception):
    """The chat template does something the per-message Go template cannot."""


@dataclass(frozen=True)
class Pieces:
    """What a per-message chat template writes around each message."""

    user: tuple[str, str]
    assistant: tuple[str, str]
    system: tuple[str, str] | None       # own turn; None: folded into the first user turn
    fold: str                            # after a folded system text
    default_head: str                    # written first when there is no system message
    gen: str                             # the generation prompt
    trims: bool                          # the template strips contents

    def predict(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The render this template makes of ``messages`` (the Go template's meaning)."""
        out = []
        sys_text = None
        for i, m in enumerate(messages):
            role, text = m["role"], m["content"]
            if i == 0 and role != "system":
                out.append(self.default_head)
            if role == "system":
                if self.system is None:
                    sys_text = text
                else:
                    out.append(self.system[0] + text + self.system[1])
            elif role == "user":
                fold = sys_text + self.fold if i == 1 and sys_text is not None else ""
                out.append(self.user[0] + fold + text + self.user[1])
            else:
                out.append(self.assistant[0] + text + self.assistant[1])
        if add_generation_prompt:
            out.append(self.gen)
        return "".join(out)


def _m(role: str, key: str | None = None) -> dict:
    return {"role": role, "content": MARK[key or role]}


def _between(text: str, a: str | None, b: str | None) -> str:
    """The text after marker ``a`` (or the start) and before marker ``b`` (or the end)."""
    i = 0 if a is None else text.index(MARK[a]) + len(MARK[a])
    j = len(text) if b is None else text.index(MARK[b])
    if j < i:
        raise Untranslatable("the messages come out of order")
    return text[i:j]


def probe(render) -> Pieces:
    """The pieces of a chat template, from ``render(messages, add_generation_prompt)``."""
    try:
        u = render([_m("user")], False)
        ug = render([_m("user")], True)
        ua = render([_m("user"), _m("assistant")], False)
        uau = render([_m("user"), _m("assistant"), _m("user", "user2")], False)
        su = render([_m("system"), _m("user")], False)
        spaced = render([{"role": "user", "content": " x "}], False)
    except Untranslatable:
        raise
    except Exception as exc:                       # the template refused a probe
        raise Untranslatable(f"it refused a probe conversation ({exc})") from None
    if not ug.startswith(u):
        raise Untranslatable("the generation prompt is not appended at the end")
    for text, keys in ((u, ["user"]), (ua, ["user", "assistant"]),
                       (uau, ["user", "assistant", "user2"]), (su, ["system", "user"])):
        if any(text.count(MARK[k]) != 1 for k in keys):
            raise Untranslatable("a message content is not written exactly once")
    u_suf = _between(u, "user", None)
    a_suf = _between(ua, "assistant", None)
    mid = _between(uau, "assistant", "user2")
    if not mid.startswith(a_suf) or _between(uau, "user2", None) != u_suf:
        raise Untranslatable("turns are not written the same way at every position")
    u_pre = mid[len(a_suf):]
    first = _between(u, None, "user")
    if not first.endswith(u_pre):
        raise Untranslatable("the first user turn is written differently from later ones")
    a_pre = _between(ua, "user", "assistant")[len(u_suf):]
    if not _between(ua, "user", "assistant").startswith(u_suf):
        raise Untranslatable("the user turn's end differs before an assistant turn")
    s_left, s_mid = _between(su, None, "system"), _between(su, "system", "user")
    if s_mid.endswith(u_pre) and _between(su, "user", None) == u_suf:
        system, fold = (s_left, s_mid[: len(s_mid) - len(u_pre)]), ""
    elif s_left == u_pre:
        system, fold = None, s_mid
    else:
        raise Untranslatable("the system message is written in a way the translation "
                             "does not know")
    return Pieces(user=(u_pre, u_suf), assistant=(a_pre, a_suf), system=system, fold=fold,
                  default_head=first[: len(first) - len(u_pre)], gen=ug[len(u):],
                  trims=" x " not in spaced)


CHECKS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
     {"role": "user", "content": "e"}],
    [{"role": "system", "content": "S\nwith two lines"}, {"role": "user", "content": "q1"},
     {"role": "assistant", "content": "r1"}, {"role": "user", "content": "q2"}],
    [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
     {"role": "assistant", "content": "partial"}],
]


def translate(render) -> tuple[Pieces, str]:
    """Pieces and Go template of a chat template, checked on :data:`CHECKS`."""
    p = probe(render)
    for conv in CHECKS:
        gen = conv[-1]["role"] == "user"
        try:
            want = render(conv, gen)
        except Exception as exc:                   # the template refused a check conversation
            raise Untranslatable(f"it refused a conversation ({exc})") from None
        if p.predict(conv, gen) != want:
            raise Untranslatable("its render of a multi-turn conversation is not "
                                 "per-message")
    return p, go_template(p)


def _lit(s: str) -> str:
    if "{{" in s or '"""' in s:
        raise Untranslatable("its text holds '{{' or '\"\"\"'")
    return s


def go_template(p: Pieces) -> str:
    """The Ollama template for ``p`` (every message in ``.Messages``)."""
    out = ["{{ range $i, $_ := .Messages }}"
           "{{ $last := eq (len (slice $.Messages $i)) 1 }}"]
    if p.default_head:
        out.append('{{ if and (eq $i 0) (ne .Role "system") }}'
                   f"{_lit(p.default_head)}{{{{ end }}}}")
    if p.system is not None:
        out.append(f'{{{{ if eq .Role "system" }}}}{_lit(p.system[0])}{{{{ .Content }}}}'
                   f"{_lit(p.system[1])}")
    else:
        out.append('{{ if eq .Role "system" }}')
    fold = ("" if p.system is not None else
            '{{ if and (eq $i 1) (eq (index $.Messages 0).Role "system") }}'
            f"{{{{ (index $.Messages 0).Content }}}}{_lit(p.fold)}{{{{ end }}}}")
    out.append(f'{{{{ else if eq .Role "user" }}}}{_lit(p.user[0])}{fold}{{{{ .Content }}}}'
               f"{_lit(p.user[1])}{{{{ if $last }}}}{_lit(p.gen)}{{{{ end }}}}")
    out.append(f'{{{{ else if eq .Role "assistant" }}}}{_lit(p.assistant[0])}{{{{ .Content }}}}'
               f"{_lit(p.assistant[1])}{{{{ end }}}}{{{{ end }}}}")
    return "".join(out)


def template_render(tokenizer, template: str | None):
    """``render(messages, add_generation_prompt)`` for the model's chat format (no BOS)."""
    if template:
        def render(messages, gen):
            return _render_jinja(template, messages, "", add_generation_prompt=gen)
        return render
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    if all(t in vocab for t in ("<start_of_turn>", "<end_of_turn>")):
        def gemma(messages, gen):
            text = gemma_prompt(messages)
            return text if gen else text[: -len("<start_of_turn>model\n")]
        return gemma
    return None


def stop_tokens(tokenizer) -> list[str]:
    """Every end-of-turn token the vocabulary holds, and the EOS token."""
    vocab = tokenizer.get_vocab()
    stops = [t for t in END_OF_TURN if t in vocab]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in stops:
        stops.append(eos)
    return stops


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(gguf_name: str, tokenizer, template: str | None, num_ctx: int,
              system: str | None = None) -> tuple[str, str | None]:
    """The Modelfile text and a one-line note when the template was left out."""
    lines = [f"FROM ./{gguf_name}"]
    note = None
    render = template_render(tokenizer, template)
    if render is None:
        note = "the model has no chat template; the Modelfile has no TEMPLATE"
    else:
        try:
            pieces, go = translate(render)
            if pieces.trims:
                lines.append("# the model's template strips spaces around message contents; "
                             "this one keeps them")
            lines.append(f'TEMPLATE """{go}"""')
        except Untranslatable as exc:
            note = (f"the chat template cannot be translated for Ollama ({exc}); "
                    "the Modelfile has no TEMPLATE")
    for t in stop_tokens(tokenizer):
        lines.append(f"PARAMETER stop {_quote(t)}")
    lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    if system:
        if '"""' in system:
            raise ValueError('the system prompt may not hold """')
        lines.append(f'SYSTEM """{system}"""')
    if note:
        lines.insert(1, f"# {note}")
    return "\n".join(lines) + "\n", note


def write_modelfile(slm, gguf_path: Path, system: str | None = None) -> dict:
    """Write ``Modelfile`` beside ``gguf_path``; returns what went into it."""
    tok = slm.tokenizer
    ctx = int(getattr(slm.model.config, "max_position_embeddings", 2048))
    template = getattr(tok, "chat_template", None)
    text, note = modelfile(gguf_path.name, tok, template if isinstance(template, str) else None,
                           ctx, system)
    path = gguf_path.with_name("Modelfile")
    path.write_text(text, encoding="utf-8")
    return {"path": str(path), "template": "TEMPLATE" in text, "note": note,
            "stop": stop_tokens(tok), "num_ctx": ctx}
