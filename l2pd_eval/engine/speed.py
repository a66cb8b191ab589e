"""How fast, never what: the speed switches, chosen once at the edge (the adapter's model_args, a bench's
flags) and applied through this class's methods only: ``generate`` calls them, and so do benches that time
a part of a step. None of them changes what is decoded beyond float rounding (docs/benchmarks.md measures
each)."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from l2pd_eval.caches import ForwardStrategy, exact_rows, make_strategy, row_bucket
from l2pd_eval.engine.predict import Predictor
from l2pd_eval.errors import ConfigError
from l2pd_eval.model.decode_attention import use_triton_attention
from l2pd_eval.model.interface import DiffusionLM
from l2pd_eval.model.skinny import use_skinny

_COMPILED: weakref.WeakSet = weakref.WeakSet()  # models whose blocks ``SpeedConfig.prepare`` compiled


@dataclass(frozen=True)
class SpeedConfig:
    """The speed switches of a run (defaults: what ``generate`` does unless told otherwise)."""

    cuda_graph: bool = False  # replay cached steps as CUDA graphs (strategies with ``cuda_graphs``; CUDA only)
    compile: bool = False  # torch.compile the model's blocks and fuse the confidence statistics
    compile_autotune: bool = False  # with compile: let inductor time kernel configs (model.compiling)
    split_keys: bool = True  # let batch-1 attention use the key-splitting flash kernel (model.attention)
    graph_row_buckets: bool = True  # CUDA graphs for row buckets (caches.row_bucket), not per row count
    graph_width_bucket: int = 128  # graphed chunks whose width changes between blocks (the prefix cache) are
    #                                padded to a multiple of this at batch 1, so a graph serves several; 0: exact
    skinny_gemm: bool = False  # GEMMs of few rows (batch-1 cached steps) and SwiGLU through the Triton kernel
    #                            of model.skinny (CUDA only; not bit-identical to cuBLAS, docs/benchmarks.md)
    triton_attention: bool = False  # batch-1 cached attention through model.decode_attention's kernel (any
    #                                 head grouping; process-wide while set; CUDA only)

    def __post_init__(self) -> None:
        if self.graph_width_bucket < 0:
            raise ConfigError(f"graph_width_bucket={self.graph_width_bucket} must be >= 0 (0: exact widths)")
        if self.compile_autotune and not self.compile:
            raise ConfigError("compile_autotune=true only applies with compile=true; add compile=true or drop it")

    def prepare(self, model: DiffusionLM) -> None:
        """``compile``'s part on the model: its blocks compiled, once per model (the first setting that meets
        a model decides its ``compile_autotune``); ``skinny_gemm`` routes its linears (every call: a later
        setting without it turns them back). ``generate`` calls it; so does a caller whose first
        forward is not a decode (the adapter, for likelihood requests)."""
        if self.skinny_gemm or getattr(model, "skinny_head", False):  # on, or back off after a run with it
            use_skinny(model, self.skinny_gemm)
        use_triton_attention(self.triton_attention)
        if self.compile and model not in _COMPILED:
            model.compile_blocks(autotune=self.compile_autotune)
            _COMPILED.add(model)

    def predictor(self, confidence: str = "float64") -> Predictor:
        """x0 and its probability by the rule ``confidence`` (what is decoded: the policy's), the ``float32``
        rule fused by torch.compile with ``compile``."""
        return Predictor(confidence, fused=self.compile, autotune=self.compile_autotune)

    def strategy(self, cache: str, model: DiffusionLM, batch: int, total_length: int,
                 params: Mapping[str, Any] | None = None) -> ForwardStrategy:
        """The forward strategy ``cache=`` (with its ``params``) for ``batch`` rows, with the graph and
        kernel switches."""
        rows = row_bucket if self.graph_row_buckets else exact_rows
        return make_strategy(cache, model, batch, total_length, cuda_graph=self.cuda_graph,
                             split_keys=self.split_keys, graph_rows=rows, graph_width_bucket=self.graph_width_bucket,
                             params=params)
