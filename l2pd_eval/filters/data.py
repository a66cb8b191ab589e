"""Trajectory files: one record per (prompt, block, decoding step), stored as safetensors shards.

A trajectory directory holds ``manifest.json`` and ``shard-NNNNN.safetensors`` files. Every shard has
the same tensors, N records each (B = block_length):

====================  =================  ===========================================================
``conf``              [N, B] float32/16  max-softmax probability of the predicted token, as the
                                         engine reported it (only masked positions are meaningful)
``label``             [N, B] bool        oracle label: prediction == final reference token
``masked``            [N, B] bool        position still masked before this step's commit; only these
                                         are trained on and evaluated
``step``              [N] int16          step index within the block
``block``             [N] int16          block index within the answer
``prompt``            [N] int32          index into ``manifest["prompts"]`` (for prompt-level splits)
====================  =================  ===========================================================

The raw ``conf`` is stored; what the filter sees at committed positions (zeroed, or raw) is decided at
training time (:attr:`FilterConfig.committed_conf`), so one recording serves both conventions.
The manifest is rewritten atomically after each shard, so a killed run resumes from the last shard:
prompts listed in ``manifest["finished"]`` are skipped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2pd_eval.errors import ConfigError

FORMAT = "l2pd-trajectories"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = ("conf", "label", "masked", "step", "block", "prompt")
CONF_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class Trajectories:
    """Records in memory (all shards of one or more directories concatenated)."""

    conf: torch.Tensor
    label: torch.Tensor
    masked: torch.Tensor
    step: torch.Tensor
    block: torch.Tensor
    prompt: torch.Tensor
    block_length: int
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.conf.shape[0])

    def __post_init__(self) -> None:
        n, b = self.conf.shape
        for name in ("label", "masked"):
            t = getattr(self, name)
            if tuple(t.shape) != (n, b):
                raise ValueError(f"trajectory tensor {name} has shape {tuple(t.shape)}, expected {(n, b)}")
        for name in ("step", "block", "prompt"):
            t = getattr(self, name)
            if tuple(t.shape) != (n,):
                raise ValueError(f"trajectory tensor {name} has shape {tuple(t.shape)}, expected {(n,)}")
        if b != self.block_length:
            raise ValueError(f"conf width {b} differs from block_length={self.block_length}")

    def subset(self, index: torch.Tensor) -> Trajectories:
        return Trajectories(
            self.conf[index], self.label[index], self.masked[index], self.step[index], self.block[index],
            self.prompt[index], self.block_length, self.sources,
        )


def empty_manifest(**info: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "count": 0,
        "shards": [],
        "prompts": [],  # prompt ids in record order of first appearance; ``prompt`` tensors index this
        "finished": [],
        **info,
    }


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {MANIFEST}; is this a directory written by `l2pd-eval trajectories`?")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest['format_version']} is newer than supported ({FORMAT_VERSION})")
    return manifest


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class TrajectoryWriter:
    """Append records to a directory; resumable. ``info`` must match an existing manifest's settings."""

    #: manifest keys that must agree between a resumed run and the existing files
    IDENTITY_KEYS = ("block_length", "gen_length", "steps", "model", "model_identity", "rollout")

    def __init__(
        self,
        directory: str | Path,
        block_length: int,
        conf_dtype: str = "float32",
        shard_records: int = 65536,
        **info: Any,
    ):
        if conf_dtype not in CONF_DTYPES:
            raise ValueError(f"conf_dtype must be one of {', '.join(CONF_DTYPES)}; got {conf_dtype!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.block_length = int(block_length)
        self.conf_dtype = conf_dtype
        self.shard_records = int(shard_records)
        info = {"block_length": self.block_length, "conf_dtype": conf_dtype, **info}
        if (self.dir / MANIFEST).is_file():
            self.manifest = read_manifest(self.dir)
            clash = {
                k: (self.manifest.get(k), info.get(k))
                for k in self.IDENTITY_KEYS
                if k in info and k in self.manifest and self.manifest[k] != info[k]
            }
            if clash:
                desc = "; ".join(f"{k}: existing {a!r} vs now {b!r}" for k, (a, b) in clash.items())
                raise ConfigError(
                    f"--out {self.dir} already holds trajectories recorded with other settings ({desc}); "
                    "use a new --out directory or the same settings to resume"
                )
        elif any(self.dir.iterdir()):  # never write shards among someone else's files
            raise ConfigError(f"--out {self.dir}: the folder is not empty and holds no trajectories (no {MANIFEST}); "
                              "choose a new or empty folder (an existing trajectories folder is resumed)")
        else:
            self.manifest = empty_manifest(**info)
            _write_json_atomic(self.dir / MANIFEST, self.manifest)
        # one directory may collect several prompt sources (e.g. two JSONL files): remember each
        sources = self.manifest.setdefault("data_sources", [])
        if info.get("data") is not None and info["data"] not in sources:
            sources.append(info["data"])
        self._prompt_index = {str(p): i for i, p in enumerate(self.manifest["prompts"])}
        self._finished = set(map(str, self.manifest["finished"]))
        self._buf: dict[str, list[torch.Tensor]] = {k: [] for k in TENSORS}
        self._buf_n = 0
        self._pending_finished: list[str] = []

    @property
    def finished(self) -> set[str]:
        return set(self._finished)

    @property
    def count(self) -> int:
        return int(self.manifest["count"]) + self._buf_n

    def prompt_index(self, prompt_id: str) -> int:
        pid = str(prompt_id)
        if pid not in self._prompt_index:
            self._prompt_index[pid] = len(self.manifest["prompts"])
            self.manifest["prompts"].append(pid)
        return self._prompt_index[pid]

    def add(
        self,
        conf: torch.Tensor,
        label: torch.Tensor,
        masked: torch.Tensor,
        step: torch.Tensor | Sequence[int],
        block: torch.Tensor | Sequence[int],
        prompt: torch.Tensor | Sequence[int],
    ) -> None:
        """Buffer records; ``prompt`` holds indices from :meth:`prompt_index`."""
        n = int(conf.shape[0])
        if n == 0:
            return
        if conf.shape[-1] != self.block_length:
            raise ValueError(f"conf has width {conf.shape[-1]}, this trajectory file uses block_length={self.block_length}")
        self._buf["conf"].append(conf.detach().to("cpu", CONF_DTYPES[self.conf_dtype]))
        self._buf["label"].append(label.detach().to("cpu", torch.bool))
        self._buf["masked"].append(masked.detach().to("cpu", torch.bool))
        self._buf["step"].append(torch.as_tensor(step).to("cpu", torch.int16).reshape(n))
        self._buf["block"].append(torch.as_tensor(block).to("cpu", torch.int16).reshape(n))
        self._buf["prompt"].append(torch.as_tensor(prompt).to("cpu", torch.int32).reshape(n))
        self._buf_n += n

    def mark_finished(self, prompt_ids: Iterable[str]) -> None:
        """Prompts whose records are all added; they become resumable-skipped once flushed."""
        self._pending_finished.extend(map(str, prompt_ids))
        if self._buf_n >= self.shard_records:
            self.flush()

    def flush(self) -> None:
        """Write buffered records as a new shard, then the manifest (so a crash never lists a missing shard)."""
        from safetensors.torch import save_file

        changed = False
        if self._buf_n:
            index = len(self.manifest["shards"])
            name = f"shard-{index:05d}.safetensors"
            tensors = {k: torch.cat(v).contiguous() for k, v in self._buf.items()}
            save_file(tensors, str(self.dir / name), metadata={"format": FORMAT, "block_length": str(self.block_length)})
            self.manifest["shards"].append({"file": name, "count": self._buf_n})
            self.manifest["count"] = int(self.manifest["count"]) + self._buf_n
            self._buf = {k: [] for k in TENSORS}
            self._buf_n = 0
            changed = True
        if self._pending_finished:
            new = [p for p in dict.fromkeys(self._pending_finished) if p not in self._finished]
            self.manifest["finished"].extend(new)
            self._finished.update(new)
            self._pending_finished = []
            changed = True
        if changed:
            self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            _write_json_atomic(self.dir / MANIFEST, self.manifest)

    def close(self) -> dict[str, Any]:
        self.flush()
        return self.manifest


def load_trajectories(directories: str | Path | Sequence[str | Path]) -> Trajectories:
    """Concatenate every shard of one or more trajectory directories (block lengths must agree)."""
    from safetensors.torch import load_file

    dirs = [directories] if isinstance(directories, (str, Path)) else list(directories)
    if not dirs:
        raise ValueError("no trajectory directories given")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in TENSORS}
    block_length = None
    sources = []
    prompt_offset = 0
    for d in dirs:
        manifest = read_manifest(d)
        bl = int(manifest["block_length"])
        if block_length is None:
            block_length = bl
        elif bl != block_length:
            raise ValueError(
                f"trajectory directories disagree on block_length: {dirs[0]} has {block_length}, {d} has {bl}"
            )
        for shard in manifest["shards"]:
            t = load_file(str(Path(d) / shard["file"]))
            missing = [k for k in TENSORS if k not in t]
            if missing:
                raise ValueError(f"{Path(d) / shard['file']}: missing tensors {missing}")
            for k in TENSORS:
                parts[k].append(t[k])
            parts["prompt"][-1] = parts["prompt"][-1].to(torch.int32) + prompt_offset
        prompt_offset += len(manifest["prompts"])
        src = {k: manifest.get(k) for k in ("model", "model_identity", "rollout", "gen_length", "steps", "count")}
        src["data"] = manifest.get("data_sources") or manifest.get("data")
        sources.append(src | {"path": str(d)})
    if not parts["conf"]:
        raise ValueError(f"no records in {', '.join(map(str, dirs))}")
    return Trajectories(
        conf=torch.cat(parts["conf"]).float(),
        label=torch.cat(parts["label"]).bool(),
        masked=torch.cat(parts["masked"]).bool(),
        step=torch.cat(parts["step"]).long(),
        block=torch.cat(parts["block"]).long(),
        prompt=torch.cat(parts["prompt"]).long(),
        block_length=int(block_length),
        sources=sources,
    )


def synthetic_trajectories(
    n_prompts: int = 200, block_length: int = 32, seed: int = 0, noise: float = 0.0
) -> Trajectories:
    """Block-decoding-shaped toy records where ``label`` is a known function of ``conf``.

    Per prompt, positions of a block are unmasked one per step; a masked position is "correct" iff its
    confidence exceeds 0.8 (flipped with probability ``noise``). Confidences of correct positions are
    drawn from [0.8, 1), of wrong ones from [0, 0.8): separable, so a filter must reach high precision.
    """
    g = torch.Generator().manual_seed(seed)
    confs, labels, maskeds, steps, prompts = [], [], [], [], []
    for p in range(n_prompts):
        masked = torch.ones(block_length, dtype=torch.bool)
        for s in range(block_length):
            correct = torch.rand(block_length, generator=g) < 0.5
            hi = 0.8 + 0.2 * torch.rand(block_length, generator=g)
            lo = 0.8 * torch.rand(block_length, generator=g)
            conf = torch.where(correct, hi, lo)
            if noise:
                correct = correct ^ (torch.rand(block_length, generator=g) < noise)
            confs.append(conf)
            labels.append(correct)
            maskeds.append(masked.clone())
            steps.append(s)
            prompts.append(p)
            masked[int(torch.nonzero(masked)[torch.randint(int(masked.sum()), (1,), generator=g)])] = False
    n = len(confs)
    return Trajectories(
        conf=torch.stack(confs),
        label=torch.stack(labels),
        masked=torch.stack(maskeds),
        step=torch.tensor(steps),
        block=torch.zeros(n, dtype=torch.long),
        prompt=torch.tensor(prompts),
        block_length=block_length,
        sources=[{"data": f"synthetic(seed={seed}, noise={noise})"}],
    )


def write_trajectories(directory: str | Path, traj: Trajectories, **info: Any) -> dict[str, Any]:
    """Write in-memory records as a trajectory directory (synthetic data, or re-sharding)."""
    w = TrajectoryWriter(directory, traj.block_length, **info)
    ids = [str(i) for i in range(int(traj.prompt.max()) + 1)] if len(traj) else []
    index = torch.tensor([w.prompt_index(i) for i in ids], dtype=torch.long)
    w.add(traj.conf, traj.label, traj.masked, traj.step, traj.block, index[traj.prompt])
    w.mark_finished(ids)
    return w.close()
