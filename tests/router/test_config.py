"""Flags: each mistake is an argparse error naming the flag; URLs are normalized; the disaggregated
prefill body; the waiting-requests gauge as instances print it."""

from __future__ import annotations

import argparse

import pytest

from tachyon.router.cli import add_router_parser, config_from_args
from tachyon.router.disagg import prefill_body
from tachyon.router.monitor import parse_num_waiting


def _parse(*argv: str):
    parser = argparse.ArgumentParser(prog="tachyon")
    add_router_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["router", *argv])


def test_urls_are_normalized_and_repeatable():
    args = _parse("--replica", "http://a:1/v1/", "--replica", "http://b:2", "http://c:3/")
    config = config_from_args(args)
    assert config.replicas == ("http://a:1", "http://b:2", "http://c:3") and not config.disaggregated
    config = config_from_args(_parse("--prefill", "http://p:1", "--decode", "http://d:1", "http://d:2"))
    assert config.disaggregated and config.decode == ("http://d:1", "http://d:2")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "give --replica"),
        (("--prefill", "http://p:1"), "both --prefill"),
        (("--replica", "http://a:1", "--decode", "http://d:1"), "cannot be combined"),
        (("--replica", "a:1"), "--replica URLs must start with http://"),
        (("--replica", "http://a:1", "http://a:1"), "--replica lists an instance twice"),
        (("--replica", "http://a:1", "--prefix-chars", "0"), "--prefix-chars"),
        (("--replica", "http://a:1", "--health-interval", "0"), "--health-interval"),
        (("--replica", "http://a:1", "--request-timeout", "-1"), "--request-timeout"),
    ],
)
def test_mistakes_are_argparse_errors_naming_the_flag(argv, message, capsys):
    args = _parse(*argv)
    with pytest.raises(SystemExit) as e:
        args.func(args)
    assert e.value.code == 2
    assert "tachyon router: error:" in capsys.readouterr().err
    with pytest.raises(ValueError, match=message):
        config_from_args(args)


def test_prefill_body_asks_for_one_token_and_the_kv():
    body = {"messages": [], "max_completion_tokens": 9, "max_tokens": 9, "n": 3, "stream": True, "min_tokens": 4}
    body["stream_options"] = {"include_usage": True}
    assert prefill_body(body) == {
        "messages": [],
        "max_completion_tokens": 1,
        "max_tokens": 1,
        "n": 1,
        "stream": False,
        "kv_transfer_params": {"do_remote_decode": True},
    }
    assert "max_completion_tokens" not in prefill_body({"prompt": "hi"})


def test_num_waiting_is_summed_over_label_sets():
    text = (
        "# TYPE tachyon:num_requests_waiting gauge\n"
        'tachyon:num_requests_waiting{model_name="a"} 3.0\n'
        'tachyon:num_requests_waiting{model_name="b"} 2.0\n'
        "# TYPE tachyon:num_requests_running gauge\n"
        "tachyon:num_requests_running 7.0\n"
    )
    assert parse_num_waiting(text) == 5
    assert parse_num_waiting("tachyon:num_requests_running 7.0\n") == 0
