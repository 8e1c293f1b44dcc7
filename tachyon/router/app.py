"""The router's FastAPI app (`build_app`) and `run_router`, which `tachyon router` calls:
POST /v1/completions and /v1/chat/completions are forwarded (service.py), GET /v1/models is asked
of an instance, GET /health and /metrics describe the router itself. Errors keep OpenAI's shape."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tachyon.router.config import RouterConfig
from tachyon.router.service import Router
from tachyon.router.upstream import NoInstanceLeft
from tachyon.server.disconnect import until_disconnect
from tachyon.server.errors import error_response, install_error_handlers

logger = logging.getLogger(__name__)

FORWARDED_HEADERS = ("authorization", "x-request-id")
SHUTDOWN_GRACE_S = 30.0  # streams in flight at SIGTERM get this long to finish


def build_app(config: RouterConfig) -> FastAPI:
    router = Router(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await router.monitor.start()
        yield
        await router.close()

    app = FastAPI(title="tachyon router", lifespan=lifespan)
    app.state.router = router
    install_error_handlers(app)
    for path in ("/v1/completions", "/v1/chat/completions"):
        app.add_api_route(path, _generation_endpoint(router, path), methods=["POST"])
    _add_info_routes(app, router)
    return app


def _generation_endpoint(router: Router, path: str):
    async def generate(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return error_response(f"the body is not valid JSON: {e}", 400)
        if not isinstance(body, dict):
            return error_response("the body must be a JSON object", 400)
        try:
            answer = await until_disconnect(router.open(path, body, _forwarded(request)), request)
        except NoInstanceLeft as e:
            return error_response(str(e), 503)
        return router.forwarder.respond(answer)

    return generate


def _add_info_routes(app: FastAPI, router: Router) -> None:
    @app.get("/health")
    async def health() -> Response:
        if router.can_serve():
            return Response(status_code=200)
        roles = " and ".join(router.pools)
        return error_response(f"no healthy instance among the {roles} instances", 503)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            return await router.models(_forwarded(request))
        except NoInstanceLeft as e:
            return error_response(str(e), 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(router.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _forwarded(request: Request) -> dict[str, str]:
    return {k: v for k in FORWARDED_HEADERS if (v := request.headers.get(k))}


def run_router(config: RouterConfig, host: str, port: int, log_level: str) -> int:
    import uvicorn

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per health check and scrape
    app = build_app(config)
    pools = ", ".join(f"{len(p.instances)} {p.role}" for p in app.state.router.pools.values())
    logger.info("routing on http://%s:%d to %s instances (policy %s)", host, port, pools, config.policy)
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http="h11",  # its ASGI 2.3 disconnect signal cancels streams at once
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    uvicorn.Server(uvicorn_config).run()
    return 0
