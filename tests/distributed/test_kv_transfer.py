"""KV transfer between two engines in one process (the wire and the cache, without HTTP): what a decode
instance imports makes it generate exactly what one engine does alone, over TCP and shared memory, and
each fault ends in a clear KVTransferError or in freed blocks."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tachyon.config import EngineConfig
from tachyon.distributed.kv_transfer.connectors import CONNECTORS, SharedMemoryConnector, TcpConnector
from tachyon.distributed.kv_transfer.export_server import KVExportServer
from tachyon.distributed.kv_transfer.protocol import KVTransferError
from tachyon.engine.llm_engine import LLMEngine
from tachyon.sampling_params import SamplingParams

PROMPT = "The history of the Roman Empire is long and complicated, and historians disagree. " * 5 + "In summary,"
GREEDY = SamplingParams(max_tokens=16, temperature=0)
KV = 32 * 2**20


def make_engine(model: str, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=model, kv_cache_memory=KV, **kw))


def run_to_end(engine: LLMEngine, prompt, params, **kw):
    request_id = engine.submit(engine.prepare_request(prompt, params, **kw))
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == request_id and out.finished:
                final = out
    return final


def prefill(engine: LLMEngine, transfer_id: str) -> list[int]:
    """What a prefill instance does: one token, its prompt's KV parked; returns the prompt's block hashes."""
    out = run_to_end(engine, PROMPT, SamplingParams(max_tokens=1, temperature=0), kv_transfer_id=transfer_id)
    return engine.prompt_block_hashes(out.prompt_token_ids)


def serve_exports(engine: LLMEngine) -> KVExportServer:
    server = KVExportServer(engine.parking, engine.runner.read_kv_blocks, engine.kv_layout, "127.0.0.1", 0)
    server.start()
    return server


@pytest.mark.parametrize(("connector", "kv_cache_dtype"), [("tcp", "auto"), ("shm", "int8"), ("torch", "auto")])
def test_imported_kv_generates_what_one_engine_does(shallow_model_dir, connector, kv_cache_dtype):
    producer = make_engine(shallow_model_dir, kv_cache_dtype=kv_cache_dtype)
    consumer = make_engine(shallow_model_dir, kv_cache_dtype=kv_cache_dtype)
    alone = run_to_end(make_engine(shallow_model_dir, kv_cache_dtype=kv_cache_dtype), PROMPT, GREEDY)
    hashes = prefill(producer, "t1")
    assert producer.stats().num_parked_blocks == len(hashes) > 0
    server = serve_exports(producer)
    try:
        fetch = CONNECTORS[connector](consumer.kv_layout, timeout_s=30)
        result = fetch.fetch(f"127.0.0.1:{server.port}", "t1", consumer.kv.missing_blocks(hashes))
    finally:
        server.stop()
    assert list(result.blocks) == hashes and result.num_bytes == len(hashes) * consumer.runner.kv_bytes_per_block
    assert consumer.import_kv(result.blocks) == len(hashes)
    out = run_to_end(consumer, PROMPT, GREEDY)
    assert out.num_cached_tokens == len(hashes) * consumer.kv.block_size  # the import was used, not recomputed
    assert out.outputs[0].token_ids == alone.outputs[0].token_ids
    producer.parking.collect()  # the fetch released the transfer
    assert producer.stats().num_parked_blocks == 0 and producer.kv.num_free_blocks == producer.kv.num_blocks


def test_only_missing_blocks_travel_and_unfetched_kv_expires(shallow_model_dir):
    producer = make_engine(shallow_model_dir, kv_transfer_timeout=0.5)
    consumer = make_engine(shallow_model_dir)
    hashes = prefill(producer, "first")
    first_two = producer.parking.check_out("first", hashes[:2])  # as the export server reads them
    consumer.import_kv(dict(zip(first_two, producer.runner.read_kv_blocks(list(first_two.values())), strict=True)))
    producer.parking.check_in("first", release=True)
    assert consumer.kv.missing_blocks(hashes) == hashes[2:]
    prefill(producer, "second")  # never fetched: a decode instance that died
    assert producer.stats().num_parked_blocks == len(hashes)
    time.sleep(0.6)
    producer.parking.collect()
    assert producer.stats().num_parked_blocks == 0 and producer.kv.num_free_blocks == producer.kv.num_blocks


def test_fetch_errors_are_clear_and_an_empty_fetch_releases(shallow_model_dir):
    producer = make_engine(shallow_model_dir)
    hashes = prefill(producer, "t")
    server = serve_exports(producer)
    address = f"127.0.0.1:{server.port}"
    try:
        with pytest.raises(KVTransferError, match="no KV parked under 'nope'"):
            TcpConnector(producer.kv_layout, 10).fetch(address, "nope", hashes)
        with pytest.raises(KVTransferError, match="KV layouts differ"):
            SharedMemoryConnector("another model", 10).fetch(address, "t", hashes)
        # a decode instance that caches the whole prompt asks for nothing, which releases the transfer
        assert TcpConnector(producer.kv_layout, 10).fetch(address, "t", []).blocks == {}
        producer.parking.collect()
        assert producer.stats().num_parked_blocks == 0
    finally:
        server.stop()
    with pytest.raises(KVTransferError, match="failed"):  # the prefill instance is gone
        TcpConnector(producer.kv_layout, 10).fetch(address, "t", hashes)


def test_a_stalled_prefill_instance_fails_the_fetch_within_the_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()  # then silence
    start = time.monotonic()
    with pytest.raises(KVTransferError, match="timed out"):
        TcpConnector("layout", timeout_s=1).fetch(f"127.0.0.1:{listener.getsockname()[1]}", "t", [1, 2])
    assert time.monotonic() - start < 10
    listener.close()
