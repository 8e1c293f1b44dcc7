"""`tachyon` command line: generate, convert (and, as they land, serve, compress, bench, eval, plan)."""

from __future__ import annotations

import argparse
import logging
import sys

from tachyon.entrypoints.engine_args import add_engine_args, engine_config_from_args


def _generate(args: argparse.Namespace) -> int:
    from tachyon.entrypoints.llm import LLM
    from tachyon.sampling_params import SamplingParams

    config = engine_config_from_args(args)
    llm = LLM(**vars(config))
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.sampling_seed,
    )
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": text}] for text in args.chat], params)
        prompts = args.chat
    else:
        prompts = args.prompt or ["The capital of France is"]
        outputs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outputs):
        print(f"### {prompt}\n{out.outputs[0].text}\n")
    stats = llm.engine.stats()
    print(
        f"[prefix cache hit rate {stats.prefix_cache_hits}/{stats.prefix_cache_queries} tokens, "
        f"{stats.num_preemptions} preemptions]",
        file=sys.stderr,
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from tachyon.models.convert import convert_gguf

    print(convert_gguf(args.gguf_file, args.out_dir, overwrite=args.overwrite))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tachyon", description="Fast LLM inference, compression and validation.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="generate text offline for a few prompts",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_engine_args(gen)
    g = gen.add_argument_group("generation")
    g.add_argument("--prompt", action="append", help="a raw prompt (repeatable)")
    g.add_argument("--chat", action="append", help="a user message, rendered with the chat template (repeatable)")
    g.add_argument("--max-tokens", type=int, default=128, help="most new tokens per prompt")
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (0: off)")
    g.add_argument("--sampling-seed", type=int, default=None, help="seed for reproducible sampling")
    gen.set_defaults(func=_generate)

    conv = sub.add_parser("convert", help="write a GGUF model as a Hugging Face folder (safetensors + tokenizer)")
    conv.add_argument("gguf_file", help="the .gguf file to read")
    conv.add_argument("out_dir", help="folder to create")
    conv.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    conv.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
