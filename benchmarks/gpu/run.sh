#!/usr/bin/env bash
# The GPU checks of issues 9 and 10 in one run of at most ~8 minutes on an H200 with no network
# (shared/gpu/README.md): run from the project root with the missing wheels in .whl/.
#
#   1. plain generate() of a Qwen3-8B shape (512 + 512 tokens) at the estimator's recommended
#      concurrency and twice it, default allocator, then twice it with expandable segments:
#      peaks, allocator retries / OOMs, step time, next to the estimate (generate_memory.py);
#   2. the reference server's engine against plain generate() (engine_check.py);
#   3. the closed loop on the GPU with the embedded model: calibrate -> estimate --emit ->
#      serve --config -> validate (loop.sh).
#
# Every result lands in $OUT (at most 8 files: JSON per check, logs, a tarball of run folders).
# GPU_SMOKE=cpu runs the same steps on a CPU with tiny shapes (its test: tests/benchmarks).
set -u
OUT=${OUT:-reports/gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }

if [ "${GPU_SMOKE:-}" = cpu ]; then
  MODEL=embedded GPU=cpu PROMPT=32 NEW=8 BATCHES_DEFAULT=1,4 BATCHES_EXPANDABLE=4 BUDGET=60
  ENGINE_ARGS="--model embedded --gpu cpu --vram 1.5GiB --batches 1,2 --prompt 24 --new 6 --budget-s 60"
else
  MODEL=qwen3-8b GPU=h200 PROMPT=512 NEW=512 BUDGET=150
  # --budget-s counts from after torch's import: 30 s under the timeout leaves it room to write.
  ENGINE_ARGS="--model $MODEL --gpu $GPU --budget-s 150"
  recommended=$("$PY" -m capplan.cli estimate --gpu "$GPU" --model "$MODEL" --prompt-tokens "$PROMPT" \
    --max-tokens "$NEW" --format json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['concurrency'])")
  BATCHES_DEFAULT="$recommended,$((2 * recommended))"
  BATCHES_EXPANDABLE="$((2 * recommended))"
fi

log "1. generate() default allocator at $BATCHES_DEFAULT"
timeout $((BUDGET + 30)) "$PY" benchmarks/gpu/generate_memory.py --model "$MODEL" --gpu "$GPU" \
  --prompt "$PROMPT" --new "$NEW" --batches "$BATCHES_DEFAULT" --out "$OUT/generate_default.json" \
  >>"$OUT/run.log" 2>&1 || log "generate_memory (default) ended with $?"
log "1b. generate() expandable segments at $BATCHES_EXPANDABLE"
timeout $((BUDGET - 30)) "$PY" benchmarks/gpu/generate_memory.py --model "$MODEL" --gpu "$GPU" \
  --prompt "$PROMPT" --new "$NEW" --batches "$BATCHES_EXPANDABLE" --alloc-conf expandable \
  --out "$OUT/generate_expandable.json" >>"$OUT/run.log" 2>&1 || log "generate_memory (expandable) ended with $?"

log "2. engine vs generate()"
# shellcheck disable=SC2086  # ENGINE_ARGS is a list of words
timeout 180 "$PY" benchmarks/gpu/engine_check.py $ENGINE_ARGS --out "$OUT/engine.json" \
  >>"$OUT/run.log" 2>&1 || log "engine_check ended with $?"

if [ "${SKIP_LOOP:-}" != 1 ]; then  # the smoke test skips it: tests/planning runs the loop
  log "3. calibrate -> estimate -> serve -> validate (embedded model on $GPU)"
  OUT="$OUT" PY="$PY" timeout 150 bash benchmarks/gpu/loop.sh >>"$OUT/run.log" 2>&1 || log "loop ended with $?"
fi

tar czf "$OUT/runs.tgz" -C "$OUT" --exclude runs.tgz --exclude '*.json' --exclude run.log . 2>/dev/null
log "done: $(ls "$OUT" | tr '\n' ' ')"
