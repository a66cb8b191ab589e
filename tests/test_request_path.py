"""The adapter's ``generate_until`` path: lm-eval's gen_kwargs reach the decoder, the papers' TPS fields,
the partial/complete sidecar, and progress lines off a terminal."""

from __future__ import annotations

import json
import logging
import re

import pytest
from lm_eval.api.instance import Instance

from l2pd_eval.harness.gen_kwargs import request_settings
from l2pd_eval.harness.lm_eval_model import Learn2PDLM

PROMPTS = ["Question: 1 + 1 =", "Hi", "def f(x):"]


def _req(text, doc_id=0, **gen):
    return Instance("generate_until", {}, (text, gen), doc_id, metadata=("t", doc_id, 1))


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress=False)


@pytest.mark.parametrize("gen, message", [
    (dict(top_p=0.9), "gen_kwargs top_p=0.9: learn2pd cannot honour it; valid keys: until, max_gen_toks, "
                      "temperature, do_sample"),
    (dict(num_beams=4, top_k=5), "gen_kwargs num_beams=4, top_k=5: learn2pd cannot honour them"),
    (dict(do_sample=False, temperature=0.5), "gen_kwargs temperature=0.5 with do_sample=false: the task asks for "
                                             "greedy decoding; add do_sample=true to --gen_kwargs to sample, or "
                                             "drop temperature"),
    (dict(do_sample=True, temperature=0), "gen_kwargs do_sample=true with temperature=0: give a temperature > 0"),
    (dict(do_sample="sometimes"), "gen_kwargs do_sample='sometimes' is not a boolean"),
    (dict(temperature=-1), "gen_kwargs temperature=-1.0 must be >= 0"),
    (dict(max_gen_toks=0), "gen_kwargs max_gen_toks=0 must be a positive integer"),
])
def test_gen_kwargs_we_cannot_honour_are_errors_naming_them(lm, gen, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        lm.generate_until([_req("Hi", **gen)])


def test_gen_kwargs_rules():
    def temp(gen, model=None):
        return request_settings(gen, model, set()).temperature

    assert temp({"do_sample": False, "temperature": 0.0}) == 0.0  # what lm-eval's tasks pass
    assert temp({"temperature": 0.7}) == 0.7
    assert temp({"do_sample": True}) == 1.0  # transformers' default temperature
    assert temp({"do_sample": "true", "temperature": 0.3}) == 0.3
    assert temp({"top_p": None}) == 0.0  # None = not given
    s = request_settings({"until": "Q:", "max_gen_toks": "12"}, None, set())
    assert (s.until, s.max_gen_toks) == (("Q:",), 12)


def test_sampling_from_gen_kwargs_reaches_the_decoder(lm, tiny_dir):
    greedy = lm.generate_until([_req(p, until=[]) for p in PROMPTS])
    assert lm.generate_until([_req(p, until=[], do_sample=False, temperature=0.0) for p in PROMPTS]) == greedy
    sampled = lm.generate_until([_req(p, until=[], do_sample=True, temperature=5.0) for p in PROMPTS])
    assert sampled != greedy
    # The same as a run whose model_args set the temperature: per-request configs, same seeds.
    hot = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress=False, temperature=5.0)
    assert hot.generate_until([_req(p, until=[]) for p in PROMPTS]) == sampled
    # Mixed in one call: each request decodes at its own temperature.
    mixed = lm.generate_until([_req(PROMPTS[0], until=[]), _req(PROMPTS[1], until=[], temperature=5.0)])
    assert mixed == [greedy[0], sampled[1]]


def test_model_args_temperature_wins_over_the_tasks_and_says_so_once(tiny_dir, caplog):
    hot = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress=False, temperature=5.0)
    with caplog.at_level(logging.WARNING):
        out = hot.generate_until([_req(p, until=[], do_sample=False, temperature=0.0) for p in PROMPTS])
    assert out == hot.generate_until([_req(p, until=[]) for p in PROMPTS])
    assert caplog.text.count("model_args temperature=5.0 overrides the task's generation kwargs (temperature 0.0)") == 1


def test_papers_tps_fields_are_recorded(tiny_dir, tmp_path):
    side = tmp_path / "side.json"
    lm = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress=False, sidecar=str(side))
    texts = lm.generate_until([_req(p, i, until=["e"]) for i, p in enumerate(PROMPTS)])
    data = json.loads(side.read_text())
    assert data["complete"] is True and data["requests_done"] == data["requests_total"] == 3
    (loop,) = data["loops"]
    assert loop["done"] and loop["tasks"] == {"t": 3}
    assert loop["seconds"] >= sum(s["seconds"] for s in data["samples"])  # the loop includes the decodes
    for s in data["samples"]:
        text = texts[s["doc_id"]]
        assert "e" not in text  # cut at the stop string before counting
        ids = lm.tokenizer(text)["input_ids"]
        assert s["paper_tokens"] == sum(1 for i in ids if i not in lm.family.paper_drop_ids)
    assert data["manifest"]["paper_drop_ids"] == [126081]  # the LLaDA family's, so the report needs no model


def test_progress_lines_off_a_terminal(tiny_dir, capsys):
    lm = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress_every_s=0)
    lm.generate_until([_req(p, until=[]) for p in PROMPTS])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("learn2pd low_confidence:")]
    assert [line.split(",")[0] for line in lines] == [f"learn2pd low_confidence: {n}/3 requests" for n in (1, 2, 3)]
    assert re.search(r"TPS [0-9.]+ mean, [0-9.]+ total \(\d+ tok\), elapsed 0:00:\d\d, ETA 0:\d\d:\d\d$", lines[0])
    assert "ETA" not in lines[-1]
    quiet = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress=False)
    quiet.generate_until([_req("Hi", until=[])])
    assert "learn2pd" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["checkpoint_s", "progress_every_s", "temperature"])
def test_negative_intervals_and_temperature_are_errors(tiny_dir, name):
    with pytest.raises(ValueError, match=f"^{name}=-1.0 must be >= 0$"):
        Learn2PDLM(pretrained=str(tiny_dir), **{name: "-1"})
