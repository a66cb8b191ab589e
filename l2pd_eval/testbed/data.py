"""Synthetic GSM8K-format arithmetic word problems for the embedded testbed model.

The testbed must be learnable by a few-million-parameter model in minutes, yet look and score exactly
like GSM8K: a word problem, reasoning lines with ``<<a*b=c>>`` calculator annotations, and a final
``#### N`` line, so lm-eval's gsm8k answer extraction applies unchanged. Numbers stay small (one or
two digits per operand) and every intermediate value is a non-negative integer, so that a correct
answer only needs a handful of memorisable arithmetic facts per line.

Everything is deterministic from a seed: :func:`make_splits` draws the test split first and the
training stream (:func:`iter_problems` with ``exclude``) skips every test question, so the two are
disjoint by construction.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: The seed the shipped ``tasks/l2pd_demo/test.jsonl`` was generated from.
DEFAULT_TEST_SEED = 1234
#: Size of the shipped demo test split.
DEFAULT_TEST_SIZE = 200
#: Size of the shipped few-shot pool (the first training problems; only used with ``--num_fewshot``).
DEFAULT_FEWSHOT_SIZE = 20

#: lm-eval gsm8k's strict-match pattern (``tasks/gsm8k/gsm8k.yaml``).
ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
#: Calculator annotation ``<<expr=value>>`` as GSM8K writes it.
CALC_RE = re.compile(r"<<([^=<>]+)=([^<>]+)>>")

NAMES = [
    "Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jade", "Kai", "Lena", "Max",
    "Nora", "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vic", "Wes", "Yara", "Zoe",
]
# (singular, plural) pairs; plural forms are listed so no inflection rules are needed.
GOODS = [
    ("apple", "apples"), ("pencil", "pencils"), ("book", "books"), ("cookie", "cookies"),
    ("ticket", "tickets"), ("shirt", "shirts"), ("cup", "cups"), ("toy", "toys"), ("pen", "pens"),
    ("candle", "candles"), ("plate", "plates"), ("ball", "balls"), ("lemon", "lemons"),
    ("notebook", "notebooks"), ("sticker", "stickers"), ("muffin", "muffins"),
]
THINGS = ["marbles", "stamps", "cards", "shells", "beads", "coins", "stickers", "crayons"]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("pack", "packs")]
PLANTS = ["trees", "roses", "bushes", "tulips"]
TASKS = [("reads", "pages"), ("runs", "miles"), ("writes", "lines"), ("bakes", "cakes"), ("folds", "cranes")]


#: The zero-shot prompt of the ``l2pd_demo`` task (lm-eval gsm8k's ``doc_to_text``); the testbed model
#: is trained on exactly this string, so keep the two in sync.
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


@dataclass(frozen=True)
class Problem:
    """One question/answer pair in the HF ``openai/gsm8k`` schema, plus the template that made it."""

    question: str
    answer: str
    template: str

    @property
    def final(self) -> int:
        """The integer after ``####``."""
        return int(ANSWER_RE.search(self.answer).group(1).replace(",", ""))

    def to_json(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}


def _calc(a: int, op: str, b: int) -> tuple[int, str]:
    """``a op b`` and GSM8K's annotated form ``a op b=<<a op b=c>>c``."""
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    if op == "/" and a % b:
        raise ValueError(f"{a}/{b} is not an integer")
    expr = f"{a}{op}{b}"
    return value, f"{expr}=<<{expr}={value}>>{value}"


def _finish(lines: list[str], final: int) -> str:
    return "\n".join([*lines, f"#### {final}"])


# ---------------------------------------------------------------------------------------------
# Templates: each draws its numbers from ``rng`` and returns (question, answer). 2 to 4 steps.
# ---------------------------------------------------------------------------------------------


def _shopping(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    (g1, g1s), (g2, g2s) = rng.sample(GOODS, 2)
    a, p, b, q = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 9), rng.randint(2, 12)
    c1, l1 = _calc(a, "*", p)
    c2, l2 = _calc(b, "*", q)
    tot, l3 = _calc(c1, "+", c2)
    question = (f"{name} buys {a} {g1s} for ${p} each and {b} {g2s} for ${q} each. "
                f"How much does {name} spend in total?")
    return question, _finish([f"The {g1s} cost {l1} dollars.", f"The {g2s} cost {l2} dollars.",
                              f"{name} spends {l3} dollars.", ], tot)


def _change(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    g, gs = rng.choice(GOODS)
    a, p = rng.randint(2, 9), rng.randint(2, 12)
    bill = rng.choice([b for b in (20, 50, 100, 200) if b > a * p])
    cost, l1 = _calc(a, "*", p)
    left, l2 = _calc(bill, "-", cost)
    question = (f"{name} buys {a} {gs} that cost ${p} each and pays with a ${bill} bill. "
                f"How much change does {name} get?")
    return question, _finish([f"The {gs} cost {l1} dollars.", f"The change is {l2} dollars."], left)


def _rate(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    verb, unit = rng.choice(TASKS)
    r, d = rng.randint(2, 12), rng.randint(2, 9)
    total = r * d + rng.randint(5, 60)
    done, l1 = _calc(r, "*", d)
    left, l2 = _calc(total, "-", done)
    question = (f"{name} {verb} {r} {unit} a day for {d} days. The goal is {total} {unit}. "
                f"How many more {unit} does {name} need?")
    return question, _finish([f"{name} {verb} {l1} {unit}.", f"{name} needs {l2} more {unit}."], left)


def _sharing(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    thing = rng.choice(THINGS)
    k = rng.randint(2, 9)
    each = rng.randint(2, 12)
    total = k * each
    a = rng.randint(1, total - 1)
    b = total - a
    got, l1 = _calc(a, "+", b)
    per, l2 = _calc(got, "/", k)
    question = (f"{name} has {a} {thing} and finds {b} more. {name} shares them equally among {k} friends. "
                f"How many {thing} does each friend get?")
    return question, _finish([f"{name} has {l1} {thing}.", f"Each friend gets {l2} {thing}."], per)


def _farm(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    plant = rng.choice(PLANTS)
    rows, per = rng.randint(2, 9), rng.randint(2, 12)
    new = rng.randint(2, 30)
    dead = rng.randint(1, min(20, rows * per + new - 1))
    grid, l1 = _calc(rows, "*", per)
    more, l2 = _calc(grid, "+", new)
    now, l3 = _calc(more, "-", dead)
    question = (f"{name} has {rows} rows of {per} {plant}. {name} plants {new} more {plant} and {dead} "
                f"of them die. How many {plant} are there now?")
    return question, _finish([f"There are {l1} {plant}.", f"After planting there are {l2}.",
                              f"Now there are {l3} {plant}."], now)


def _wages(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    w, h, d = rng.randint(2, 12), rng.randint(2, 6), rng.randint(2, 5)
    day, l1 = _calc(w, "*", h)
    earned, l2 = _calc(day, "*", d)
    spent = rng.randint(1, earned - 1)
    left, l3 = _calc(earned, "-", spent)
    question = (f"{name} earns ${w} an hour and works {h} hours a day for {d} days. {name} spends ${spent}. "
                f"How much money does {name} have left?")
    return question, _finish([f"{name} earns {l1} dollars a day.", f"{name} earns {l2} dollars.",
                              f"{name} has {l3} dollars left."], left)


def _containers(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    thing = rng.choice(THINGS)
    box, boxes = rng.choice(CONTAINERS)
    n, per = rng.randint(2, 9), rng.randint(2, 12)
    have = rng.randint(1, 40)
    bought, l1 = _calc(n, "*", per)
    gift = rng.randint(1, min(20, have + bought - 2))
    # Make the remainder even (and so >= 2) so that halving it is exact.
    if (have + bought - gift) % 2:
        gift += 1
    tot, l2 = _calc(have, "+", bought)
    rest, l3 = _calc(tot, "-", gift)
    half, l4 = _calc(rest, "/", 2)
    question = (f"{name} has {have} {thing} and buys {n} {boxes} with {per} {thing} in each {box}. "
                f"{name} gives {gift} {thing} away and keeps half of the rest. How many {thing} does {name} keep?")
    return question, _finish([f"{name} buys {l1} {thing}.", f"{name} has {l2} {thing}.",
                              f"After the gift {name} has {l3}.", f"{name} keeps {l4} {thing}."], half)


TEMPLATES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "shopping": _shopping, "change": _change, "rate": _rate, "sharing": _sharing,
    "farm": _farm, "wages": _wages, "containers": _containers,
}


def iter_problems(seed: int, exclude: Iterable[str] = ()) -> Iterator[Problem]:
    """Endless, deterministic stream of distinct problems; questions in ``exclude`` are skipped."""
    rng = random.Random(seed)
    seen = set(exclude)
    names = sorted(TEMPLATES)
    while True:
        name = rng.choice(names)
        question, answer = TEMPLATES[name](rng)
        if question in seen:
            continue
        seen.add(question)
        yield Problem(question, answer, name)


def generate(seed: int, n: int, exclude: Iterable[str] = ()) -> list[Problem]:
    """The first ``n`` problems of :func:`iter_problems`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    stream = iter_problems(seed, exclude)
    return [next(stream) for _ in range(n)]


def make_splits(seed: int = DEFAULT_TEST_SEED, n_test: int = DEFAULT_TEST_SIZE,
                n_train: int = 0) -> tuple[list[Problem], list[Problem]]:
    """(train, test): test drawn from ``seed``, train from ``seed + 1`` without any test question."""
    test = generate(seed, n_test)
    train = generate(seed + 1, n_train, exclude=[p.question for p in test])
    return train, test


def write_jsonl(problems: Iterable[Problem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def task_data_dir() -> Path:
    """Folder of the ``l2pd_demo`` lm-eval task (its shipped jsonl files), source checkout or wheel."""
    from l2pd_eval.harness._hook import task_dir

    base = task_dir()
    if base is None or not (base / "l2pd_demo").is_dir():
        raise FileNotFoundError("the l2pd_demo task folder is missing from this installation")
    return base / "l2pd_demo"


def load_test_split() -> list[Problem]:
    """The shipped demo test split (what ``lm_eval --tasks l2pd_demo`` scores)."""
    return [Problem(r["question"], r["answer"], "") for r in read_jsonl(task_data_dir() / "test.jsonl")]


def write_task_files(out_dir: str | Path, seed: int = DEFAULT_TEST_SEED, n_test: int = DEFAULT_TEST_SIZE,
                     n_fewshot: int = DEFAULT_FEWSHOT_SIZE) -> tuple[Path, Path]:
    """(Re)write the task's test.jsonl and fewshot.jsonl (the first training problems)."""
    train, test = make_splits(seed, n_test, n_fewshot)
    return write_jsonl(test, Path(out_dir) / "test.jsonl"), write_jsonl(train, Path(out_dir) / "fewshot.jsonl")


def main(argv: list[str] | None = None) -> int:
    """``python -m l2pd_eval.testbed.data OUT_DIR``: write the task files (and train.jsonl if --train > 0)."""
    import argparse

    parser = argparse.ArgumentParser(description="Write the synthetic GSM8K-format testbed splits.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=DEFAULT_TEST_SEED)
    parser.add_argument("--test", type=int, default=DEFAULT_TEST_SIZE)
    parser.add_argument("--fewshot", type=int, default=DEFAULT_FEWSHOT_SIZE)
    parser.add_argument("--train", type=int, default=0, help="also write this many training problems")
    args = parser.parse_args(argv)
    for name, value in (("--test", args.test), ("--fewshot", args.fewshot), ("--train", args.train)):
        if value < 0:
            parser.error(f"{name} must be >= 0, got {value}")
    paths = write_task_files(args.out_dir, args.seed, args.test, args.fewshot)
    if args.train:
        train, _ = make_splits(args.seed, args.test, args.train)
        paths += (write_jsonl(train, Path(args.out_dir) / "train.jsonl"),)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
