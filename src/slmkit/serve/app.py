"""The OpenAI-compatible HTTP app, built by ``create_app(cfg)`` (run by ``serve.run``).

Endpoints: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``
(``stream: true`` answers with server-sent events in OpenAI's chunk format,
ending ``data: [DONE]``), ``/health``, ``/metrics`` (Prometheus text) and the
chat page at ``/``. Generation runs in one worker thread that decodes every
request holding a slot in one batch (see ``scheduler``); the event loop only
parses, validates, admits and relays text.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engines import open_engine
from ..engines.batching import Feed
from ..engines.hf_batch import HFBatch
from ..engines.hf_batch import kv_bytes_per_token as hf_kv_bytes
from ..engines.llamacpp_batch import LlamaCppBatch
from ..engines.llamacpp_batch import kv_bytes_per_token as llamacpp_kv_bytes
from .config import ServeConfig
from .guard import Guard
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .scheduler import Job, QueueFull, Scheduler, ShuttingDown
from .models import Served, open_model_slots
from .sizing import size_slots
from .schemas import ApiError, ChatRequest, CompletionRequest, parse

CHAT_DEFAULT_MAX = 512          # completion budget of a chat request that names none
COMPLETION_DEFAULT_MAX = 16     # OpenAI's default for /v1/completions
KEY_FIELD_HIDDEN, KEY_FIELD_SHOWN = '<label id="key-label" hidden>', '<label id="key-label">'
RETRY_AFTER_S = 1               # what a 429 tells the client to wait
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'")


class ServerState:
    """Everything one app owns: config, the models served (each with its batched engine and
    scheduler), metrics, drain flag. ``engine``, ``ctx``, ``scheduler`` and ``model_id``
    are the base model's (the first)."""

    def __init__(self, cfg: ServeConfig, slots):
        self.cfg = cfg
        self.created = int(time.time())
        self.draining = False
        self.metrics = Metrics(lambda: sum(m.scheduler.queue_depth for m in self.models.values()),
                               lambda: sum(m.scheduler.n_active for m in self.models.values()))
        batches = slots if isinstance(slots, dict) else {cfg.model_id(): slots}
        self.models = {mid: Served(self, mid, b) for mid, b in batches.items()}
        base = next(iter(self.models.values()))
        self.model_id, self.engine, self.ctx = base.model_id, base.engine, base.ctx
        self.vocab, self.scheduler = base.vocab, base.scheduler

    def _first_token(self, job: Job) -> None:
        self.metrics.ttft.observe(job.t_first - job.t_submit)
        self.metrics.queue_wait.observe((job.t_start or job.t_first) - job.t_submit)

    def pick(self, name: str, param: str | None = "model") -> Served:
        """The served model a request names, or a 400 (404 for a path) listing them."""
        if name in self.models:
            return self.models[name]
        have = ", ".join(f"'{m}'" for m in self.models)
        raise ApiError(400 if param else 404,
                       f"model '{name}' does not exist; this server has {have}",
                       param, "model_not_found")


def open_slots(cfg: ServeConfig):
    """The batched engine holding every slot: ``LlamaCppBatch`` for GGUF, else ``HFBatch``.

    Slots and context per slot come from ``cfg`` or, where it leaves them
    unset, from the machine's memory (``serve.sizing``). One token is
    generated before the server opens, so the first request does not pay for
    buffer allocation.
    """
    engine = open_engine(cfg.model, cfg.engine, n_ctx=256, n_threads=cfg.n_threads,
                         device=cfg.device, adapter=cfg.adapter)
    if engine.name == "llama.cpp":
        kv, train_ctx = llamacpp_kv_bytes(engine), int(engine.llm._model.n_ctx_train())
    else:
        kv, train_ctx = hf_kv_bytes(engine), int(engine.context_length)
    n_slots, ctx = size_slots(kv, cfg.ctx, train_ctx, cfg.max_concurrency)
    if engine.name == "llama.cpp":
        batch = LlamaCppBatch(engine, n_slots, ctx, n_batch=max(cfg.step_tokens, n_slots),
                              n_threads=cfg.n_threads)
    else:
        batch = HFBatch(engine, n_slots, ctx)
    slot, _ = batch.start([0], engine.tokenize("Hello"))
    batch.set_sampler(slot, 0.0, 1.0, None)
    batch.decode([Feed(slot, engine.tokenize("Hello"), True)])
    batch.release(slot)
    return batch


def create_app(cfg: ServeConfig, slots=None) -> FastAPI:
    """Build the app for ``cfg``, opening the model unless ``slots`` (a batched engine) is given.

    Args:
        cfg: server settings.
        slots: the batched engine to use (see :func:`open_slots`).
    """
    if slots is None:
        slots = open_model_slots(cfg, open_slots, size_slots)
    st = ServerState(cfg, slots)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        st.draining = True
        for m in st.models.values():
            m.scheduler.close()

    app = FastAPI(title="slmkit", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.slm = st
    app.add_middleware(Guard, state=st)
    _add_error_handlers(app)
    _add_routes(app, st)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        err = ApiError(exc.status_code, str(exc.detail), code=str(exc.status_code))
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        err = ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return JSONResponse(err.body(), status_code=500)


def _add_routes(app: FastAPI, st: ServerState) -> None:
    page = files("slmkit.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    if st.cfg.api_key:                       # the key field shows only where a key is needed
        page = page.replace(KEY_FIELD_HIDDEN, KEY_FIELD_SHOWN)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP,
                                           "X-Content-Type-Options": "nosniff",
                                           "Cache-Control": "no-store"})

    @app.get("/health")
    async def health():
        body = {"status": "draining" if st.draining else "ok", "model": st.model_id,
                "active": sum(m.scheduler.n_active for m in st.models.values()),
                "queued": sum(m.scheduler.queue_depth for m in st.models.values())}
        return JSONResponse(body, status_code=503 if st.draining else 200)

    @app.get("/metrics")
    async def metrics():
        return Response(st.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(m) for m in st.models.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        return _model_card(st.pick(model_id, param=None))

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await _json(request))
        sv = st.pick(req.model)
        ids = _prompt_ids(sv, req.prompt)
        budget = _budget(sv, len(ids), req.max_tokens, COMPLETION_DEFAULT_MAX, "prompt")
        return await _run(request, sv, req, ids, budget, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse(ChatRequest, await _json(request))
        sv = st.pick(req.model)
        try:
            prompt = sv.engine.chat_prompt([m.as_dict() for m in req.messages])
        except Exception as exc:          # the model's own template refused the messages
            raise ApiError(400, f"messages: the chat template refused them ({exc})",
                           "messages") from None
        ids = sv.engine.tokenize(prompt)
        asked = req.max_completion_tokens or req.max_tokens
        budget = _budget(sv, len(ids), asked, CHAT_DEFAULT_MAX, "messages")
        return await _run(request, sv, req, ids, budget, chat=True)


def _model_card(sv: Served) -> dict:
    card = {"id": sv.model_id, "object": "model", "created": sv.created, "owned_by": "slmkit",
            "context_length": sv.ctx}
    if sv.model_id != sv.parent.model_id:
        card["parent"] = sv.parent.model_id          # an adapter on the base
    return card


async def _json(request: Request):
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text)
        json.dumps(body, ensure_ascii=False).encode("utf-8")    # no lone surrogates
        return body
    except UnicodeEncodeError:
        raise ApiError(400, "the request body holds an unpaired surrogate escape") from None
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None


def _prompt_ids(st: ServerState, prompt) -> list[int]:
    if isinstance(prompt, str):
        return st.engine.tokenize(prompt)
    if any(t >= st.vocab for t in prompt):
        raise ApiError(400, f"prompt: token ids must be below the vocabulary size {st.vocab}",
                       "prompt", "invalid_value")
    return list(prompt)


def _budget(st: ServerState, n_prompt: int, asked: int | None, default: int,
            prompt_param: str) -> int:
    """Completion tokens for this request: ``asked`` if it fits, else a 400."""
    limit = st.cfg.max_tokens
    if n_prompt >= st.ctx:
        raise ApiError(400, f"this model's maximum context length is {st.ctx} tokens, but the "
                       f"{prompt_param} has {n_prompt}", prompt_param, "context_length_exceeded")
    room = st.ctx - n_prompt
    if asked is None:
        return min(default, room, limit)
    if asked > limit:
        raise ApiError(400, f"max_tokens is {asked}, but this server allows at most {limit}",
                       "max_tokens", "max_tokens_exceeded")
    if asked > room:
        raise ApiError(400, f"this model's maximum context length is {st.ctx} tokens; "
                       f"{n_prompt} in the {prompt_param} plus max_tokens {asked} exceed it",
                       "max_tokens", "context_length_exceeded")
    return asked


async def _run(request: Request, st: ServerState, req, ids: list[int], budget: int, chat: bool):
    """Admit the job (429/503 at once if it cannot wait) and answer streamed or whole."""
    job = Job(prompt_ids=ids, max_tokens=budget, temperature=req.temperature, top_p=req.top_p,
              seed=req.seed, stop=list(req.stop or []), loop=asyncio.get_running_loop())
    try:
        st.scheduler.submit(job)
    except QueueFull:
        raise ApiError(429, "the server is at capacity (all slots busy and the queue full); "
                       "retry shortly", code="rate_limit_exceeded", type="rate_limit_error",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except ShuttingDown:
        raise ApiError(503, "the server is shutting down", type="server_error") from None
    request.state.job = job                   # the access log reads its token counts
    endpoint = request.url.path
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _sse(st, job, rid, req.model, chat, usage, endpoint)
        return JobStream(events, job=job, state=st,
                         media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await _whole(request, st, job, rid, req.model, chat, endpoint)


class JobStream(StreamingResponse):
    """A streaming response that cancels its job however it ends (done, disconnect, error)."""

    def __init__(self, content, *, job: Job, state: ServerState, **kw):
        super().__init__(content, **kw)
        self.job, self.state, self.scheduler = job, state, state.scheduler

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.scheduler.cancel(self.job)
            try:
                await self.body_iterator.aclose()
            except RuntimeError:              # still running in a cancelled task: it ends there
                pass
            _account(self.state, self.job, scope["path"])


async def _whole(request, st, job, rid, model, chat, endpoint) -> JSONResponse:
    """Collect a whole completion; a client that hangs up cancels it."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, st.scheduler, job))
    parts: list[str] = []
    try:
        while True:
            kind, payload = await job.out.get()
            if kind == "text":
                parts.append(payload)
            elif kind == "done":
                job.finished = True
                break
            else:
                raise _job_error(kind, payload)
    finally:
        watcher.cancel()
        st.scheduler.cancel(job)
        _account(st, job, endpoint)
    text = "".join(parts)
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}}
              if chat else {"index": 0, "text": text})
    choice.update(logprobs=None, finish_reason=job.stats.finish_reason)
    return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": model, "system_fingerprint": None,
                         "choices": [choice], "usage": _usage(job)})


async def _cancel_on_disconnect(request: Request, scheduler: Scheduler, job: Job) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scheduler.cancel(job)
            return


async def _sse(st, job, rid, model, chat, include_usage, endpoint):
    """OpenAI's chunk stream: ``data: {json}\\n\\n`` per piece, then ``data: [DONE]``."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())

    def chunk(piece: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else (
                {"content": piece} if piece is not None else {})
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": piece or ""}
        choice.update(logprobs=None, finish_reason=finish)
        return _event({"id": rid, "object": obj, "created": created, "model": model,
                       "system_fingerprint": None, "choices": [choice]})

    if chat:
        yield chunk(None, role=True)
    while True:
        kind, payload = await job.out.get()
        if kind == "text":
            yield chunk(payload)
            continue
        if kind == "done":
            job.finished = True
            _account(st, job, endpoint)
            yield chunk(None, finish=job.stats.finish_reason)
            if include_usage:
                yield _event({"id": rid, "object": obj, "created": created, "model": model,
                              "choices": [], "usage": _usage(job)})
        else:
            yield _event(_job_error(kind, payload).body())
        yield "data: [DONE]\n\n"
        return


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _job_error(kind: str, payload) -> ApiError:
    if kind == "cancelled" or isinstance(payload, ShuttingDown):
        return ApiError(503, "the request was cancelled (server shutting down)",
                        type="server_error")
    return ApiError(500, f"generation failed: {type(payload).__name__}: {payload}",
                    type="server_error")


def _usage(job: Job) -> dict:
    s = job.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens}


def _account(st: ServerState, job: Job, endpoint: str) -> None:
    """Record a job's tokens once, however it ended; latency only for finished ones."""
    if job.accounted:
        return
    job.accounted = True
    m = st.metrics
    m.prompt_tokens.inc(job.stats.prompt_tokens)
    m.completion_tokens.inc(job.stats.completion_tokens)
    if job.finished:
        m.latency.labels(endpoint).observe(time.perf_counter() - job.t_submit)
    else:
        m.cancelled.inc()
