"""The ``learn2pd`` lm-eval model: the stock CLI in a subprocess on every family, import hook, arguments,
request handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from l2pd_eval.harness.lm_eval_model import Learn2PDLM

ROOT = Path(__file__).resolve().parents[1]


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout


@pytest.mark.slow
def test_hook_is_lazy_and_registers_the_model():
    assert run("import sys; print('torch' in sys.modules, 'lm_eval' in sys.modules)").split() == ["False", "False"]
    out = run("import sys\nfrom lm_eval.api.registry import get_model\nprint('torch' in sys.modules)\n"
              "print(get_model('learn2pd').__name__, get_model('hf').__name__)")
    assert out.split() == ["False", "Learn2PDLM", "HFLM"]  # lm-eval's own models still resolve


@pytest.mark.slow
def test_stock_lm_eval_cli_runs_a_local_task_and_writes_results(family, tmp_path):
    """On every family's tiny checkpoint, written by ``l2pd-eval make-tiny --family NAME``."""
    directory = tmp_path / f"tiny-{family.name}"
    make = [sys.executable, "-m", "l2pd_eval.cli", "make-tiny", str(directory), "--family", family.name]
    subprocess.run(make, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    cmd = [sys.executable, "-m", "lm_eval", "--model", "learn2pd", "--model_args",
           f"pretrained={directory},gen_length=16,block_length=8,policy=threshold,threshold=0.5,cache=dual,eotp=True,"
           "batch_size=2", "--tasks", "l2pd_smoke", "--include_path", "tests/fixtures/lm_eval_smoke",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # batch_size= in model_args (as the README documents) beats lm-eval's default --batch_size 1, said once;
    # lm-eval's default device (cuda:0) is no request, so a CPU run does not warn about it.
    assert proc.stderr.count("model_args batch_size=2 overrides lm-eval's --batch_size 1") == 1
    assert "requested but CUDA is not available" not in proc.stderr
    results = list(tmp_path.rglob("results_*.json"))
    sidecars = list(tmp_path.rglob("l2pd_*.json"))
    assert len(results) == 1 and len(sidecars) == 1
    assert results[0].parent == sidecars[0].parent
    assert results[0].name.removeprefix("results_") == sidecars[0].name.removeprefix("l2pd_")
    res = json.loads(results[0].read_text())
    assert "exact_match,none" in res["results"]["l2pd_smoke"]
    side = json.loads(sidecars[0].read_text())
    man = side["manifest"]
    # every parameter, the defaults filled in (the table's row label shows the ones model_args named)
    every = {"threshold": 0.5, "confidence": "float64", "cap": "none", "refresh_commit": False, "threshold_decay": 0.0}
    assert (man["policy"], man["policy_params"], man["cache"], man["eotp"]) == ("threshold", every, "dual", "true")
    assert (man["family"], man["add_bos_token"]) == (family.name, family.entry.add_bos)
    assert (man["gen_length"], man["block_length"], man["batch_size"]) == (16, 8, 2)
    assert (man["cuda_graph"], man["compile"]) == (False, False)  # auto: graphs only on CUDA devices
    assert sorted(s["doc_id"] for s in side["samples"]) == [0, 1, 2]
    assert all(s["task"] == "l2pd_smoke" and 1 <= s["nfe"] <= 16 and s["seconds"] > 0 for s in side["samples"])


@pytest.mark.parametrize("args, message", [
    (dict(policy="fastest"), "policy='fastest' is unknown; valid choices: dinfer_credit, dinfer_hierarchy, "
                             "dinfer_threshold, entropy, factor, learn2pd, (.+, )?low_confidence, .*wino$"),
    (dict(threshhold=0.9, policy="threshold"), "unknown argument\\(s\\) threshhold for policy='threshold'; valid:"),
    (dict(gen_length=100), "gen_length=100 is not divisible by block_length=(32|8)"),  # 8: a block-causal tiny's
    (dict(cache="triple"), "cache='triple' is unknown; valid choices: none, prefix, dual"),
    (dict(policy="learn2pd"), "policy=learn2pd needs filter="),
    (dict(batch_size="many"), "batch_size='many'; valid choices: a positive integer or auto"),
    (dict(cuda_graph="always"), "cuda_graph='always'; valid choices: auto, true, false"),
    (dict(eotp="maybe"), "eotp='maybe'; valid choices: false, true, committed, block_end"),
    (dict(block_length=0), "block_length=0 must be a positive integer"),
    (dict(compile_autotune=True), "compile_autotune=true only applies with compile=true"),
])
def test_bad_model_args_fail_with_one_clear_error(family, args, message):
    with pytest.raises(ValueError, match=message):
        Learn2PDLM(pretrained=str(family.directory), **args)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained="):
        Learn2PDLM(pretrained=str(tmp_path / "nope"))


def _req(text, **gen):
    return Instance("generate_until", {}, (text, gen), 0)


def test_generate_until_applies_stops_and_max_gen_toks(family):
    lm = Learn2PDLM(pretrained=str(family.directory), gen_length=16, block_length=8, batch_size=2, progress=False)
    prompts = ["Question: 1 + 1 =", "Hi", "def f(x):"]
    full = lm.generate_until([_req(p, until=[]) for p in prompts])
    assert len(full) == 3 and all(isinstance(t, str) for t in full)
    short = lm.generate_until([_req(p, until=[], max_gen_toks=3) for p in prompts])
    from l2pd_eval.engine import generate

    tokens = generate(lm.model, [lm.prompts.encode(p) for p in prompts], lm.config, lm.policy, lm.special).tokens
    for row, (long_text, cut) in enumerate(zip(full, short, strict=True)):
        assert cut == lm.tokenizer.decode(tokens[row, :3].tolist(), skip_special_tokens=True)
        assert long_text.startswith(cut.rstrip("\ufffd")) and len(cut) < len(long_text)  # cut mid-character: U+FFFD
    stop = next(ch for ch in full[0] if ch.strip())  # a character that really occurs in the output
    stopped = lm.generate_until([_req(prompts[0], until=[stop])])[0]
    assert stopped == full[0].split(stop, 1)[0]
    assert len(lm.recorder.sidecar.samples) == 7


def test_chat_template_for_instruct_models(tiny_dir, tmp_path):
    instruct = tmp_path / "Tiny-Instruct"
    instruct.symlink_to(tiny_dir, target_is_directory=True)
    lm = Learn2PDLM(pretrained=str(instruct), gen_length=8, block_length=8)
    ids = lm.prompts.encode("What is 2+2?")
    text = lm.tokenizer.decode(ids)
    assert text.startswith("<|startoftext|><|start_header_id|>user") and "What is 2+2?<|eot_id|>" in text
    # already rendered by lm-eval's --apply_chat_template: not wrapped twice
    rendered = lm.apply_chat_template([{"role": "user", "content": "hi"}])
    assert lm.tokenizer.decode(lm.prompts.encode(rendered)).count("<|start_header_id|>user") == 1
    plain = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8)
    assert "<|start_header_id|>" not in plain.tokenizer.decode(plain.prompts.encode("What is 2+2?"))
    forced = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8, chat="true")
    assert "<|start_header_id|>" in forced.tokenizer.decode(forced.prompts.encode("What is 2+2?"))


def test_gen_length_follows_each_tasks_max_gen_toks(family):
    tiny_dir = family.directory
    lm = Learn2PDLM(pretrained=str(tiny_dir), block_length=8, batch_size=4, progress=False)
    lm.generate_until([_req("a", max_gen_toks=8), _req("b", max_gen_toks=13), _req("c", max_gen_toks=8)])
    assert sorted(s.gen_length for s in lm.recorder.sidecar.samples) == [8, 8, 16]  # 13 rounds up to whole blocks
    # one token per step at each length (a block-causal grid also decodes its last block's completing masks)
    whole = family.entry.attention == "bidirectional"
    assert all(s.nfe == s.gen_length if whole else s.gen_length <= s.nfe <= s.gen_length + 8
               for s in lm.recorder.sidecar.samples)
    fixed = Learn2PDLM(pretrained=str(tiny_dir), gen_length=16, block_length=8, progress=False)
    fixed.generate_until([_req("a", max_gen_toks=8)])
    assert fixed.recorder.sidecar.samples[0].gen_length == 16
    with pytest.raises(ValueError, match="steps= needs an explicit gen_length="):
        Learn2PDLM(pretrained=str(tiny_dir), steps=8)


@pytest.mark.slow
def test_data_parallel_run_with_torchrun_splits_requests(tiny_dir, tmp_path):
    """Two CPU ranks (gloo): lm-eval splits the documents, rank 0 writes one sidecar with each doc once."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lm_eval", "--model", "learn2pd",
           "--model_args", f"pretrained={tiny_dir},gen_length=16,block_length=8", "--device", "cpu",
           "--tasks", "l2pd_smoke", "--include_path", "tests/fixtures/lm_eval_smoke", "--output_path", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        # Seen once in ~10 runs, only in the full suite on a loaded 2-core machine: one rank aborted in
        # native code (no Python traceback) as generation began; not reproduced in isolation (8 runs).
        # One retry for exactly that signature; any other failure, or the same one twice, fails the test.
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sidecar,) = list(tmp_path.rglob("l2pd_*.json"))
    side = json.loads(sidecar.read_text())
    assert side["manifest"]["world_size"] == 2
    assert sorted(s["doc_id"] for s in side["samples"]) == [0, 1, 2]  # lm-eval's padding copy is not counted
    (results,) = list(tmp_path.rglob("results_*.json"))
    assert json.loads(results.read_text())["n-samples"]["l2pd_smoke"]["effective"] == 3


@pytest.mark.slow
def test_data_parallel_resume_where_one_rank_has_everything_cached(tiny_dir, tmp_path):
    """--use_cache with two ranks: CachingLM never calls a rank whose requests are all in its db, yet rank 0
    gathers the sidecar records collectively; that rank must join, or rank 0 waits for it forever."""
    torchrun = Path(sys.executable).with_name("torchrun")

    def cmd(limit: list[str]) -> list[str]:
        return [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lm_eval", "--model", "learn2pd",
                "--model_args", f"pretrained={tiny_dir},gen_length=16,block_length=8", "--device", "cpu",
                "--tasks", "l2pd_smoke", "--include_path", "tests/fixtures/lm_eval_smoke", "--output_path",
                str(tmp_path / "out"), "--use_cache", str(tmp_path / "cache" / "db"), *limit]

    first = subprocess.run(cmd(["--limit", "2"]), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]  # rank 0 decoded doc 0, rank 1 doc 1
    # All 3 docs: rank 1 gets doc 1 (and lm-eval's padding copy of it), all cached; rank 0 decodes doc 2.
    second = subprocess.run(cmd([]), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    sidecars = sorted(tmp_path.rglob("l2pd_2*.json"))
    side = json.loads(sidecars[-1].read_text())
    assert sorted(s["doc_id"] for s in side["samples"]) == [0, 1, 2]
    assert side["manifest"]["restored_from_cache"] == 2


@pytest.mark.slow
def test_compile_flag_compiles_the_blocks(tiny_dir):
    lm = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8, compile=True, progress=False)
    block = lm.model.model.transformer.blocks[0]
    assert "compile" in type(block.forward).__module__ or hasattr(block.forward, "_torchdynamo_orig_callable")
    eager = Learn2PDLM(pretrained=str(tiny_dir), gen_length=8, block_length=8, progress=False)
    assert lm.generate_until([_req("Hi", until=[])]) == eager.generate_until([_req("Hi", until=[])])


class _OnGpu:
    """The tiny model as ``engine.memory`` sees it, but on a GPU: its shapes and dtype, device cuda."""

    def __init__(self, model):
        self.config, self.dtype, self.device = model.config, model.dtype, torch.device("cuda")
        self.logit_shift = model.logit_shift


def test_auto_batch_size_is_sized_per_decode_length(family, monkeypatch):
    """batch_size=auto: each (gen_length, temperature) is sized the first time it is met, by the real
    ``engine.memory.largest_batch`` under a device budget the test sets; the 1024-token tasks get their own
    (smaller) size instead of the one computed for 256-token answers."""
    import l2pd_eval.harness.lm_eval_model as adapter
    from l2pd_eval.engine import memory

    budget = 64 * 2**20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (budget, 2 * budget))
    calls = []

    def largest_batch_on_gpu(model, config, **kwargs):
        calls.append((config.gen_length, config.temperature, kwargs))
        return memory.largest_batch(_OnGpu(model), config, **kwargs)

    monkeypatch.setattr(adapter, "largest_batch", largest_batch_on_gpu)
    block = getattr(family.model, "block_size", 32)  # a block-causal model takes its trained block only
    lm = Learn2PDLM(pretrained=str(family.directory), block_length=block, batch_size="auto", max_batch_size=1000,
                    progress=False)
    assert calls == []  # nothing is sized before a configuration is met
    short, long = lm.config_for(256), lm.config_for(1024)
    sizes = [lm.batch_size_for(c) for c in (long, short, long, short)]
    assert [c[:2] for c in calls] == [(1024, 0.0), (256, 0.0)]  # once per key, with the key's own length
    assert all(kw == {"prompt_len": 1024, "cap": 1000, "speed": lm.speed, "policy": lm.policy} for *_, kw in calls)
    assert 1 < sizes[0] == sizes[2] < sizes[1] == sizes[3]
    assert lm.batch_size_for(lm.config_for(1024, 0.5)) == sizes[0] and len(calls) == 3  # a new temperature: sized
    assert lm.recorder.sidecar.manifest["batch_size"] == "auto"
    assert lm.recorder.sidecar.manifest["batch_sizes"] == [
        {"gen_length": 256, "temperature": 0.0, "batch_size": sizes[1]},
        {"gen_length": 1024, "temperature": 0.0, "batch_size": sizes[0]},
        {"gen_length": 1024, "temperature": 0.5, "batch_size": sizes[0]}]



def test_auto_batch_size_leaves_room_for_wino_s_verification_copy(tiny_dir, monkeypatch):
    """The adapter sizes with its bound policy: WINO's copy of the block costs rows threshold would get."""
    import l2pd_eval.harness.lm_eval_model as adapter
    from l2pd_eval.engine import memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (64 * 2**20, 128 * 2**20))
    monkeypatch.setattr(adapter, "largest_batch", lambda model, config, **kw: memory.largest_batch(
        _OnGpu(model), config, **kw))
    sizes = {}
    for name in ("threshold", "wino"):
        lm = Learn2PDLM(pretrained=str(tiny_dir), policy=name, batch_size="auto", max_batch_size=1000, progress=False)
        sizes[name] = lm.batch_size_for(lm.config_for(256))
    assert 1 < sizes["wino"] < sizes["threshold"]

def test_requests_are_batched_per_configuration_at_its_own_size(family, monkeypatch):
    """One generate_until call with two answer lengths: each length's requests are batched at that length's
    size (longest prompts first), and the answers are those of one request per batch."""
    import l2pd_eval.harness.lm_eval_model as adapter

    monkeypatch.setattr(adapter, "largest_batch", lambda model, config, **kw: {8: 2, 16: 1}[config.gen_length])
    batches = []
    real_generate = adapter.generate

    def spy(model, prompts, config, policy, special, **kw):
        batches.append((config.gen_length, [len(p) for p in prompts]))
        return real_generate(model, prompts, config, policy, special, **kw)

    prompts = ["Hi", "Question: 1 + 1 =", "def f(x):", "a b c d e f g", "x"]
    reqs = [_req(p, until=[], max_gen_toks=8 if i % 2 else 16) for i, p in enumerate(prompts)]
    one = Learn2PDLM(pretrained=str(family.directory), block_length=8, batch_size=1, progress=False)
    expected = one.generate_until(reqs)
    lm = Learn2PDLM(pretrained=str(family.directory), block_length=8, batch_size="auto", progress=False)
    monkeypatch.setattr(adapter, "generate", spy)
    assert lm.generate_until(reqs) == expected
    lengths = {i: len(lm.prompts.encode(p)) for i, p in enumerate(prompts)}
    if family.entry.attention == "block_causal":  # batches hold one block grid each (plan_batches)
        assert all(len({n % 8 for n in rows}) == 1 and len(rows) <= {8: 2, 16: 1}[g] for g, rows in batches)
        assert sorted(n for _, rows in batches for n in rows) == sorted(lengths.values())
        return
    assert batches == [(8, sorted((lengths[1], lengths[3]), reverse=True)),
                       *((16, [n]) for n in sorted((lengths[0], lengths[2], lengths[4]), reverse=True))]
    assert sorted(lm.batch_sizes.items()) == [((8, 0.0), 2), ((16, 0.0), 1)]
