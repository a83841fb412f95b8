#!/usr/bin/env bash
# The reduced benchmarks of QSS, QPL and the peers comparison on a CPU, two single-threaded
# lanes (a 2-core machine: about 2.5 hours): bash benchmarks/run_reduced_cpu.sh RESULTS_DIR
# ResNet-20 of width 8 on 20,000 Fashion-MNIST training images (the full test set), all runs
# starting from one float checkpoint (4 epochs of recipes/fashion_mnist/resnet20_fp.yaml).
#   lane 1: precision_learning (3.0 and 2.5-bit budgets), then, once lane 2 has the W2A2
#           searched policy, peers at W4A4/W3A3/W2A2 with the QSS and QPL policies added
#   lane 2: scheme_search at W2A2, then at W3A3 (per-layer and whole-model searches, theta
#           lr 0.03: at the default 3e-3 two search epochs leave theta near uniform)
# Each benchmark writes its JSON (and PNG) and log under RESULTS_DIR.
set -u
out=${1:?results folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
PY=${PY:-python3}
fp="$out/fp/checkpoints/last.ckpt"
common=(--width 8 --train-subset 20000 --init-checkpoint "$fp")

if [ ! -f "$fp" ]; then
  sed -e "s#runs/fashion_mnist/resnet20_fp#$out/fp#g" -e 's/width: 16/width: 8/' \
    -e 's/max_epochs: 15/max_epochs: 4/' recipes/fashion_mnist/resnet20_fp.yaml > "$out/fp.yaml"
  $PY -m lightning_autoq.cli fit -c "$out/fp.yaml" --data.init_args.train_subset 20000 \
    --trainer.enable_progress_bar false > "$out/fp.log" 2>&1 || exit 1
fi

lane2() {
  for b in 2 3; do
    $PY benchmarks/scheme_search.py "${common[@]}" --bits "$b" --epochs 3 --search-epochs 2 \
      --search-size 5000 --lr 0.01 --mode layer model --theta-lr 0.03 \
      --out "$out/scheme_search_w${b}a${b}.json" \
      --out-dir "$out/scheme_search" > "$out/scheme_search_w${b}a${b}.log" 2>&1
  done
}
lane2 &
lane2_pid=$!

$PY benchmarks/precision_learning.py "${common[@]}" --epochs 4 --qpl-epochs 2 \
  --warmup-epochs 0 --ramp-epochs 1 --lr 0.01 --out "$out/precision_learning.json" \
  --out-dir "$out/precision_learning" > "$out/precision_learning.log" 2>&1
qss="$out/scheme_search/scheme_policy_w2a2"
while [ ! -f "${qss}_model.yaml" ] && kill -0 "$lane2_pid" 2>/dev/null; do sleep 30; done
policies=(--policy-yaml)
for mode in layer model; do
  [ -f "${qss}_$mode.yaml" ] && policies+=("qss_w2a2_$mode=${qss}_$mode.yaml")
done
for f in "$out"/precision_learning/precision_policy_w*.yaml; do
  [ -f "$f" ] && policies+=("qpl_$(basename "$f" .yaml | sed 's/precision_policy_//')=$f")
done
[ ${#policies[@]} -gt 1 ] || policies=()
$PY benchmarks/peers.py "${common[@]}" --epochs 2 --bits 4 3 2 "${policies[@]}" \
  --out "$out/peers.json" --out-dir "$out/peers" > "$out/peers.log" 2>&1
wait "$lane2_pid"
tail -n 3 "$out"/*.log
