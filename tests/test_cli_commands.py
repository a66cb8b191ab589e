"""``l2pd-eval`` as a newcomer meets it (issue 23): ``--version``, every ``--help`` instant (no torch at import),
bad input one line with exit status 2, and no command overwriting a checkpoint or trajectories it did not
write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l2pd_eval.cli import COMMANDS
from l2pd_eval.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    from l2pd_eval import __version__

    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"l2pd-eval {__version__}"


def test_every_help_is_instant_it_imports_no_torch():
    """One fresh interpreter per command (this one has torch loaded already): --help builds the parser only."""
    probe = ("import sys\nfrom l2pd_eval.cli import main\ntry:\n    main([sys.argv[1], '--help'])\n"
             "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
             "heavy = [m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules]\n"
             "print('HEAVY', heavy)\n")
    for name in sorted(COMMANDS):
        proc = subprocess.run([sys.executable, "-c", probe, name], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"usage: l2pd-eval {name}" in proc.stdout
        assert proc.stdout.strip().endswith("HEAVY []"), f"`l2pd-eval {name} --help` imports {proc.stdout.splitlines()[-1]}"


def test_make_tiny_never_overwrites_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert cli_main(["make-tiny", str(out)]) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli_main(["make-tiny", str(out), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"l2pd-eval make-tiny: error: {out}: not empty; make-tiny writes a new checkpoint folder and "
                   "overwrites nothing: choose a new or empty folder, or pass --force to replace its config.json, "
                   "weights and tokenizer")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # untouched
    assert cli_main(["make-tiny", str(out), "--seed", "1", "--force"]) == 0
    assert (out / "model.safetensors").read_bytes() != files["model.safetensors"]
    (tmp_path / "file").write_text("x")
    assert cli_main(["make-tiny", str(tmp_path / "file")]) == 2
    assert f"{tmp_path / 'file'}: a file; make-tiny" in capsys.readouterr().err
    assert cli_main(["make-tiny", str(tmp_path / "d"), "--family", "gpt"]) == 2
    assert "family='gpt'; valid choices: dream, llada" in capsys.readouterr().err


@pytest.fixture()
def prompts_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in ("1 + 1 =", "2 + 3 =")))
    return path


def test_trajectories_that_would_record_nothing_name_gen_length(tiny_dir, prompts_jsonl, tmp_path, capsys):
    argv = ["trajectories", "--jsonl", str(prompts_jsonl), "--model", str(tiny_dir), "--out", str(tmp_path / "t"),
            "--gen-length", "1024", "--block-length", "32", "--no-progress"]  # the tiny model's whole context
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "l2pd-eval trajectories: error: --gen-length 1024 leaves no room for a prompt in the model's 1024-token "
        "context (config.json max_sequence_length), so nothing would be recorded; pass a --gen-length below 1024, "
        "e.g. --gen-length 512")
    assert not (tmp_path / "t").exists()  # refused before anything was written


def test_trajectories_never_write_into_a_folder_of_other_files(tiny_dir, prompts_jsonl, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "shard_00000.safetensors").write_text("a file of mine that a shard would replace")
    argv = ["trajectories", "--jsonl", str(prompts_jsonl), "--model", str(tiny_dir), "--out", str(out),
            "--gen-length", "8", "--block-length", "8", "--no-progress"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"l2pd-eval trajectories: error: --out {out}: the folder is not empty and holds no trajectories (no "
        "manifest.json); choose a new or empty folder (an existing trajectories folder is resumed)")
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000.safetensors"]


def test_filter_settings_choices_match_the_network(tmp_path):
    """The torch-free settings (filters/config.py) name exactly what the network and the writer implement."""
    from l2pd_eval.filters.config import ACTIVATION_NAMES, CONF_DTYPE_NAMES
    from l2pd_eval.filters.data import CONF_DTYPES
    from l2pd_eval.policies.filter_net import ACTIVATIONS

    assert sorted(ACTIVATIONS) == sorted(ACTIVATION_NAMES) and sorted(CONF_DTYPES) == sorted(CONF_DTYPE_NAMES)
