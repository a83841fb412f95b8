#!/usr/bin/env bash
# Every full benchmark at once, as parallel processes on one GPU machine (used through the
# project's device tool): bash benchmarks/run_full.sh RESULTS_DIR
# Expects Fashion-MNIST in /usr/share/datasets/fashion-mnist (or copies .devdata/fashion-mnist
# there) and writes each benchmark's JSON and log under RESULTS_DIR. Epochs are sized for the
# device tool's 10-minute command limit (untested on a GPU so far); raise them for longer runs.
set -u
out=${1:?results folder}
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d .devdata/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .devdata/fashion-mnist /usr/share/datasets/
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
mkdir -p "$out"
T="timeout ${BENCH_TIMEOUT:-540}"; D="--device cuda"
run() { local name=$1; shift; $T python3 "$@" > "$out/$name.log" 2>&1 & }
run ss2 benchmarks/scheme_search.py $D --bits 2 --epochs 5 --search-epochs 2 --train-subset 30000 --out "$out/ss2.json" --out-dir runs/ss2
run ss3 benchmarks/scheme_search.py $D --bits 3 --epochs 5 --search-epochs 2 --train-subset 30000 --out "$out/ss3.json" --out-dir runs/ss3
for b in 2 3 4; do
  run "qat$b" benchmarks/qat_methods.py $D --bits $b --epochs 4 --fp-epochs 4 --out "$out/qat$b.json" --out-dir "runs/qat$b"
  run "peers$b" benchmarks/peers.py $D --bits $b --epochs 4 --fp-epochs 4 --out "$out/peers$b.json" --out-dir "runs/peers$b"
done
run pl benchmarks/precision_learning.py $D --epochs 8 --qpl-epochs 4 --out "$out/pl.json" --out-dir runs/pl
run ioiq benchmarks/ioiq.py $D --epochs 4
wait
cp benchmarks/results/ioiq.json "$out/" 2>/dev/null
find runs -name "*policy*.yaml" -exec cp --parents {} "$out/" \;
tail -n 3 "$out"/*.log
