#!/usr/bin/env bash
# The GPU checks of docs/performance.md in one command that fits a short device lease (no network there).
#
#   bash scripts/gpu_session.sh prepare          # here, with PyPI: wheels the GPU image lacks -> .whl/ (~26 MB)
#   bash scripts/gpu_session.sh run              # there, from the repository root: install .whl/, then the stages
#   bash scripts/gpu_session.sh run --smoke      # anywhere, CPU too: the same stages, tiny (checks this script)
#
# `run` writes everything to $OUT (default ./gpu-out): session.log (versions, nvidia-smi, every stage's output)
# and one folder per benchmark setting (bench_train.md + .json, or partial.tar.gz when its time ran out). Stages,
# in order of what a GPU shows that CPU cannot; a stage that would not fit the rest of BUDGET seconds is skipped:
#   1. the gpu-marked tests (tests/gpu, tests/unit/test_token_batches.py::test_cuda_defaults)
#   2. bench lora-8b   (tunekit defaults, tunekit fast paths without compile, plain TRL)
#   3. bench full-1b   (same stacks)
#   4. bench qlora-8b  (same stacks)
# The benchmark here is a first look (WARMUP + STEPS steps, 1 repetition), not the 3 x 50-step table of
# docs/performance.md. Environment: BUDGET (seconds for the stages, default 520), STEPS (10), WARMUP (2), OUT,
# WORK (models, data, logs: /tmp/tunekit-bench), WHEELS (.whl), SITE (where they are installed: /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."

# What tunekit needs that the GPU image (KINDS.md of the device tool: torch, accelerate, peft, transformers 5.17,
# typer, rich, jinja2, pyarrow, pandas ...) lacks or has at another version than CI's; pinned to this checkout's
# .venv where it has them, so the GPU run uses CI's versions.
PACKAGES="transformers trl datasets peft accelerate dill multiprocess fsspec pydantic pydantic_core annotated_types
typing_inspection bitsandbytes"
LIGER="liger-kernel==0.8.5"  # the gpu extra; not in the dev .venv
CUDA_MAJOR="${CUDA_MAJOR:-13}"  # the image's torch is built for CUDA 13: bitsandbytes keeps only those libraries
LIMIT_MB=60  # the device tool carries at most 64 MiB: working tree + wheels

prepare() {
  local py="${PYVER:-3.12}" venv=.venv/bin/python pins=() p v
  [ -x "$venv" ] || { echo "prepare: run 'make install' first (the wheels are pinned to .venv's versions)" >&2; exit 2; }
  for p in $PACKAGES; do
    v=$("$venv" -c "import importlib.metadata as m; print(m.version('$p'))" 2>/dev/null) \
      || { echo "prepare: $p is not installed in .venv" >&2; exit 2; }
    pins+=("$p==$v")
  done
  pins+=("$LIGER")
  rm -rf .whl && mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  local plat=() n
  for n in 2_28 2_27 2_24 2_17 2014 1; do
    case $n in 2014|1) plat+=(--platform "manylinux${n}_x86_64");; *) plat+=(--platform "manylinux_${n}_x86_64");; esac
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${plat[@]}" \
    -d .whl "${pins[@]}" || { echo "prepare: pip download failed" >&2; exit 1; }
  # bitsandbytes ships one library per CUDA version (~130 MB unpacked); keep CUDA $CUDA_MAJOR's and the CPU one
  python3 - "$CUDA_MAJOR" <<'EOF' || exit 1
import pathlib, re, sys, zipfile
keep = re.compile(rf"libbitsandbytes_(cpu|cuda{sys.argv[1]}\d*)\.so$")
for whl in pathlib.Path(".whl").glob("bitsandbytes-*.whl"):
    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if "libbitsandbytes_" not in item.filename or keep.search(item.filename):
                dst.writestr(item, src.read(item))
    tmp.replace(whl)
EOF
  local tree whl total
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
  total=$(( (tree + whl) / 1048576 ))
  ls -1 .whl
  echo "working tree $((tree / 1048576)) MiB + wheels $((whl / 1048576)) MiB = $total MiB (the device carries 64 MiB)"
  [ "$total" -le "$LIMIT_MB" ] || { echo "prepare: over ${LIMIT_MB} MiB" >&2; exit 1; }
  echo "now: run(command='bash scripts/gpu_session.sh run', carry=['.whl'], timeout_s=600)"
}

START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# stage NAME SECONDS COMMAND...: run COMMAND with at most SECONDS (less if less is left), or skip it when under
# half of SECONDS is left. Returns the command's exit status (124: out of time).
stage() {
  local name=$1 want=$2 have rc
  shift 2
  have=$(left)
  if [ "$have" -lt $(( want / 2 )) ]; then
    echo "=== $name: skipped ($have s left of BUDGET, it wants $want s)"
    return 0
  fi
  [ "$have" -lt "$want" ] && want=$have
  echo "=== $name: up to $want s (at $(( $(date +%s) - START )) s)"
  timeout --kill-after=10 "$want" "$@"
  rc=$?
  echo "=== $name: exit $rc after $(( $(date +%s) - START )) s$([ $rc -eq 124 ] && echo ' (out of time)')"
  return $rc
}

bench() {  # bench SETTING SECONDS: one setting's table into $OUT/SETTING
  local setting=$1 want=$2 dir="$OUT/$1"
  mkdir -p "$dir"
  stage "bench $setting" "$want" python3 scripts/bench_train.py "${TINY[@]}" --settings "$setting" \
    --stacks tunekit tunekit-fast trl --warmup "$WARMUP" --steps "$STEPS" --repeats 1 --no-compile \
    --workdir "$WORK" --out "$dir"
  if [ ! -s "$dir/bench_train.md" ] && [ -d "$WORK/results" ]; then  # out of time: what finished, and the logs
    tar -czf "$dir/partial.tar.gz" -C "$WORK" results logs 2>/dev/null
  fi
  rm -rf "$WORK/results" "$WORK/runs"
}

run() {
  local smoke=0
  [ "${1:-}" = "--smoke" ] && smoke=1
  OUT="${OUT:-./gpu-out}"
  BUDGET="${BUDGET:-520}" STEPS="${STEPS:-10}" WARMUP="${WARMUP:-2}"
  WORK="${WORK:-/tmp/tunekit-bench}"
  mkdir -p "$OUT" "$WORK"
  exec > >(tee -a "$OUT/session.log") 2>&1
  local wheels="${WHEELS:-.whl}" site="${SITE:-/tmp/site}"
  if ls "$wheels"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$wheels"/*.whl || { echo "run: installing $wheels/ failed"; exit 1; }
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "run: no $wheels/*.whl (bash scripts/gpu_session.sh prepare, then carry .whl): using the installed packages"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TUNEKIT_CACHE="$WORK/cache"
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  # every distribution tunekit imports, with its version and any requirement the environment does not meet
  python3 scripts/gpu_session_env.py || { echo "run: the environment cannot run tunekit (above)"; exit 1; }
  if [ "$smoke" = 1 ]; then
    TINY=(--tiny)
    stage "gpu tests" 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu \
      tests/unit/test_token_batches.py -ra
    bench lora-tiny 240
  else
    TINY=()  # the GPU tests are tiny models: 4 at once on the machine's 16 cores and one GPU
    stage "gpu tests" 150 python3 -m pytest -q -p no:cacheprovider -n 4 -m gpu tests/gpu \
      tests/unit/test_token_batches.py -ra --durations=10
    bench lora-8b 320  # the headline; build (16 GB written once) + 3 stacks loading it + 12 steps each
    bench full-1b 120
    bench qlora-8b 200
  fi
  echo "=== done after $(( $(date +%s) - START )) s"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
