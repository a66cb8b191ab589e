"""``l2pd-eval sweep``: one method over a grid of its settings, one stock lm-eval run per point, resumable
the way ``reproduce`` is (its cells and runner), then the accuracy-vs-TPF curve with its AUP.

``grid`` reads ``KEY=START:STOP:STEP`` / ``KEY=A,B,C`` into points; ``cli`` plans the cells (plus the
baseline the curve is anchored at), runs the ones not yet finished and reports. Nothing here imports torch
until the points' model_args are checked, after argument parsing.
"""
