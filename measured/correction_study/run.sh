#!/usr/bin/env bash
# Per-BatchNorm mismatch of the shared VGG11 merged with uniform widths (max_ratio 0.5: 25 % of the parameters;
# 0.75: 6.3 %), each rule and estimator: stored statistics against those of 1,000 training images.
# Run from the repository root:  bash measured/correction_study/run.sh
set -euo pipefail
CKPT=${CKPT:-../shared/checkpoints/vgg11_cifar10_s0.pt}
DATA=${DATA:-../shared/data/cifar10}
OUT=measured/correction_study
TMP=$(mktemp -d)
for ratio in 0.5 0.75; do
  for rule in official mean; do
    for est in none rows weights; do
      name=r${ratio}_${rule}_${est}
      python vgg_cifar10_self_merge.py --vgg_name VGG11 --model_param "$CKPT" --threshold 0.999 --max_ratio $ratio \
        --merge_rule $rule --bn_correction $est --no_eval --no_progress --save_merged "$TMP/$name.pt" \
        --results "$TMP/records.jsonl" > /dev/null
      python scripts/reproduce.py bn-mismatch --arch VGG11 --model_param "$TMP/$name.pt" --data_root "$DATA" \
        --images 1000 --no_progress --out "$OUT/$name" > /dev/null
    done
  done
done
python scripts/reproduce.py bn-mismatch --arch VGG11 --model_param "$CKPT" --data_root "$DATA" --images 1000 \
  --no_progress --out "$OUT/original" > /dev/null
rm -rf "$TMP"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = sorted(p for p in out.iterdir() if (p / "bn_mismatch.json").exists())
layers = [r["layer"] for r in json.loads((runs[0] / "bn_mismatch.json").read_text())["layers"]]
lines = ["median over channels of (variance on 1,000 training images) / (stored running_var), per BatchNorm; "
         "1 is right, below 1 the stored variance is too large", "",
         "| run | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
for run in runs:
    rows = json.loads((run / "bn_mismatch.json").read_text())["layers"]
    lines.append(f"| {run.name} | " + " | ".join(f"{r['var_ratio_median']:.2f}" for r in rows) + " |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
