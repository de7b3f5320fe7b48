from slmkit.engines import llama_lib

AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile amx_int8\n"
NO_AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"


def test_cpu_has_amx_reads_the_flags_line():
    assert llama_lib.cpu_has_amx(AMX)
    assert not llama_lib.cpu_has_amx(NO_AMX)
    assert not llama_lib.cpu_has_amx("model name\t: amx_tile in a name\n")


def test_repack_follows_the_cpu_unless_forced(monkeypatch):
    monkeypatch.delenv("SLMKIT_LLAMA_REPACK", raising=False)
    monkeypatch.setattr(llama_lib, "cpu_has_amx", lambda: True)
    assert not llama_lib.repack_enabled()
    monkeypatch.setattr(llama_lib, "cpu_has_amx", lambda: False)
    assert llama_lib.repack_enabled()
    monkeypatch.setenv("SLMKIT_LLAMA_REPACK", "0")
    assert not llama_lib.repack_enabled()
    monkeypatch.setenv("SLMKIT_LLAMA_REPACK", "1")
    monkeypatch.setattr(llama_lib, "cpu_has_amx", lambda: True)
    assert llama_lib.repack_enabled()


def test_default_params_carry_the_setting():
    lib = llama_lib.llama_cpp()
    want = llama_lib.repack_enabled()
    assert lib.llama_model_default_params().use_extra_bufts == want
    assert lib.llama_cpp.llama_model_default_params().use_extra_bufts == want
