"""The Learn2PD filter f_theta: block confidence vector -> one "already final?" logit per position.

It runs inside every decoding step, so it is a handful of batched matmuls on the model's device and
nothing else. Checkpoints are ``safetensors`` weights with the :class:`FilterConfig` embedded in the
file header (and mirrored in a JSON sidecar for people); the published Learn2PD ``.pth`` state dict
is converted on load (see :func:`convert_published_state_dict`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2pd_eval.errors import ConfigError, ConfigFileNotFound
from l2pd_eval.filters.config import COMMITTED_CONF  # noqa: F401  (re-exported; torch-free for the CLI)

FORMAT = "l2pd-filter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "filter.safetensors"
CONFIG_NAME = "filter.json"
_HEADER_KEY = "l2pd_filter_config"

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
PUBLISHED_SUFFIXES = (".pth", ".pt", ".bin")


class FilterBlockLengthError(ConfigError):
    """The filter's input width differs from the run's ``block_length``: its outputs would be meaningless."""


@dataclass
class FilterConfig:
    """Everything needed to rebuild a filter and to know what it may be used with.

    ``committed_conf`` says what the filter saw at block positions that were already committed:
    ``"raw"`` (the default, the paper's recipe and the published checkpoint: the model's probability of
    its prediction at every block position, committed or not, as ``generate_learn2parallel`` feeds
    ``x0_p[:, block_start:block_end]``) or ``"zero"`` (this project's earlier default: zeroed there).
    It is stored with the filter, so a filter always decodes as it was trained; a settings file without
    the key predates the choice and means ``"zero"``. :meth:`L2PFilter.accept` applies it.
    """

    block_length: int
    hidden_sizes: tuple[int, ...] | None = None  # None: one hidden layer of width block_length (the paper's)
    activation: str = "relu"
    accept_threshold: float = 0.96
    committed_conf: str = "raw"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.block_length) < 1:
            raise ValueError(f"block_length must be a positive integer, got {self.block_length!r}")
        self.block_length = int(self.block_length)
        if self.hidden_sizes is None:
            self.hidden_sizes = (self.block_length,)
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {self.hidden_sizes!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(sorted(ACTIVATIONS))}; got {self.activation!r}"
            )
        if not 0.0 < float(self.accept_threshold) < 1.0:
            raise ValueError(f"accept_threshold must lie strictly between 0 and 1, got {self.accept_threshold!r}")
        self.accept_threshold = float(self.accept_threshold)
        if self.committed_conf not in COMMITTED_CONF:
            raise ValueError(
                f"committed_conf must be one of {', '.join(COMMITTED_CONF)}; got {self.committed_conf!r}"
            )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FilterConfig:
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"not a filter config (format={d.get('format')!r}, expected {FORMAT!r})")
        if int(d.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise ValueError(
                f"filter format_version {d['format_version']} is newer than this l2pd-eval supports "
                f"({FORMAT_VERSION}); upgrade l2pd-eval"
            )
        keys = {"block_length", "hidden_sizes", "activation", "accept_threshold", "committed_conf", "metadata"}
        return cls(**{"committed_conf": "zero", **{k: v for k, v in d.items() if k in keys}})


class L2PFilter(nn.Module):
    """MLP over the block: ``[..., block_length]`` confidences -> ``[..., block_length]`` logits.

    Linear layers ``block_length -> hidden_sizes... -> block_length`` with the activation in between;
    ``hidden_sizes=(block_length,)`` with ReLU is the paper's two-layer filter, ``()`` a single linear
    layer (per-block logistic regression).
    """

    def __init__(self, config: FilterConfig):
        super().__init__()
        self.config = config
        widths = (config.block_length, *config.hidden_sizes, config.block_length)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.act = ACTIVATIONS[config.activation]()
        # sigmoid(z) > t  <=>  z > logit(t): one comparison at decode time, no sigmoid.
        self.register_buffer(
            "_logit_threshold", torch.tensor(_logit(config.accept_threshold)), persistent=False
        )

    @property
    def block_length(self) -> int:
        return self.config.block_length

    @property
    def accept_threshold(self) -> float:
        return self.config.accept_threshold

    def set_accept_threshold(self, threshold: float) -> None:
        """Change the decision threshold (e.g. a run's ``accept_threshold=`` override)."""
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"accept_threshold must lie strictly between 0 and 1, got {threshold!r}")
        self.config.accept_threshold = float(threshold)
        self._logit_threshold.fill_(_logit(float(threshold)))

    def forward(self, conf: torch.Tensor) -> torch.Tensor:
        if conf.shape[-1] != self.config.block_length:
            raise FilterBlockLengthError(
                f"filter expects confidence vectors of block_length={self.config.block_length}, "
                f"got a last dimension of {conf.shape[-1]}"
            )
        x = conf.to(self.linears[0].weight.dtype)
        for i, layer in enumerate(self.linears):
            if i:
                x = self.act(x)
            x = layer(x)
        return x

    def prepare_input(self, conf: torch.Tensor, masked: torch.Tensor | None,
                      live: torch.Tensor | None = None) -> torch.Tensor:
        """What the filter was trained on: non-finite values cleaned, committed positions zeroed if so trained,
        and positions past the answer's end (``live`` False: an EoTP cut inside the block) zeroed whatever
        the convention: the Learn2PD code cuts the sequence there, so its filter gets a shorter confidence
        vector, which its network zero-pads to the block length."""
        x = torch.nan_to_num(conf.float(), nan=0.0, posinf=1.0, neginf=0.0)
        if masked is not None and self.config.committed_conf == "zero":
            x = x * masked.to(x.dtype)
        if live is not None:
            x = x * live.to(x.dtype)
        return x

    @torch.no_grad()
    def accept(self, conf: torch.Tensor, masked: torch.Tensor | None = None,
               live: torch.Tensor | None = None) -> torch.Tensor:
        """Bool ``[..., block_length]``: positions the filter declares final (only masked ones if given)."""
        logits = self(self.prepare_input(conf, masked, live))
        out = logits > self._logit_threshold
        return out & masked.bool() if masked is not None else out

    @torch.no_grad()
    def probs(self, conf: torch.Tensor, masked: torch.Tensor | None = None,
              live: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self(self.prepare_input(conf, masked, live)))


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


# ----------------------------------------------------------------------------------------------- files


def _resolve_paths(path: str | Path) -> tuple[Path, Path]:
    """``DIR`` -> ``DIR/filter.safetensors`` + ``DIR/filter.json``; ``X.safetensors`` -> ``X.safetensors`` + ``X.json``."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    return p / WEIGHTS_NAME, p / CONFIG_NAME


def save_filter(path: str | Path, filt: L2PFilter, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write weights + config. ``path`` is a directory, or a file name ending in ``.safetensors``.

    ``metadata`` (model, data, metrics, ...) is merged into ``filt.config.metadata``. Returns the
    weights file.
    """
    from safetensors.torch import save_file

    if metadata:
        filt.config.metadata = {**filt.config.metadata, **dict(metadata)}
    weights, cfg_path = _resolve_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    cfg = filt.config.to_json()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in filt.state_dict().items()}
    save_file(tensors, str(weights), metadata={_HEADER_KEY: json.dumps(cfg, sort_keys=True)})
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return weights


def load_filter(
    path: str | Path,
    expected_block_length: int | None = None,
    device: str | torch.device = "cpu",
    accept_threshold: float | None = None,
) -> L2PFilter:
    """Load a filter (ours, or a published Learn2PD ``.pth`` converted on the fly), in eval mode.

    ``expected_block_length`` is the run's block_length; a filter of another width raises
    :class:`FilterBlockLengthError` naming both values. ``accept_threshold`` overrides the stored one.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigFileNotFound(
            f"filter={str(path)!r} does not exist; give a directory written by `l2pd-eval train-filter`, "
            f"a .safetensors file, or a published Learn2PD state dict (.pth)"
        )
    if p.is_file() and p.suffix in PUBLISHED_SUFFIXES:
        filt = load_published_filter(p)
    else:
        filt = _load_ours(p)
    check_block_length(filt, expected_block_length, source=str(path))
    if accept_threshold is not None:
        filt.set_accept_threshold(accept_threshold)
    return filt.to(device).eval()


def _load_ours(path: Path) -> L2PFilter:
    from l2pd_eval.model.loading import read_safetensors

    weights, cfg_path = _resolve_paths(path)
    if not weights.is_file():
        raise ConfigFileNotFound(f"filter={str(path)!r}: no {weights.name} found at {weights}")
    state, header = read_safetensors(weights, "train the filter again (`l2pd-eval train-filter`) or copy it again")
    cfg = _settings(weights, cfg_path, header.get(_HEADER_KEY))
    filt = L2PFilter(cfg)
    _check_weights(filt, state, weights, cfg_path if header.get(_HEADER_KEY) is None else weights)
    filt.load_state_dict(state, strict=True)
    return filt


# What a filter computes with; metadata (model, data, metrics) only describes it and may differ.
_SETTINGS = ("block_length", "hidden_sizes", "activation", "accept_threshold", "committed_conf")


def _settings(weights: Path, cfg_path: Path, header: str | None) -> FilterConfig:
    """One source of truth: the settings embedded in the weights file, written with the weights. filter.json
    is a copy for people; an edited copy is refused, since it would otherwise be silently ignored."""
    if header is None and not cfg_path.is_file():
        raise ConfigError(f"filter={str(weights)!r}: {weights.name} has no embedded settings and there is no "
                          f"{cfg_path.name} beside it")
    if header is None:
        return _read_settings(cfg_path.read_text(), cfg_path)
    cfg = _read_settings(header, weights)
    if cfg_path.is_file():
        copy = _read_settings(cfg_path.read_text(), cfg_path).to_json()
        ours = cfg.to_json()
        differ = [k for k in _SETTINGS if copy[k] != ours[k]]
        if differ:
            detail = ", ".join(f"{k}: {copy[k]!r} in {cfg_path.name}, {ours[k]!r} in {weights.name}" for k in differ)
            raise ConfigError(
                f"filter: {cfg_path} disagrees with the settings stored in {weights} ({detail}). The weights file's "
                f"settings are the ones the filter was trained with and are used; {cfg_path.name} is a copy for "
                f"reading. To run with another threshold pass accept_thres=<value> in model_args; otherwise "
                f"restore {cfg_path.name} (or delete it)")
    return cfg


def _read_settings(text: str, source: Path) -> FilterConfig:
    try:
        return FilterConfig.from_json(json.loads(text))
    except (ValueError, TypeError) as err:  # bad JSON, or a value FilterConfig rejects
        raise ConfigError(f"filter: bad settings in {source}: {err}") from None


def _check_weights(filt: L2PFilter, state: Mapping[str, torch.Tensor], weights: Path, settings: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in filt.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        c = filt.config
        raise ConfigError(
            f"filter: the weights in {weights} do not match the settings in {settings} (block_length="
            f"{c.block_length}, hidden_sizes={list(c.hidden_sizes)}): the settings need tensors {expected}, the "
            f"file has {found}. Use the settings saved with these weights, or train the filter again")


def check_block_length(filt: L2PFilter, expected_block_length: int | None, source: str = "filter") -> None:
    if expected_block_length is None or int(expected_block_length) == filt.block_length:
        return
    raise FilterBlockLengthError(
        f"filter {source!r} was trained for block_length={filt.block_length}, but this run uses "
        f"block_length={int(expected_block_length)}. The filter reads one confidence per block position, so "
        f"they must match: run with block_length={filt.block_length}, or train a filter on trajectories "
        f"recorded with --block-length {int(expected_block_length)}."
    )


def trained_on(filt: L2PFilter) -> list[dict[str, str]]:
    """The checkpoint identities (``model.loading.checkpoint_identity``) of the trajectories the filter was
    trained on, from its metadata (``train-filter`` records them); empty when unknown (older or published)."""
    found = filt.config.metadata.get("trained_on")
    found = [found] if isinstance(found, dict) else found or []
    return [dict(i) for i in found if isinstance(i, dict) and i.get("fingerprint")]


def trained_elsewhere(filt: L2PFilter, model: Mapping[str, str], source: str = "filter") -> str | None:
    """Why ``filt`` was not trained on ``model`` (a checkpoint identity), naming both; None when it was, or
    when the filter does not know. The confidences of another model (or family) follow another distribution,
    so such a run is allowed but its numbers are not the method's."""
    known = trained_on(filt)
    if not known or any(i["fingerprint"] == model.get("fingerprint") for i in known):
        return None
    had = ", ".join(f"{i.get('family', '?')} checkpoint {i.get('name', '?')} (fingerprint {i['fingerprint']})"
                    for i in known)
    return (f"filter {source!r} was trained on trajectories of {had}, but this run decodes the "
            f"{model.get('family', '?')} checkpoint {model.get('name', '?')} (fingerprint "
            f"{model.get('fingerprint', '?')}); its accept decisions may not transfer: train a filter on this "
            "model's trajectories (`l2pd-eval trajectories` + `l2pd-eval train-filter`, docs/filters.md)")


# ------------------------------------------------------------------------------ published checkpoints

# The published Learn2PD filter (e.g. ``layer_2_flan.pth``) is ``torch.save(model.state_dict())`` of a
# small MLP whose layers are attributes ``linear1``, ``linear2``, ... (ReLU between them, none after
# the last), every one ``nn.Linear(input_dim, input_dim)`` with input_dim = 32 = block_length:
#     linear1.weight [32, 32], linear1.bias [32], linear2.weight [32, 32], linear2.bias [32]
# (one- and four-layer variants only change the number of ``linearK`` entries). The original module
# zero-pads shorter inputs up to input_dim; we refuse a mismatched block_length instead.
_PUBLISHED_KEY = re.compile(r"^linear(\d+)\.(weight|bias)$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "small_model.")


def convert_published_state_dict(
    state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> L2PFilter:
    """Build an :class:`L2PFilter` from a published Learn2PD state dict (keys ``linearK.weight/bias``)."""
    clean: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        for prefix in _WRAPPER_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        clean[k] = value
    layers: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    for k, v in clean.items():
        m = _PUBLISHED_KEY.match(k)
        if m is None:
            unknown.append(k)
            continue
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
    if unknown or not layers:
        raise ValueError(
            "not a published Learn2PD filter state dict: expected only keys linear1.weight, linear1.bias, "
            f"linear2.weight, ... ; found {sorted(clean)}"
        )
    order = sorted(layers)
    if order != list(range(1, len(order) + 1)):
        raise ValueError(f"published filter layers must be linear1..linearK without gaps; found {order}")
    shapes = []
    for i in order:
        layer = layers[i]
        if set(layer) != {"weight", "bias"}:
            raise ValueError(f"published filter layer linear{i} needs weight and bias; found {sorted(layer)}")
        w, b = layer["weight"], layer["bias"]
        if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[0]:
            raise ValueError(f"linear{i}: bad shapes weight {tuple(w.shape)}, bias {tuple(b.shape)}")
        shapes.append(tuple(w.shape))
    for (out_prev, _), (_, in_next) in zip(shapes[:-1], shapes[1:], strict=True):
        if out_prev != in_next:
            raise ValueError(f"published filter layer shapes do not chain: {shapes}")
    block_length = shapes[0][1]
    if shapes[-1][0] != block_length:
        raise ValueError(f"published filter maps {block_length} inputs to {shapes[-1][0]} outputs; expected equal")
    cfg = FilterConfig(
        block_length=block_length,
        hidden_sizes=tuple(s[0] for s in shapes[:-1]),
        activation="relu",
        accept_threshold=0.96,
        committed_conf="raw",
        metadata={"source": "published Learn2PD state dict", "threshold_source": "paper (0.96)", **(metadata or {})},
    )
    filt = L2PFilter(cfg)
    ours = {f"linears.{i - 1}.{kind}": layers[i][kind].float() for i in order for kind in ("weight", "bias")}
    filt.load_state_dict(ours, strict=True)
    return filt


def load_published_filter(path: str | Path) -> L2PFilter:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and EOF errors alike: the file is not a saved state dict
        # The whole reason, on one line: for a pickle that would run code it names the blocked global.
        reason = " ".join(str(err).split())
        raise ConfigError(f"filter={str(path)!r}: not a readable PyTorch state dict, refused without running any of "
                          f"its code ({type(err).__name__}: {reason}); download or copy the published filter "
                          "again from a trusted source") from None
    if isinstance(state, nn.Module):  # pragma: no cover - weights_only forbids this; kept for clarity
        state = state.state_dict()
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConfigError(f"filter={str(path)!r}: expected a state dict (mapping of tensors), got "
                          f"{type(state).__name__}; download or copy the published filter again")
    try:
        return convert_published_state_dict(state, metadata={"converted_from": str(path)})
    except ValueError as err:  # keys or shapes of another network
        raise ConfigError(f"filter={str(path)!r}: {err}; this is not a published Learn2PD filter (or it is damaged): "
                          "download or copy it again") from None
