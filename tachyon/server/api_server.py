"""The FastAPI app (`build_app`) and `run_server(args)`, which `tachyon serve` calls: loads the
engine, then serves it with uvicorn until SIGTERM/SIGINT. Shutdown is graceful: new connections
are refused at once, requests in flight get --shutdown-timeout seconds to finish, then the rest are
aborted in the engine and end cleanly (a stream with a finish_reason "abort" chunk and [DONE], a
response not yet started with a 503 in OpenAI's error shape), and the process exits 0."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import tachyon
from tachyon.engine.async_engine import AsyncLLMEngine
from tachyon.entrypoints.engine_args import engine_config_from_args
from tachyon.server.errors import error_response, install_error_handlers
from tachyon.server.generation import ServerContext
from tachyon.server.kv_transfer import ServerKVTransfer
from tachyon.server.metrics import ServerMetrics
from tachyon.server.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from tachyon.server.serving_chat import create_chat_completion, render_chat
from tachyon.server.serving_completions import create_completion

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
OPEN_PATHS = frozenset({"/health", "/version", "/metrics"})
# after the grace period aborts them, requests end within milliseconds; uvicorn cancels whatever is
# still stuck (a client that stopped reading) this much later
ABORTED_REQUESTS_EXIT_S = 5.0


def build_app(ctx: ServerContext, api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        logger.info("shutting down the engine")
        if ctx.kv_transfer is not None:
            ctx.kv_transfer.close()
        await asyncio.to_thread(ctx.engine.shutdown)

    app = FastAPI(title="tachyon", version=_version(), lifespan=lifespan)
    app.state.ctx = ctx
    install_error_handlers(app)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    _add_generation_routes(app, ctx)
    _add_info_routes(app, ctx)
    return app


class APIKeyMiddleware:
    """Plain ASGI (not BaseHTTPMiddleware, which hides client disconnects from the handlers)."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                await error_response("invalid or missing API key", 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _add_generation_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw_request: Request):
        return await create_completion(ctx, req, raw_request)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw_request: Request):
        return await create_chat_completion(ctx, req, raw_request)


def _add_info_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict:
        return {"version": _version()}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": ctx.model_name, "object": "model", "created": 0, "owned_by": "tachyon"}
        return {"object": "list", "data": [{**card, "root": ctx.model_name, "max_model_len": ctx.max_model_len}]}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict:
        ctx.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            return error_response("give exactly one of prompt or messages", 400, "prompt")
        if req.messages is not None:
            tokens = await asyncio.to_thread(render_chat, ctx, req.messages, None, req.add_generation_prompt)
        else:
            tokens = ctx.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": ctx.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict:
        ctx.check_model(req.model)
        vocab_size = len(ctx.tokenizer)
        bad = [t for t in req.tokens if not 0 <= t < vocab_size]
        if bad:
            return error_response(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})", 400, "tokens")
        return {"prompt": ctx.tokenizer.decode(req.tokens)}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _version() -> str:
    return getattr(tachyon, "__version__", "0.1.0")


def load_chat_template(value: str | None) -> str | None:
    """--chat-template: a file path or the template itself."""
    if value is None or not os.path.isfile(value):
        return value
    with open(value, encoding="utf-8") as f:
        return f.read()


def served_model_name(args: argparse.Namespace) -> str:
    if args.served_model_name:
        return args.served_model_name
    if args.model is None:
        return DEFAULT_MODEL_NAME
    return os.path.basename(os.path.normpath(args.model)).removesuffix(".gguf")


def _graceful_server(config, ctx: ServerContext, grace_s: float):
    """A uvicorn.Server whose shutdown (on SIGTERM/SIGINT: listening socket closed, idle connections
    dropped) gives requests in flight `grace_s` seconds, then aborts the rest through
    `ctx.abort_all`, so each ends with a proper response instead of uvicorn's task cancellation (a
    cut-off stream, or a plain-text 500)."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            def abort_in_flight() -> None:
                logger.warning("shutdown timeout (%gs) is over: aborting the requests still in flight", grace_s)
                ctx.abort_all()

            timer = asyncio.get_running_loop().call_later(grace_s, abort_in_flight)
            try:
                await super().shutdown(sockets=sockets)
            finally:
                timer.cancel()

    return GracefulServer(config)


def run_server(args: argparse.Namespace) -> int:
    import uvicorn

    engine = AsyncLLMEngine(engine_config_from_args(args))
    kv_host = args.kv_host or (args.host if args.host not in ("0.0.0.0", "::") else "127.0.0.1")
    kv_transfer = ServerKVTransfer(
        args.role, engine, (args.host, args.kv_port), kv_host, args.kv_connector, args.kv_transfer_timeout
    )
    ctx = ServerContext(
        engine=engine,
        model_name=served_model_name(args),
        model_aliases=tuple(a for a in (args.model,) if a),
        chat_template=load_chat_template(args.chat_template),
        max_waiting_requests=args.max_waiting_requests,
        metrics=ServerMetrics(engine.stats, kv_transfer.stats if args.role == "decode" else None),
        kv_transfer=kv_transfer,
    )
    app = build_app(ctx, args.api_key)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.uvicorn_log_level,
        http="h11",  # its ASGI 2.3 disconnect signal cancels streams at once
        timeout_graceful_shutdown=args.shutdown_timeout + ABORTED_REQUESTS_EXIT_S,  # a backstop: see _graceful_server
    )
    logger.info("serving %s on http://%s:%d", ctx.model_name, args.host, args.port)
    # uvicorn re-raises the SIGTERM it handled once its graceful shutdown is over; a no-op handler
    # lets that end here, so a clean shutdown exits 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    _graceful_server(config, ctx, args.shutdown_timeout).run()
    return 0
