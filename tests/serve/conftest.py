"""Servers on 127.0.0.1 (free ports) over a tiny random model saved to a temp directory."""
import pytest

from slmkit.models.io import save
from slmkit.models.tiny import tiny_slm
from slmkit.serve import BackgroundServer, ServeConfig

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Llama-family model saved as an HF directory (what `slm generate` reads)."""
    return save(tiny_slm("llama", seed=3), tmp_path_factory.mktemp("serve") / "tiny-llama")


def start(tiny_dir, **kw) -> BackgroundServer:
    kw.setdefault("max_concurrency", 2)
    kw.setdefault("max_queue", 4)
    cfg = ServeConfig(model=str(tiny_dir), port=0, engine="pytorch", ctx=512, max_tokens=400,
                      max_body_bytes=64 * 1024, **kw)
    return BackgroundServer(cfg).start()


@pytest.fixture(scope="module")
def server(tiny_dir):
    srv = start(tiny_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def api_key():
    return API_KEY


@pytest.fixture(scope="module")
def keyed_server(tiny_dir):
    srv = start(tiny_dir, api_key=API_KEY)
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tiny_dir):
    """Start servers with settings of the test's choosing; all stopped at teardown."""
    servers = []

    def make(**kw):
        servers.append(start(tiny_dir, **kw))
        return servers[-1]
    yield make
    for srv in servers:
        srv.stop(timeout=10)


@pytest.fixture
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
