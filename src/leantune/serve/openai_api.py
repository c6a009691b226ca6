"""The OpenAI-compatible HTTP API (FastAPI), with vLLM's names for loading and unloading adapters so tooling
written for vLLM works: /v1/models, /v1/chat/completions, /v1/completions, /v1/load_lora_adapter,
/v1/unload_lora_adapter, /health, /metrics.

Wire format as OpenAI's SDKs expect it: server-sent events with one `id` in every chunk, the role in the first
delta, `finish_reason` in the last choice chunk, with `stream_options.include_usage` a final chunk with
`choices: []` and `usage`, then `data: [DONE]`. Errors are `{"error": {"message", "type", "param", "code"}}`.
Unknown request fields are ignored (SDKs send many)."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, Field

from ..errors import UserError
from .adapters import BASE_KEY, AdapterNames, ModelNotFound, Resolved
from .engine import Engine, QueueFull, Sampling, next_id
from .engine import Request as EngineRequest
from .observe import Metrics, RequestLog
from .text_stream import MAX_STOPS


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


class _Sampled(BaseModel):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = 1
    user: str | None = None


class ChatRequest(_Sampled):
    messages: list[dict] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampled):
    prompt: str | list[str]


class LoadAdapter(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadAdapter(BaseModel):
    lora_name: str = Field(min_length=1)


@dataclass
class Server:
    engine: Engine
    names: AdapterNames
    api_key: str | None = None
    request_log: RequestLog | None = None
    default_max_tokens: int = 256
    started: int = field(default_factory=lambda: int(time.time()))
    say: object = print

    def __post_init__(self):
        self.metrics = Metrics(self.engine.queue_depth, lambda: len(self.engine.loaded))


def _text(content) -> str:
    """A message's content: a string, or OpenAI's list of parts (text parts only)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = [p for p in content if p.get("type") == "text"]
        if len(parts) != len(content):
            raise APIError(400, "Only text message parts are supported by this server.", param="messages")
        return "".join(p.get("text", "") for p in parts)
    raise APIError(400, "A message's content must be a string or a list of text parts.", param="messages")


def _messages(raw: list[dict]) -> list[dict]:
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
            raise APIError(400, f"messages[{i}] needs a role of system, user or assistant.", param=f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _text(m.get("content"))})
    return out


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="leantune serve", docs_url=None, redoc_url=None)
    engine, names = server.engine, server.names
    tokenizer = engine.tokenizer

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return APIError(400, f"{param or 'request'}: {first.get('msg', 'invalid request')}", param=param).response()

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        expected = f"Bearer {server.api_key}"
        if server.api_key and request.url.path.startswith("/v1/") and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), expected.encode()):
            return APIError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                            "authentication_error", code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health():
        if not engine.alive():
            raise APIError(503, "The generation thread has stopped.", "server_error")
        return {"status": "ok", "loaded_adapters": len(engine.loaded), "queue_depth": engine.queue_depth()}

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        def card(model_id, parent=None, root=None, **extra):
            return {"id": model_id, "object": "model", "created": server.started, "owned_by": "leantune",
                    "root": root or model_id, "parent": parent, **extra}

        data = [card(names.base_name, root=names.base_spec)]
        for alias, reference in list(names.aliases.items()):
            data.append(card(alias, parent=names.base_name, root=reference))
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter")
    async def load_adapter(body: LoadAdapter):
        try:
            target = names.add(body.lora_name, body.lora_path, replace=body.load_inplace)
        except ModelNotFound as e:
            raise APIError(404, str(e), code="model_not_found", param="lora_path") from None
        except UserError as e:
            raise APIError(400, str(e), param="lora_name") from None
        try:
            await engine.control(lambda: engine.ensure_loaded(target))
        except Exception as e:  # noqa: BLE001 - a broken adapter folder: say so, serve nothing under the name
            names.aliases.pop(body.lora_name, None)
            raise APIError(400, f"Could not load {body.lora_path}: {e}", param="lora_path") from None
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(body: UnloadAdapter):
        try:
            reference = names.aliases.get(body.lora_name)
            names.remove(body.lora_name)
        except ModelNotFound as e:
            raise APIError(404, str(e), code="model_not_found", param="lora_name") from None
        try:
            key = names.resolve_reference(reference).key
            await engine.control(lambda: engine.unload_unpinned({key}))  # in use: stays until its requests end
        except UserError:
            pass  # the reference no longer resolves: nothing of it can be loaded
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    def resolve(model: str) -> Resolved:
        try:
            return names.resolve(model)
        except ModelNotFound as e:
            raise APIError(404, str(e), code="model_not_found", param="model") from None
        except UserError as e:
            raise APIError(400, str(e), param="model") from None

    def sampling(body: _Sampled, prompt_len: int, max_tokens: int | None, default: int) -> Sampling:
        if body.n != 1:
            raise APIError(400, "n must be 1 on this server (send several requests instead).", param="n")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise APIError(400, f"stop takes up to {MAX_STOPS} non-empty strings.", param="stop")
        room = engine.context - prompt_len
        if room <= 0:
            raise APIError(413, f"The prompt is {prompt_len} tokens; this model's context is {engine.context}. "
                                "Shorten it.", param="messages", code="context_length_exceeded")
        return Sampling(min(max_tokens or default, room), body.temperature, body.top_p, body.seed, tuple(stops))

    async def run(raw: Request, body: _Sampled, prompt_ids: list[int], max_tokens, default: int, chat: bool,
                  logged_prompt):
        target = resolve(body.model)
        params = sampling(body, len(prompt_ids), max_tokens, default)
        request = EngineRequest(prompt_ids, target, params, asyncio.get_running_loop())
        try:
            engine.submit(request)
        except QueueFull as e:
            server.metrics.failed(body.model, 429)
            raise APIError(429, str(e), "rate_limit_exceeded", code="rate_limit_exceeded") from None
        rid = next_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        usage_chunk = bool((body.stream_options or {}).get("include_usage"))
        obj = "chat.completion" if chat else "text_completion"
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"  # what OpenAI calls a streamed piece

        def finished(answer: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
            latency = time.perf_counter() - request.submitted
            server.metrics.answered(body.model, prompt_tokens, completion_tokens, latency, request.first_token_s)
            if server.request_log is not None:
                server.request_log.write(body.model, {
                    "adapter": target.label, "key": target.key if target.key != BASE_KEY else None,
                    "run_id": target.run_id, "version": target.version, "prompt": logged_prompt, "answer": answer,
                    "finish_reason": finish, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "latency_s": round(latency, 4)})
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}

        def chunk(delta_text: str | None, finish: str | None = None, first: bool = False) -> str:
            if chat:
                delta = ({"role": "assistant", "content": ""} if first else
                         {} if delta_text is None else {"content": delta_text})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish}
            body_ = {"id": rid, "object": chunk_obj, "created": created, "model": body.model,
                     "choices": [choice]}
            if usage_chunk:
                body_["usage"] = None
            return f"data: {json.dumps(body_)}\n\n"

        if body.stream:
            async def events():
                parts: list[str] = []
                try:
                    if chat:
                        yield chunk(None, first=True)
                    while True:
                        kind, *rest = await request.events.get()
                        if kind == "delta":
                            parts.append(rest[0])
                            yield chunk(rest[0])
                        elif kind == "error":
                            server.metrics.failed(body.model, rest[0])
                            err = {"error": {"message": rest[1], "type": "server_error", "param": None, "code": None}}
                            yield f"data: {json.dumps(err)}\n\n"
                            break
                        else:
                            finish, prompt_tokens, completion_tokens = rest
                            usage = finished("".join(parts), finish, prompt_tokens, completion_tokens)
                            yield chunk(None if chat else "", finish)
                            if usage_chunk:
                                yield f"data: {json.dumps({'id': rid, 'object': chunk_obj, 'created': created, 'model': body.model, 'choices': [], 'usage': usage})}\n\n"
                            break
                    yield "data: [DONE]\n\n"
                finally:
                    request.cancelled = True  # a client that went away frees its row at the next step

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        parts = []
        try:
            while True:
                try:
                    kind, *rest = await asyncio.wait_for(request.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await raw.is_disconnected():
                        return Response(status_code=499)
                    continue
                if kind == "delta":
                    parts.append(rest[0])
                elif kind == "error":
                    server.metrics.failed(body.model, rest[0])
                    raise APIError(rest[0], rest[1], "server_error")
                else:
                    break
        finally:
            request.cancelled = True
        finish, prompt_tokens, completion_tokens = rest
        answer = "".join(parts)
        usage = finished(answer, finish, prompt_tokens, completion_tokens)
        choice = ({"index": 0, "message": {"role": "assistant", "content": answer}, "logprobs": None,
                   "finish_reason": finish} if chat else
                  {"index": 0, "text": answer, "logprobs": None, "finish_reason": finish})
        return {"id": rid, "object": obj, "created": created, "model": body.model, "choices": [choice], "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request, body: ChatRequest):
        messages = _messages(body.messages)
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - the template's own complaint (e.g. roles out of order)
            raise APIError(400, f"The chat template refused these messages: {e}", param="messages") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return await run(raw, body, ids, body.max_completion_tokens or body.max_tokens, server.default_max_tokens,
                         True, messages)

    @app.post("/v1/completions")
    async def completions(raw: Request, body: CompletionRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, "Send one prompt per request on this server.", param="prompt")
        ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
        if not ids:
            raise APIError(400, "The prompt is empty.", param="prompt")
        return await run(raw, body, ids, body.max_tokens, 16, False, prompts[0])  # 16: OpenAI's default here

    return app
