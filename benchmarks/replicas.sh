#!/usr/bin/env bash
# Scaling out on one machine: the full chain through Triton with
#   1 replica x 1 instance, 1 replica x 2 instances per model, 2 replicas x 1 instance
# (python flavour, 512x512, batch 1, closed-loop concurrency 1,2,4 by default), each measured with
# `compositor bench --modes triton --url ...`; two replicas through the client's several-server mode.
# Writes benchmarks/results/replicas-*.json and the comparison table benchmarks/results/replicas.md.
# REPLICAS_OUT=DIR writes them there instead. Run it on a quiet machine; about 10 minutes on 2 cores.
# Extra arguments go to every `compositor bench` (e.g. --duration-s 3 --concurrency 1,2 for a quick look).
# Weights: as `compositor export` takes them (trained files in weights/, MODNet from $MODNET_CHECKPOINT).
#
# Usage: benchmarks/replicas.sh [--resolution 512] [compositor bench options...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

resolution=512
if [ "${1:-}" = "--resolution" ]; then resolution=$2; shift 2; fi
out=${REPLICAS_OUT:-benchmarks/results}
work=$(mktemp -d -t compositor-replicas-XXXXXX)
serve_pid=""
stop_serve() {
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -INT "$serve_pid"
    wait "$serve_pid" || true
  fi
  serve_pid=""
}
trap 'stop_serve; rm -rf "$work"' EXIT

echo "== export at $resolution and two repositories (1 and 2 instances per model)"
compositor export --resolution "$resolution" --out "$work/export"
compositor repository --onnx "$work/export" --out "$work/one-instance" --flavor python --instances 1
compositor repository --onnx "$work/export" --out "$work/two-instances" --flavor python --instances 2

# deployment label, repository, replicas, result name
run() {
  local label=$1 repository=$2 replicas=$3 name=$4
  shift 4
  echo "== $label"
  compositor serve --repository "$repository" --replicas "$replicas" --http-port 18200 --grpc-port 18201 \
    --metrics-port 18202 --log-file "$work/$name.log" > "$work/$name.out" 2>&1 &
  serve_pid=$!
  for _ in $(seq 300); do
    grep -q "Triton ready\|replicas; spread requests" "$work/$name.out" && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$work/$name.out"; exit 1; }
    sleep 1
  done
  local urls=127.0.0.1:18201
  [ "$replicas" -gt 1 ] && urls=$(grep -o -- "--url [^;]*" "$work/$name.out" | cut -d' ' -f2)
  compositor bench --modes triton --url "$urls" --no-networks --resolution "$resolution" --concurrency 1,2,4 \
    --json "$out/replicas-$name.json" "$@"
  stop_serve
}
run "1 replica x 1 instance" "$work/one-instance" 1 r1-i1 "$@"
run "1 replica x 2 instances" "$work/two-instances" 1 r1-i2 "$@"
run "2 replicas x 1 instance" "$work/one-instance" 2 r2-i1 "$@"

python - "$out" <<'EOF'
import json, sys
from pathlib import Path
from compositor.bench.report import scaling_table
from compositor.atomic_files import write_text

out = Path(sys.argv[1])
runs = [("1 replica x 1 instance", "r1-i1"), ("1 replica x 2 instances", "r1-i2"), ("2 replicas x 1 instance", "r2-i1")]
table = scaling_table([(label, json.loads((out / f"replicas-{name}.json").read_text())) for label, name in runs])
write_text(out / "replicas.md", table + f"\nCommand: `benchmarks/replicas.sh`; raw results: `{out}/replicas-*.json`.\n")
print(table)
EOF
