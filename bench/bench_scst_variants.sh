#!/usr/bin/env bash
# SCST variants from one pretrained run, one at a time; prints each one's CIDEr, Hallucination,
# retrieval R@1 both ways, Distinct-2 and mean caption length, and stage 2's wall time and peak memory.
#
#   bench/bench_scst_variants.sh PRETRAINED_RUN WORKDIR "NAME ALIGN_ARGS..." ["NAME ALIGN_ARGS..." ...]
#   e.g. bench/bench_scst_variants.sh runs/bench-embedded/seed-0/pretrain /tmp/scst \
#          "cw2 --batch-size 16 --num-samples 5 --max-steps 400 --lr 5e-4 --beta 0.1 --contrastive-weight 2"
# (a shell script, not Python: it is exactly the commands a user types, run in turn)
set -euo pipefail
PRE=$1 W=$2
shift 2
mkdir -p "$W"
export HF_HUB_OFFLINE=1
variant() {
  local name=$1
  shift
  if [ ! -f "$W/$name/run.json" ]; then
    /usr/bin/time -f "$name stage-2 wall %e s, peak %M KB" python -m capalign align --model "$PRE" --method scst "$@" --out "$W/$name"
  fi
  python -m capalign evaluate --model "$W/$name" --metrics cider,bleu,meteor,hallucination,retrieval,diversity \
    --output "$W/eval-$name.json" --overwrite > /dev/null
  python - "$W/eval-$name.json" "$name" <<'PY'
import json, sys
e = json.load(open(sys.argv[1])); m = e["metrics"]; caps = list(e.get("captions", {}).values())
length = sum(len(c.split()) for c in caps) / max(len(caps), 1)
print(sys.argv[2], {k: round(m[k], 4) for k in ("CIDEr", "Hallucination", "I2T-R@1", "T2I-R@1", "Distinct-2")},
      "length", round(length, 2))
PY
}
for spec in "$@"; do
  read -r -a words <<< "$spec"
  variant "${words[@]}"
done
