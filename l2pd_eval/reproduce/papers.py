"""Each paper's evaluation conventions, in one place, with the authors' code they come from.

Where the paper's text and the authors' evaluation code could differ, the code is what produced the
published numbers, so it decides. Sources (read, not copied; docs/reproduce.md quotes the lines):

* Learn2PD: ims-kdks/Learning-to-Parallel-Decoding ``llada/eval_llada.py`` (prompt rule, ``set_seed(1234)``)
  and ``llada/eval_llada.sh`` (``steps=$gen_length``, ``block_length=32``, ``accept_thres=0.96``, methods
  original / L2P / L2P+EoT / L2P+EoT+prefix_cache / L2P+EoT+dual_cache); the table: the project page.
* Fast-dLLM: NVlabs/Fast-dLLM ``llada/eval_llada.py`` (prompt rule; ``set_seed`` defined, never called) and
  ``v1/llada/eval_humaneval.sh`` (block 32, ``threshold=0.9``, ``use_cache``/``dual_cache``); the table:
  Table 1 of arXiv 2505.22618 (lengths 256/512, plus its gsm8k length-1024 rows).
* Fast-dLLM's Dream table: ``dream/eval.py`` (``use_cache`` picks ``generation_utils_block.py``, otherwise
  ``generation_utils.py``: the whole answer as one block), ``dream/eval_gsm8k.sh`` / ``eval_humaneval.sh``
  (Dream-v0-Base-7B, ``add_bos_token=true``, ``alg=entropy`` with ``diffusion_steps=length``,
  ``alg=confidence_threshold,threshold=0.9`` with ``diffusion_steps=length/32``, block 32 in the block
  sampler); the table: Table 2 of arXiv 2505.22618. docs/dream.md says which rule each column decodes by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from l2pd_eval.errors import ConfigError
from l2pd_eval.family_facts import FACTS, family_name_of_config_json, family_name_of_model, instruct_by_name

#: Both papers decode LLaDA in blocks of 32 with steps = gen_length (one token per step for the baseline).
BLOCK_LENGTH = 32
#: Fast-dLLM's confidence threshold ("+Parallel").
THRESHOLD = 0.9
#: Learn2PD's filter acceptance threshold (eval_llada.sh ``accept_thres=0.96``).
ACCEPT_THRES = 0.96
#: The papers' four benchmarks; each is our ``<bench>_l2pd_<length>`` task, whose YAML fixes the papers'
#: shots (gsm8k 5, minerva_math 4, humaneval 0, mbpp 3; tests/test_tasks.py checks them).
BENCHMARKS = ("gsm8k", "minerva_math", "humaneval", "mbpp")
#: Benchmarks that execute generated code: lm-eval needs HF_ALLOW_CODE_EVAL=1 and --confirm_run_unsafe_code.
CODE_BENCHMARKS = frozenset({"humaneval", "mbpp"})


@dataclass(frozen=True)
class PaperMethod:
    """A method as one paper's table names it (one column): ``args`` are the model_args that define it.
    (What a run was decoded with, read back from its files, is :class:`l2pd_eval.results.methods.Method`.)
    ``whole_answer``: the authors decode the answer as one block (block_length = gen_length);
    ``steps_per_32``: their steps are gen_length / 32 instead of gen_length (Fast-dLLM's Dream threshold runs)."""

    key: str    # the cell's folder name
    label: str  # the paper's name for the column
    args: str
    whole_answer: bool = False
    steps_per_32: bool = False

    def shape(self, length: int) -> tuple[int, int]:
        """(block_length, steps) of this column at ``length`` answer tokens."""
        return (length if self.whole_answer else BLOCK_LENGTH,
                length // BLOCK_LENGTH if self.steps_per_32 else length)

    @property
    def uses_filter(self) -> bool:
        return "policy=learn2pd" in self.args.split(",")


@dataclass(frozen=True)
class Block:
    """A rectangle of the table: every benchmark x length here has every method."""

    benchmarks: tuple[str, ...]
    lengths: tuple[int, ...]
    methods: tuple[PaperMethod, ...]


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    published: tuple[str, ...]        # its tables in results/published/, one per model family it has one for
    blocks: tuple[Block, ...]
    raw_prompt: frozenset[str]        # benchmarks that get the raw prompt even on an Instruct model
    seed: int | None                  # model seed= the authors' script sets; None: lm-eval's defaults only
    model: str = "GSAI-ML/LLaDA-8B-Instruct"  # the paper's model (``--model``'s default)
    common_args: str = ""             # model_args every cell of the paper gets besides its method's

    @property
    def benchmarks(self) -> tuple[str, ...]:
        return tuple(b for b in BENCHMARKS if any(b in blk.benchmarks for blk in self.blocks))

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(sorted({n for blk in self.blocks for n in blk.lengths}))

    @property
    def methods(self) -> tuple[PaperMethod, ...]:
        """Every column, in table order (the testbed runs them all on its one task)."""
        return tuple(dict.fromkeys(m for blk in self.blocks for m in blk.methods))

    def methods_at(self, benchmark: str, length: int) -> tuple[PaperMethod, ...]:
        return tuple(dict.fromkeys(m for blk in self.blocks if benchmark in blk.benchmarks and length in blk.lengths
                                   for m in blk.methods))

    def table_for(self, family: str) -> str | None:
        """The paper's published table of ``family``'s runs: the one the family facts list too."""
        return next((t for t in self.published if t in FACTS[family].published), None) if family in FACTS else None

    def chat(self, benchmark: str, instruct: bool) -> bool:
        """The paper's prompt rule: the tokenizer's chat template for an Instruct model, except where the
        authors' eval passes the raw prompt; a base model always gets the raw prompt."""
        return instruct and benchmark not in self.raw_prompt


_L2P = f"policy=learn2pd,accept_thres={ACCEPT_THRES}"
_PAR = f"policy=threshold,threshold={THRESHOLD}"
# The confidence arithmetic each function of the authors' code uses (docs/conventions.md): Learn2PD's no-cache
# functions take the softmax in the model's dtype, its cached ones (from Fast-dLLM) and all of Fast-dLLM's
# LLaDA code in float64.
_MODEL_DTYPE, _FLOAT64 = "confidence=model", "confidence=float64"

LEARN2PD = Paper(
    name="learn2pd",
    title="Learn2PD (arXiv 2509.25188), LLaDA-8B-Instruct",
    published=("learn2pd",),
    blocks=(
        Block(BENCHMARKS, (256, 1024), (
            PaperMethod("baseline", "LLaDA baseline", f"policy=low_confidence,cache=none,{_MODEL_DTYPE}"),
            PaperMethod("learn2pd", "Learn2PD", f"{_L2P},cache=none,{_MODEL_DTYPE}"),
            PaperMethod("learn2pd_eotp", "Learn2PD + EoTP", f"{_L2P},cache=none,eotp=true,{_MODEL_DTYPE}"),
        )),
        # The KV-cache table: gsm8k at 1024 only.
        Block(("gsm8k",), (1024,), (
            PaperMethod("learn2pd_eotp_prefix", "Learn2PD + EoTP + prefix cache",
                        f"{_L2P},cache=prefix,eotp=true,{_FLOAT64}"),
            PaperMethod("learn2pd_eotp_dual", "Learn2PD + EoTP + dual cache", f"{_L2P},cache=dual,eotp=true,{_FLOAT64}"),
        )),
    ),
    # eval_llada.py generate_until: raw prompt when not is_instruct or the doc's task_id starts with "humaneval".
    raw_prompt=frozenset({"humaneval"}),
    seed=1234,
)

_LLADA = PaperMethod("llada", "LLaDA", f"policy=low_confidence,cache=none,{_FLOAT64}")
_PARALLEL = PaperMethod("parallel", "+Parallel", f"{_PAR},cache=none,{_FLOAT64}")
_FAST = PaperMethod("fastdllm", "Fast-dLLM (parallel + cache)", f"{_PAR},cache=prefix,{_FLOAT64}")

FASTDLLM = Paper(
    name="fastdllm",
    title="Fast-dLLM (arXiv 2505.22618) Table 1, LLaDA-8B-Instruct (Table 2 for Dream-v0-Base-7B)",
    # Table 1 (LLaDA) only: its Dream table (Table 2) was decoded by Fast-dLLM's Dream rules, FASTDLLM_DREAM.
    published=("fastdllm_llada",),
    blocks=(
        Block(BENCHMARKS, (256, 512), (
            _LLADA,
            PaperMethod("cache", "+Cache", f"policy=low_confidence,cache=prefix,{_FLOAT64}"),
            _PARALLEL,
            _FAST,
        )),
        # The gsm8k length-1024 rows (5-shot): parallel decoding in every cached column.
        Block(("gsm8k",), (1024,), (
            _LLADA,
            _PARALLEL,
            _FAST,
            PaperMethod("parallel_dual", "parallel + dual cache", f"{_PAR},cache=dual,{_FLOAT64}"),
        )),
    ),
    # eval_llada.py generate_until: the chat template whenever is_instruct, HumanEval included.
    raw_prompt=frozenset(),
    seed=None,
)

# Fast-dLLM's Dream rules (docs/dream.md): Dream's schedule and entropy in the model's dtype; the block sampler
# (a cache) commits each block's first position at its refresh; without a cache the whole answer is one block
# and the threshold rule is capped per step by the schedule of gen_length / 32 steps.
_DREAM = f"policy=entropy,schedule=dream,{_MODEL_DTYPE}"
_DREAM_PAR = f"{_PAR},{_MODEL_DTYPE}"

FASTDLLM_DREAM = Paper(
    name="fastdllm_dream",
    title="Fast-dLLM (arXiv 2505.22618) Table 2, Dream-v0-Base-7B",
    published=("fastdllm_dream",),
    blocks=(
        Block(BENCHMARKS, (256, 512), (
            PaperMethod("dream", "Dream", f"{_DREAM},cache=none", whole_answer=True),
            PaperMethod("cache", "+Cache", f"{_DREAM},refresh_commit=true,cache=prefix"),
            PaperMethod("parallel", "+Parallel", f"{_DREAM_PAR},cap=schedule,cache=none", whole_answer=True,
                        steps_per_32=True),
            PaperMethod("fastdllm", "Fast-dLLM (parallel + cache)", f"{_DREAM_PAR},refresh_commit=true,cache=prefix",
                        steps_per_32=True),
        )),
    ),
    # dream/eval.py _generate_batch: the chat template only with apply_chat_template=true (never in the
    # scripts, which evaluate the Base model); a BOS before every plain prompt (add_bos_token=true).
    raw_prompt=frozenset(BENCHMARKS),
    seed=None,
    model="Dream-org/Dream-v0-Base-7B",
    common_args="add_bos_token=true",
)

PAPERS: dict[str, Paper] = {p.name: p for p in (LEARN2PD, FASTDLLM, FASTDLLM_DREAM)}


def get_paper(name: str) -> Paper:
    if name not in PAPERS:
        raise ConfigError(f"paper {name!r} is unknown; valid choices: {', '.join(PAPERS)}")
    return PAPERS[name]


#: Both papers' model family, for a model whose family neither its config.json nor its name gives.
PAPERS_FAMILY = "llada"


def model_family(model: str) -> str | None:
    """The family of ``--model`` without loading it: a checkpoint folder's config.json, else the family
    facts on its name (a known checkpoint, a family's marker); None when neither says."""
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        try:
            return family_name_of_config_json(json.loads(config.read_text(encoding="utf-8")), str(config))
        except ValueError:
            return None
    return family_name_of_model(model)


def is_instruct(model: str) -> bool:
    """Whether ``model`` is an Instruct model, by its family's rule in the family facts: a known checkpoint's
    own (d3LLM_LLaDA's name does not say), else the family's marker in the name (LLaDA's: both papers'
    eval_llada.py test ``'instruct' in model_path.lower()``)."""
    return instruct_by_name(FACTS[model_family(model) or PAPERS_FAMILY], (model,))
