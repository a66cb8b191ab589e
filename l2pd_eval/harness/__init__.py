"""The lm-eval wing: everything that talks to lm-evaluation-harness.

* :mod:`._hook`: the import hook the ``.pth`` file installs at interpreter start (makes the stock
  ``lm_eval`` CLI see ``--model learn2pd``, our ``tasks/`` and the sidecar); :mod:`.lm_eval_cli` is the
  same CLI for environments without the hook.
* :mod:`.lm_eval_model`: the ``learn2pd`` model (lm-eval's ``LM`` interface and request batching).
* :mod:`.gen_kwargs`: a request's generation kwargs as decoder settings; :mod:`.loglikelihood`: the
  Monte-Carlo likelihood of multiple-choice requests; :mod:`.resume`: timing of ``--use_cache`` answers.
* :mod:`.tasks_support` / :mod:`.tasks_code`: what the task YAMLs in ``tasks/`` name by module path.

Kept import-light on purpose: the hook imports this package at every interpreter start (no torch, no
lm-eval here).
"""
