"""`tachyon router` on the command line: flags -> `RouterConfig` -> `run_router`.
`tachyon.cli.build_parser` registers it with `add_router_parser`; `python -m tachyon.router` runs it alone."""

from __future__ import annotations

import argparse
from functools import partial

from tachyon.router.config import RouterConfig, normalize_url
from tachyon.router.policy import POLICIES

DESCRIPTION = """\
An OpenAI-API reverse proxy in front of several `tachyon serve` instances. Two modes:

  replicas       --replica URL ...: identical instances; each request goes to one of them (--policy).
  prefill/decode --prefill URL ... --decode URL ...: a prefill instance computes the prompt's KV
                 cache and a decode instance fetches it and generates (instances started with
                 `tachyon serve --role prefill|decode`).

Failed instances (unreachable, timed out, HTTP 5xx) are marked unhealthy and the request is retried
on another one while nothing has reached the client; GET /health brings them back. The router
serves POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health and GET /metrics,
and passes Authorization headers on to the instances."""

EPILOG = """\
examples:
  tachyon router --replica http://10.0.0.1:8000 http://10.0.0.2:8000 --policy prefix-aware
  tachyon router --prefill http://10.0.0.1:8000 --decode http://10.0.0.2:8000 http://10.0.0.3:8000"""


def add_router_parser(sub) -> None:
    router = sub.add_parser(
        "router",
        help="balance requests over several tachyon serve instances (replicas, or prefill/decode)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_instance_args(router.add_argument_group("instances (give --replica, or both --prefill and --decode)"))
    _add_policy_args(router.add_argument_group("balancing"))
    _add_server_args(router.add_argument_group("router"))
    router.set_defaults(func=partial(_run, router))


def _add_instance_args(g) -> None:
    urls = {"nargs": "+", "action": "extend", "default": [], "metavar": "URL"}
    g.add_argument("--replica", **urls, help="an instance serving the whole request (repeatable, or several URLs)")
    g.add_argument("--prefill", **urls, help="an instance that computes prompts' KV for the decode instances")
    g.add_argument("--decode", **urls, help="an instance that generates from KV fetched from a prefill instance")


def _add_policy_args(g) -> None:
    g.add_argument(
        "--policy",
        choices=list(POLICIES),
        default="least-outstanding",
        help="how a replica (or prefill instance) is picked. least-outstanding: the fewest requests in flight "
        "from this router plus waiting in the instance's queue (its /metrics, scraped each second). "
        "prefix-aware: a prompt whose start was seen before goes back to the instance that served it, whose "
        "prefix cache still holds it (default: %(default)s)",
    )
    g.add_argument(
        "--prefix-chars",
        type=int,
        default=512,
        help="prefix-aware: characters of the prompt (chat: of the messages' JSON) that form its key "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--prefix-imbalance",
        type=int,
        default=4,
        help="prefix-aware: leave a prompt's instance for the least-loaded one when its load exceeds that "
        "one's by more than this many requests (default: %(default)s)",
    )


def _add_server_args(g) -> None:
    g.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0: all (default: %(default)s)")
    g.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: %(default)s)")
    g.add_argument(
        "--health-interval",
        type=float,
        default=2.0,
        help="seconds between GET /health checks of each instance; an unhealthy one is back in once it answers "
        "200 (default: %(default)s)",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for an instance's next bytes: a whole answer, or a stream's next chunk "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--uvicorn-log-level", default="info", help="uvicorn log level: debug, info, warning, error (default: info)"
    )


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    return RouterConfig(
        replicas=tuple(normalize_url(u) for u in args.replica),
        prefill=tuple(normalize_url(u) for u in args.prefill),
        decode=tuple(normalize_url(u) for u in args.decode),
        policy=args.policy,
        prefix_chars=args.prefix_chars,
        prefix_imbalance=args.prefix_imbalance,
        health_interval=args.health_interval,
        request_timeout=args.request_timeout,
    )


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from tachyon.router.app import run_router

    try:
        config = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    return run_router(config, args.host, args.port, args.uvicorn_log_level)
