"""``l2pd-eval reproduce``: rerun a paper's table through the stock lm-eval CLI, one cell per invocation.

``papers`` holds each paper's conventions (methods, lengths, prompt rule, seed) with their sources,
``cells`` turns a selection into lm-eval commands and knows which cells a folder already finished,
``cli`` runs them and prints the published-vs-reproduced report. Nothing here imports torch.
"""
