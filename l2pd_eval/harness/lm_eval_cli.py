"""``python -m l2pd_eval.harness.lm_eval_cli ...`` = ``lm_eval ...`` with our model, tasks and sidecar registered,
for environments where the ``.pth`` hook is disabled (``L2PD_EVAL_NO_HOOK=1``) or not installed."""

from l2pd_eval.harness._hook import install

if __name__ == "__main__":
    install(force=True)
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
