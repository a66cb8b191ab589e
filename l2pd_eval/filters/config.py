"""Settings of trajectory recording and filter training, and their choices: torch-free, so the command
line (:mod:`.cli`) builds its parsers, ``--help`` included, without importing torch.

Each message names the setting as the command line spells it (``--split``) and as the field is called.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2pd_eval.errors import ConfigError

#: States ``l2pd-eval trajectories`` records: the reference decoding itself, or the official generator's
#: oracle pass (l2pd_eval/filters/trajectories.py).
ROLLOUTS = ("low_confidence", "oracle")
#: Storage precisions of recorded confidences (l2pd_eval/filters/data.py ``CONF_DTYPES`` maps them to torch).
CONF_DTYPE_NAMES = ("float16", "float32")
#: What a filter sees at already-committed positions (l2pd_eval/policies/filter_net.py ``FilterConfig``).
COMMITTED_CONF = ("zero", "raw")
#: Hidden-layer activations of the filter (l2pd_eval/policies/filter_net.py ``ACTIVATIONS`` maps them).
ACTIVATION_NAMES = ("gelu", "relu", "silu", "tanh")
#: Train/validation/test split of records: by prompt (default) or record by record.
SPLIT_BY = ("prompt", "record")


def _choice(flag: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{flag} {value!r}; valid choices: {', '.join(valid)}")


@dataclass
class TrajectoryConfig:
    gen_length: int = 256
    block_length: int = 32
    batch_size: int = 8
    rollout: str = "low_confidence"
    conf_dtype: str = "float32"
    shard_records: int = 65536
    chat_template: bool | None = None  # None: use the tokenizer's chat template when it has one

    def __post_init__(self) -> None:
        _choice("--rollout", self.rollout, ROLLOUTS)
        _choice("--conf-dtype", self.conf_dtype, CONF_DTYPE_NAMES)
        for flag, value in (("--gen-length", self.gen_length), ("--block-length", self.block_length),
                            ("--batch-size", self.batch_size), ("--shard-records", self.shard_records)):
            if value < 1:
                raise ConfigError(f"{flag} {value}: must be a positive integer")
        if self.gen_length % self.block_length:
            raise ConfigError(f"--gen-length {self.gen_length} is not a multiple of --block-length "
                              f"{self.block_length}; choose a multiple")


@dataclass
class TrainConfig:
    hidden_sizes: tuple[int, ...] | None = None  # None: (block_length,) as in the paper
    activation: str = "relu"
    lr: float = 3e-3
    weight_decay: float = 0.01
    max_iters: int = 20000
    batch_size: int = 0  # 0: full batch (the official recipe); else minibatches of this many records
    eval_every: int = 10
    patience: int = 30  # evaluations without a validation-loss improvement before stopping
    min_delta: float = 1e-5
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_by: str = "prompt"
    class_balance: bool = True
    accept_threshold: float = 0.96
    target_precision: float | None = None  # if set, pick the lowest threshold reaching it on validation
    committed_conf: str = "raw"  # the paper's recipe (policies.filter_net.FilterConfig); "zero" an option
    device: str = "auto"

    def __post_init__(self) -> None:
        _choice("--split-by", self.split_by, SPLIT_BY)
        _choice("--committed-conf", self.committed_conf, COMMITTED_CONF)
        _choice("--activation", self.activation, ACTIVATION_NAMES)
        if len(self.split) != 3 or any(not s > 0 for s in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"--split {','.join(map(str, self.split))}: must be three positive fractions summing "
                              "to 1, e.g. 0.8,0.1,0.1")
        if self.target_precision is not None and not 0 < self.target_precision < 1:
            raise ConfigError(f"--target-precision {self.target_precision}: must lie strictly between 0 and 1")
        if not 0 < self.accept_threshold < 1:
            raise ConfigError(f"--accept-threshold {self.accept_threshold}: must lie strictly between 0 and 1")
        if not (self.lr > 0 and self.lr < float("inf")) or not 0 <= self.weight_decay < float("inf"):
            raise ConfigError(f"--lr {self.lr} / --weight-decay {self.weight_decay}: must be finite, lr > 0, "
                              "weight decay >= 0")
        for flag, name in (("--max-iters", "max_iters"), ("--eval-every", "eval_every"), ("--patience", "patience")):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag} {getattr(self, name)}: must be >= 1")
        if self.batch_size < 0:
            raise ConfigError(f"--batch-size {self.batch_size}: must be >= 0 (0: full batch)")
