#!/usr/bin/env bash
# calibrate -> estimate --emit -> serve --config -> validate with the embedded model, on this
# machine's device (cuda when present): the closed loop of issue 9, as tests/planning/
# test_closed_loop.py runs it on a CPU. Writes $OUT/loop/ and $OUT/validation.json.
set -eu
OUT=${OUT:-reports/gpu-check}
PY=${PY:-python3}
GPU=$("$PY" -c "import torch; print('auto' if torch.cuda.is_available() else 'cpu')")
DIR="$OUT/loop"
mkdir -p "$DIR"
capplan() { "$PY" -m capplan.cli "$@"; }
capplan calibrate --model embedded --gpu "$GPU" --runtime capplan --concurrency 1,2,4,8 --prompt-tokens 16,128 \
  --max-tokens 32 --rounds 3 --out "$DIR/calibration.json" --run-dir "$DIR/calibrate"
capplan estimate --gpu "$GPU" --model embedded --runtime capplan --calibration "$DIR/calibration.json" \
  --prompt-tokens 64 --max-tokens 32 --emit json "$DIR/server.json" > "$DIR/estimate.txt"
concurrency=$("$PY" -c "import json; print(json.load(open('$DIR/server.json'))['max_concurrent'])")
port=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$PY" -m reference_server --config "$DIR/server.json" --port "$port" > "$DIR/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
capplan validate --gpu "$GPU" --model embedded --runtime capplan --url "http://127.0.0.1:$port" \
  --calibration "$DIR/calibration.json" --prompt-tokens 64 --max-tokens 32 \
  --concurrency "$concurrency" --requests 60 --tolerance 25 --out "$DIR/validate" \
  --json "$OUT/validation.json" || true
