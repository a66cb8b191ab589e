"""``l2pd-eval leaderboard RUNS... -o DIR``: a static leaderboard page from stored runs.

One ``index.html`` (rendered with jinja2) plus ``assets/`` (a stylesheet, a small script that sorts and
filters the table, and matplotlib's SVG figures) and ``data.json``: nothing is fetched at view time and no
server is needed. :mod:`.data` decides what is shown, :mod:`.page` writes it, :mod:`.cli` is the command.
"""
