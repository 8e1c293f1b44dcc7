"""Disaggregated prefill/decode: a prefill instance computes the prompt's KV (a one-token request
marked `do_remote_decode`) and answers where to fetch it (`kv_transfer_params`); a decode instance
gets the original request plus those params (`do_remote_prefill`) and generates. Without params
from prefill, the decode instance simply computes the prompt itself."""

from __future__ import annotations

import logging

from tachyon.router.pool import InstancePool
from tachyon.router.upstream import Answer, Forwarder

logger = logging.getLogger(__name__)


async def open_disaggregated(
    forwarder: Forwarder, prefill: InstancePool, decode: InstancePool, path: str, body: dict, headers: dict[str, str]
) -> Answer:
    """The decode instance's answer, or the prefill instance's when that is a 4xx (the client's fault)."""
    first = await forwarder.open(prefill, path, prefill_body(body), headers)
    if first.status >= 400:
        return first
    kv = (first.json() or {}).get("kv_transfer_params")
    if not isinstance(kv, dict):
        logger.debug("prefill on %s returned no kv_transfer_params: decode recomputes the prompt", first.instance.url)
        return await forwarder.open(decode, path, body, headers)
    decode_body = {**body, "kv_transfer_params": decode_kv_params(kv)}
    return await forwarder.open(decode, path, decode_body, headers)


def prefill_body(body: dict) -> dict:
    """The request cut to its prompt: one token, one sample, not streamed."""
    out = {**body, "stream": False, "max_tokens": 1, "n": 1, "kv_transfer_params": {"do_remote_decode": True}}
    if "max_completion_tokens" in body:
        out["max_completion_tokens"] = 1
    out.pop("stream_options", None)
    out.pop("min_tokens", None)  # above one it would make max_tokens=1 a client error
    return out


def decode_kv_params(kv: dict) -> dict:
    """The prefill instance's params, marked for the decode side; an echoed do_remote_decode is
    dropped so that the decode instance never hands its work on again."""
    return {**{k: v for k, v in kv.items() if k != "do_remote_decode"}, "do_remote_prefill": True}
