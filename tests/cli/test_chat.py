"""slm chat and slm generate at the edges: a history longer than the context, a prompt
longer than it, Ctrl-C in a reply, the /commands, and the note on a cut reply."""
import json
import subprocess
import sys
import time

import pytest

import slmkit
from slmkit.engines import GenStats, open_engine, stream_text
from slmkit.engines.base import PromptTooLong
from slmkit.engines.conversation import Conversation
from slmkit.models.tiny import tiny_slm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    slm = tiny_slm("llama")
    slm.model.config.max_position_embeddings = 256          # the context the chat must fit
    return slmkit.save(slm, tmp_path_factory.mktemp("chat") / "tiny")


@pytest.fixture(scope="module")
def eng(tiny_dir):
    return open_engine(str(tiny_dir), device="cpu")


def test_history_drops_oldest_turns_keeps_system(eng):
    conv = Conversation(eng, system="You answer in one line.", max_tokens=32)
    assert eng.context_length == 256
    total_dropped = 0
    for i in range(30):
        ids, dropped = conv.ask(f"question number {i} about lists and tuples in Python?")
        total_dropped += dropped
        assert len(ids) + conv.reply_room() <= eng.context_length
        stats = GenStats()
        text = "".join(stream_text(eng, ids, max_tokens=32, temperature=0, stats=stats,
                                   ignore_eos=True))
        conv.answer(text)
        assert conv.history()[0] == {"role": "system", "content": "You answer in one line."}
        assert conv.messages[0]["role"] == "user"              # whole turns went
    assert total_dropped == conv.dropped > 0
    assert conv.messages[-2]["content"].startswith("question number 29")


def test_prompt_longer_than_context(eng):
    conv = Conversation(eng, max_tokens=16)
    conv.ask("short question")
    conv.answer("short answer")
    with pytest.raises(PromptTooLong, match="context holds 256"):
        conv.ask("word " * 400)
    assert [m["content"] for m in conv.messages] == ["short question", "short answer"]
    with pytest.raises(PromptTooLong):
        list(stream_text(eng, "word " * 400, max_tokens=4))


def test_reply_stops_at_the_context_end(eng):
    ids = eng.tokenize("word " * 200)[:240]
    stats = GenStats()
    list(stream_text(eng, ids, max_tokens=100, temperature=0, stats=stats, ignore_eos=True))
    assert stats.completion_tokens == 256 - len(ids) and stats.finish_reason == "length"


def test_save_appends_chat_records(eng, tmp_path):
    conv = Conversation(eng, system="sys", max_tokens=8)
    conv.ask("hello")
    conv.answer("hi there")
    conv.save(tmp_path / "c.jsonl")
    conv.save(tmp_path / "c.jsonl")
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["messages"] == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"}]


def _slm(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "slmkit", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_generate_prompt_too_long_is_one_line(tiny_dir):
    r = _slm("generate", str(tiny_dir), "word " * 400, "--device", "cpu")
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "context holds 256" in errors[0] and "--ctx" in errors[0], out


def test_piped_chat_commands_and_cut_note(tiny_dir, tmp_path):
    script = "\n".join(["/help", "hello there", "/system Be brief.", f"/save {tmp_path}/s.jsonl",
                        "/reset", "again", "/exit", "never read"]) + "\n"
    r = _slm("chat", str(tiny_dir), "-n", "5", "--temperature", "0", stdin=script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "/system TEXT" in r.stdout                       # /help is not sent to the model
    assert r.stdout.count("(reply cut at --max-tokens 5)") == 2
    saved = json.loads((tmp_path / "s.jsonl").read_text())["messages"]
    assert saved[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]


@pytest.fixture
def spawn():
    """Start ``slm chat`` in a pseudo-terminal; every child still alive when the test
    ends (passed or failed) is closed, so a failed expect leaves no process behind."""
    pexpect = pytest.importorskip("pexpect")
    children = []

    def start(model_dir, *args):
        child = pexpect.spawn(sys.executable, ["-m", "slmkit", "chat", str(model_dir),
                                               "--temperature", "0", "--device", "cpu", *args],
                              encoding="utf-8", timeout=180, dimensions=(40, 200))
        children.append(child)
        return child

    yield start
    for child in children:
        if child.isalive():
            child.close(force=True)


def test_terminal_chat_of_30_turns(tiny_dir, spawn):
    child = spawn(tiny_dir, "-n", "24", "--system", "Be brief.")
    child.expect("you> ")
    seen = ""
    for i in range(30):
        child.sendline(f"turn {i}: tell me about Python lists please")
        child.expect("you> ")
        seen += child.before
    assert seen.count("older turns dropped to fit the 256-token context") == 1
    assert seen.count("model> ") == 30
    child.sendline("/exit")
    child.expect(__import__("pexpect").EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_and_keeps_the_chat(tmp_path, spawn):
    slm = tiny_slm("llama")
    slm.model.config.max_position_embeddings = 1 << 16        # a reply that would run minutes
    long_dir = slmkit.save(slm, tmp_path / "long")
    child = spawn(long_dir, "-n", "60000")
    child.expect("you> ")
    child.sendline("write a very long story")
    child.expect("model> ")
    time.sleep(3)                                           # the reply is streaming
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect("you> ")
    child.sendline("/save " + str(tmp_path / "kept.jsonl"))
    child.expect("you> ")
    child.sendline("/exit")
    child.expect(__import__("pexpect").EOF)
    child.close()
    assert child.exitstatus == 0
    kept = json.loads((tmp_path / "kept.jsonl").read_text())["messages"]
    assert [m["role"] for m in kept] == ["user", "assistant"]     # the partial reply stays
