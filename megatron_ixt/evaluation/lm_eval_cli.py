"""``python -m megatron_ixt.evaluation.lm_eval_cli``: lm-eval's command line (its flags and help) with
``ixt_hf`` registered.

    python -m megatron_ixt.evaluation.lm_eval_cli run --model ixt_hf \\
        --model_args pretrained=hf/ixt,steer=quality:5 --tasks gsm8k
"""
import sys


def main() -> int:
    from lm_eval.__main__ import cli_evaluate

    import megatron_ixt.evaluation.lm_eval_model  # noqa: F401  (registers ixt_hf)

    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
