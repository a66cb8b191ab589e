"""The environment stamp every run records (GPU, driver, CUDA, versions, dtype, attention kernel, compile, CUDA
graphs, batch size, l2pd-eval version and commit), read back by the report; the filter named by its manifest."""

from __future__ import annotations

import pytest

from l2pd_eval.results import environment
from l2pd_eval.results.manifest import filter_name
from l2pd_eval.testbed import checkpoint_path, filter_path


@pytest.fixture(scope="module")
def manifest():
    from l2pd_eval.harness.lm_eval_model import Learn2PDLM

    lm = Learn2PDLM(pretrained=str(checkpoint_path()), policy="learn2pd", filter=str(filter_path()), progress=False,
                    batch_size=4)
    return lm.recorder.sidecar.manifest


def test_the_adapter_stamps_every_run(manifest):
    s = environment.stamp(manifest)
    assert list(s) == [k for k, _ in environment.STAMP_KEYS]
    import torch
    import transformers

    assert s["gpu"] == "CPU" and environment.hardware(s) == "CPU"  # this machine has no GPU
    assert (s["torch"], s["transformers"]) == (torch.__version__, transformers.__version__)
    assert s["dtype"] == "float32" and s["attention"] == "bidirectional, torch SDPA"
    assert (s["compile"], s["cuda_graph"], s["batch_size"]) == ("false", "false", "4")
    assert s["l2pd_eval"] and s["lm_eval"] == "0.4.13"
    assert s["git_commit"] is None or len(s["git_commit"].split("+")[0]) == 40
    assert manifest["filter_name"] == "MLP[32], block 32, for testbed/checkpoint" == filter_name(filter_path())


def test_gpu_runs_name_the_kernels_and_the_batch_sizes_used():
    m = {"device": "cuda:0", "dtype": "torch.bfloat16", "attention": "bidirectional", "split_keys": True,
         "compile": True, "cuda_graph": True, "batch_size": "auto", "batch_sizes": [{"batch_size": 64}, {"batch_size": 8}],
         "environment": {"gpu": "NVIDIA H200", "gpu_count": 2, "driver": "570.86", "cuda": "12.8",
                         "sdpa_backends": ["flash", "mem_efficient", "math"], "harness_git_commit": "abc"}}
    s = environment.stamp(m)
    assert s["attention"] == "bidirectional, torch SDPA (flash/mem_efficient/math), key-split flash at batch 1"
    assert s["batch_size"] == "auto (8, 64)" and s["dtype"] == "bfloat16" and s["git_commit"] == "abc"
    assert environment.hardware(s) == "NVIDIA H200 x2"
    assert environment.summary(s) == "NVIDIA H200 x2, bfloat16, bs auto (8, 64), compiled"
    assert "driver=570.86" in environment.full(s)
    assert environment.stamp(None)["gpu"] is None and environment.hardware(environment.stamp({})) == "not recorded"


def test_differences_name_the_key_the_values_and_the_rows():
    a = environment.stamp({"device": "cuda", "environment": {"gpu": "H100", "torch": "2.13"}})
    b = environment.stamp({"device": "cuda", "environment": {"gpu": "H100", "torch": "2.14"}})
    c = environment.stamp({"device": "cpu", "environment": {"torch": "2.14"}})
    diff = environment.differences([("x", a), ("y", b), ("z", c)])
    assert diff == {"gpu": {"H100": ["x", "y"], "CPU": ["z"]}, "torch": {"2.13": ["x"], "2.14": ["y", "z"]}}
    assert environment.difference_lines([("x", a), ("y", b)]) == [
        "environment differs between rows in torch: '2.13' (x); '2.14' (y)"]


def test_filter_names_come_from_the_manifest_or_the_file(tmp_path):
    pth = tmp_path / "llada_b32.pth"
    pth.write_bytes(b"x")
    assert filter_name(pth) == "authors' filter llada_b32.pth"
    assert filter_name(tmp_path) is None  # no filter.json: plots fall back to the path's last part
