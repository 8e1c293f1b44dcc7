"""lm-evaluation-harness's own command line with the `tachyon` model registered, for every harness flag:

    python -m tachyon.evals.lm_eval_cli --model tachyon --model_args pretrained=PATH,max_model_len=4096 \
        --tasks hellaswag --limit 100 --output_path out/

(lm-eval 0.4.x has no plugin discovery, so plain `lm_eval --model tachyon` cannot see the backend.)
"""

from __future__ import annotations

import tachyon.evals.lm_eval_backend  # noqa: F401  (registers the model)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
