#!/usr/bin/env bash
# A/B of the filter input convention (--committed-conf raw vs zero) on the testbed: one recording of
# reference trajectories (it stores the raw confidences, so it serves both arms), one filter per convention
# trained with the same seed and settings, each scored with policy=learn2pd (EoTP off and eotp=true).
# The recipe is scripts/train_testbed_filter.sh's (its data seed 9000 prompts, first N of its 2000);
# only the convention differs between the arms. Results: OUT/eval-{raw,zero}.json, timings in OUT/times.txt.
# Usage: scripts/filter_convention_ab.sh OUT_DIR [n_prompts=120] [device=cpu] [test_limit=200]
set -euo pipefail
OUT=${1:?output directory}; N=${2:-120}; DEVICE=${3:-cpu}; LIMIT=${4:-200}
CKPT=l2pd_eval/testbed/checkpoint
mkdir -p "$OUT"
stage() { local name=$1 t0=$SECONDS; shift; "$@"; echo "$name: $((SECONDS - t0)) s" >> "$OUT/times.txt"; }
python3 - "$OUT/prompts.jsonl" "$N" <<'PY'
import json, sys
from l2pd_eval.testbed.data import format_prompt, generate, load_test_split
test = {p.question for p in load_test_split()}
with open(sys.argv[1], "w") as fh:
    for i, p in enumerate(generate(seed=9000, n=2000, exclude=test)[: int(sys.argv[2])]):
        fh.write(json.dumps({"id": i, "prompt": format_prompt(p.question)}) + "\n")
PY
stage trajectories python3 -m l2pd_eval.cli trajectories --jsonl "$OUT/prompts.jsonl" --field prompt --id-field id \
  --model "$CKPT" --out "$OUT/traj" --gen-length 96 --block-length 32 --batch-size 500 --no-chat-template \
  --device "$DEVICE" --dtype float32 --no-progress
for CONV in raw zero; do
  stage "train-$CONV" python3 -m l2pd_eval.cli train-filter "$OUT/traj" --out "$OUT/filter-$CONV" --device "$DEVICE" --seed 0 \
    --committed-conf "$CONV" --threads 1
  stage "eval-$CONV" python3 - "$CKPT" "$OUT/filter-$CONV" "$DEVICE" "$LIMIT" "$OUT/eval-$CONV.json" <<'PY'
import json, sys
from l2pd_eval.testbed.data import load_test_split
from l2pd_eval.testbed.evaluate import Setting, evaluate_checkpoint, format_table
ckpt, filt, device, limit, out = sys.argv[1:]
settings = [Setting("learn2pd", "learn2pd", {"filter": filt}),
            Setting("learn2pd+eotp", "learn2pd", {"filter": filt}, eotp="true")]
res = evaluate_checkpoint(ckpt, device, load_test_split()[: int(limit)], settings, dtype="float32", batch_size=50)
print(format_table(res))
open(out, "w").write(json.dumps(res, indent=2) + "\n")
PY
done
cat "$OUT/times.txt"
