"""Chat formats: the model's own template, Gemma's published turns, or plain completion."""
import pytest

from slmkit.engines import GenStats, generate_text, open_engine
from slmkit.engines import chat_format
from slmkit.engines.chat_format import gemma_prompt
from slmkit.errors import SlmError
from slmkit.export import ExportConfig, run_export
from slmkit.models.tiny import tiny_slm

CONVO = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": " Hi there "},
         {"role": "assistant", "content": "Hello."},
         {"role": "user", "content": "안녕?"}]


def test_gemma_prompt_is_the_published_format():
    assert gemma_prompt(CONVO) == (
        "<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\n안녕?<end_of_turn>\n"
        "<start_of_turn>model\n")
    with pytest.raises(SlmError, match="alternating"):
        gemma_prompt([{"role": "assistant", "content": "x"}])


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory):
    slm = tiny_slm("gemma3_text")
    path = tmp_path_factory.mktemp("g") / "g.gguf"
    run_export(slm, path, ExportConfig(type="f16", parity_tokens=16))
    return slm, path


def test_gemma_without_template_gets_its_turns_on_both_engines(gemma_gguf, capsys):
    slm, path = gemma_gguf
    assert not getattr(slm.tokenizer, "chat_template", None)
    end = slm.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    for eng in (open_engine(slm), open_engine(str(path))):
        prompt = eng.chat_prompt(CONVO[1:])
        assert prompt.startswith("<start_of_turn>user\nHi there<end_of_turn>\n")
        assert prompt.endswith("<start_of_turn>model\n")
        assert end in eng.eos_ids                          # a reply ends at its turn's end
        ids = eng.tokenize(prompt)
        assert ids[0] == slm.tokenizer.bos_token_id and ids.count(end) == 3
        # the first <end_of_turn> it samples ends the reply
        first = next(iter(eng.token_ids(ids, 1, 0.0, 1.0, None, GenStats())))
        eng.eos_ids.add(first)
        text, stats = generate_text(eng, ids, max_tokens=8, temperature=0.0)
        assert stats.finish_reason == "stop" and stats.completion_tokens == 1 and text == ""
    assert "no chat template" not in capsys.readouterr().err


def test_unknown_format_is_plain_completion_with_one_note(capsys):
    slm = tiny_slm("llama")
    slm.tokenizer.chat_template = None
    slm.spec = "tiny-no-template"
    chat_format._noted.discard("tiny-no-template")
    eng = open_engine(slm)
    p1 = eng.chat_prompt(CONVO[1:2])
    p2 = eng.chat_prompt(CONVO[1:])
    assert p1 == "Hi there\n" and p2 == "Hi there\nHello.\n안녕?\n"
    assert "assistant" not in p2 and "user:" not in p2           # no invented roles
    err = capsys.readouterr().err
    assert err.count("no chat template") == 1
    open_engine(slm).chat_prompt(CONVO[1:2])                      # same model again: no repeat
    assert "no chat template" not in capsys.readouterr().err


def test_own_template_wins():
    slm = tiny_slm("llama")                                       # ChatML template
    p = open_engine(slm).chat_prompt(CONVO[1:2])
    assert p.startswith("<|im_start|>user\n") and p.endswith("<|im_start|>assistant\n")


@pytest.mark.real
def test_gemma3_270m_gets_gemma_turns_and_stops_on_end_of_turn():
    # The built-in file is the pretrained Gemma 3 270M (not the instruction-tuned one): its
    # replies are not reliable, so this checks the format and the stop token, not an answer.
    eng = open_engine("gemma3-270m", "pytorch")
    prompt = eng.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt == ("<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
                      "<start_of_turn>model\n")
    end = eng.tok.convert_tokens_to_ids("<end_of_turn>")
    assert end in eng.eos_ids
    ids = eng.tokenize(prompt)
    assert ids[:2] == [eng.tok.bos_token_id, eng.tok.convert_tokens_to_ids("<start_of_turn>")]
