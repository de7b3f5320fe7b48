"""The Ollama Modelfile: the Go template translated from a model's Jinja chat template
renders every conversation exactly as the Jinja template does (SmolLM2, Gemma 3), and a
template that cannot be translated is said so and left out."""
import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slmkit.engines.chat_format import gemma_prompt
from slmkit.export import ExportConfig, run_export
from slmkit.export.modelfile import modelfile, template_render, translate
from slmkit.models.catalog import CATALOG
from slmkit.models.tiny import tiny_slm

from .gotemplate import render as go_render

CONVS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a prime."}],
    [{"role": "user", "content": "def f(x):\n    return x"},
     {"role": "assistant", "content": "It returns its argument."},
     {"role": "user", "content": "And {{ .Role }} in a message?"},
     {"role": "assistant", "content": "Just text: ünïcödé ✓"},
     {"role": "user", "content": "Thanks."}],
    [{"role": "system", "content": "Line one.\nLine two."},
     {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
     {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
     {"role": "user", "content": "q3"}],
    [{"role": "system", "content": "Continue the answer."},
     {"role": "user", "content": "Count to three."},
     {"role": "assistant", "content": "One, two,"}],            # ends with the model's turn
    [{"role": "user", "content": "only a question"},
     {"role": "assistant", "content": "and an answer"}],
]


class VocabTok:
    """The two things the Modelfile reads from a tokenizer."""

    def __init__(self, tokens, eos):
        self.tokens, self.eos_token = tokens, eos

    def get_vocab(self):
        return {t: i for i, t in enumerate(self.tokens)}


def jinja_render(template, messages, add_generation_prompt):
    """The chat template as transformers renders it (BOS left to the tokenizer)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    return env.from_string(template).render(messages=messages, bos_token="", eos_token="",
                                            add_generation_prompt=add_generation_prompt)


def ollama_render(go, conv):
    return go_render(go, {"Messages": [{"Role": m["role"], "Content": m["content"]}
                                       for m in conv]})


def test_renderer_follows_go_template_rules():
    data = {"Messages": [{"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b"}],
            "System": "", "Prompt": "p"}
    t = ("{{- range $i, $_ := .Messages }}\n  {{- $last := eq (len (slice $.Messages $i)) 1 }}"
         "[{{ $i }}:{{ .Role }}{{ if $last }} last{{ end }}]\n{{- end }}"
         "{{ if .System }}S{{ else if eq .Prompt \"x\" \"p\" }}P{{ else }}N{{ end }}"
         "{{ (index .Messages 1).Content }}{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}"
         "{{/* note */}} {{- and 1 0 }}{{ or \"\" \"y\" }}{{ not .System }} -{{- \" t \" -}}  !")
    assert go_render(t, data) == "[0:user][1:assistant last]Pb20ytrue - t !"
    with pytest.raises(Exception):
        go_render("{{ upper .Prompt }}", data)                 # outside the subset: loud


def _builtin_template(name):
    from slmkit.models.gguf_meta import read_header
    from slmkit.models.io import builtin_available, builtin_gguf
    if not builtin_available(name):
        pytest.skip(f"{CATALOG[name].builtin} is not installed")
    return read_header(builtin_gguf(name)).metadata.get("tokenizer.chat_template")


def test_smollm2_template_renders_as_jinja():
    template = _builtin_template("smollm2-135m")
    assert template and "<|im_start|>" in template
    tok = VocabTok(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>")
    _, go = translate(template_render(tok, template))
    for conv in CONVS:
        gen = conv[-1]["role"] == "user"
        assert ollama_render(go, conv) == jinja_render(template, conv, gen), conv
    text, note = modelfile("smol.gguf", tok, template, 8192, system="Be brief.")
    assert note is None
    assert text.splitlines()[0] == "FROM ./smol.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 8192" in text
    assert text.rstrip().endswith('SYSTEM """Be brief."""')
    assert text.count('TEMPLATE """') == 1


def test_gemma3_template_renders_as_jinja():
    template = _builtin_template("gemma3-270m")
    tok = VocabTok(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<eos>")
    if template:                          # the model's own template, rendered by jinja2
        def reference(conv, gen):
            return jinja_render(template, conv, gen)
    else:                                 # the published Gemma 3 turn format slmkit uses
        def reference(conv, gen):
            text = gemma_prompt(conv)
            return text if gen else text[: -len("<start_of_turn>model\n")]
    pieces, go = translate(template_render(tok, template))
    assert pieces.system is None                          # folded into the first user turn
    for conv in CONVS:
        gen = conv[-1]["role"] == "user"
        assert ollama_render(go, conv) == reference(conv, gen), conv
    text, _ = modelfile("g.gguf", tok, template, 32768)
    assert 'PARAMETER stop "<end_of_turn>"' in text and 'PARAMETER stop "<eos>"' in text
    assert "SYSTEM" not in text


def test_untranslatable_template_is_said_and_left_out():
    numbered = "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}"
    tok = VocabTok(["<s>", "</s>"], "</s>")
    text, note = modelfile("m.gguf", tok, numbered, 2048)
    assert note and "cannot be translated" in note and "\n" not in note
    assert "TEMPLATE" not in text.replace(note, "") and f"# {note}" in text
    assert 'PARAMETER stop "</s>"' in text
    text, note = modelfile("m.gguf", tok, None, 2048)
    assert "no chat template" in note and "TEMPLATE" not in text.replace(note, "")


def test_gguf_export_writes_modelfile(tmp_path):
    slm = tiny_slm("llama")
    rep = run_export(slm, tmp_path / "tiny.gguf",
                     ExportConfig(type="f32", parity_tokens=0, system="You help with Python."))
    mf = (tmp_path / "Modelfile").read_text()
    assert rep["modelfile"]["path"] == str(tmp_path / "Modelfile")
    assert mf.startswith("FROM ./tiny.gguf\n")
    assert f"PARAMETER num_ctx {slm.model.config.max_position_embeddings}" in mf
    assert 'SYSTEM """You help with Python."""' in mf
    assert f'PARAMETER stop "{slm.tokenizer.eos_token}"' in mf
