#!/usr/bin/env bash
# The performance suite on one CUDA GPU, about 8 minutes on an H200; writes $OUT/report.md.
#
#   bash benchmarks/gpu_suite.sh                 # CUDA; figures in ${OUT:-./gpu_out}
#   bash benchmarks/gpu_suite.sh --dry-run       # the same steps at tiny sizes on the CPU (~3 min)
#   SUITE_TIME_SCALE=3 bash benchmarks/gpu_suite.sh --dry-run   # on a busy machine: 3x every time box
#
# Steps, each in its own time box (one failure or hang does not eat the others' time):
#   versions | VET op (paper 8B shapes N 4608, F 1024, K 131072, D 4096; Ovis2.5-like with the odd head
#   width 65531 vs padded) | train step 2b, 10 crops + 512 text (each lever alone) | train step 2b,
#   1 crop + 512 text | generate (TTFT, decode) | pytest -m gpu
# Every step appends its exit code and time to $OUT/steps.tsv; benchmarks/suite_report.py then turns
# the JSON rows the steps wrote into one markdown report (missing figures are reported as missing).
set -u
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.jsonl "$OUT"/steps.tsv "$OUT"/report.md
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

SCALE="${SUITE_TIME_SCALE:-1}"  # stretch every time box on a shared or slow machine (e.g. 3)

step() {  # step NAME SECONDS COMMAND...: run with a time box, log to $OUT/NAME.log
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local start=$SECONDS
  echo "== $name (time box ${limit}s): $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$OUT/steps.tsv"
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - start))s"
}

if [ "$DRY" = 1 ]; then
  DEV=cpu; SIZE=tiny
  VET_ARGS=(--device cpu --cases tiny --variants --repeats 1 --threads 1)
  TRAIN_ARGS=(--device cpu --steps 1 --warmup 1 --batch 2 --text-len 32 --threads 1)
  GEN_ARGS=(--device cpu --new-tokens 4 --repeats 1 --no-static --text-len 16 --threads 1)
  T_VET=40; T_TRAIN10=75; T_TRAIN1=40; T_GEN=45; T_TEST=50  # imports alone take 5-20 s
else
  DEV=cuda; SIZE=2b
  VET_ARGS=(--device cuda --cases paper-8b,paper-8b-even,ovis2.5,ovis2.5-even --variants)
  TRAIN_ARGS=(--device cuda --steps 4 --warmup 2 --batch 2 --text-len 512)
  GEN_ARGS=(--device cuda --new-tokens 32 --repeats 2 --text-len 128)
  T_VET=100; T_TRAIN10=170; T_TRAIN1=60; T_GEN=90; T_TEST=50
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  mode: $([ "$DRY" = 1 ] && echo 'dry run (CPU, tiny)' || echo CUDA)"
  "$PY" - <<'EOF'
import platform, torch, transformers
print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
if torch.cuda.is_available():
    print(f"CUDA {torch.version.cuda}, GPU {torch.cuda.get_device_name()}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
else:
    print(f"no CUDA; CPU threads {torch.get_num_threads()}")
for name in ("triton", "liger_kernel", "flash_attn"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except ImportError:
        print(f"{name}: not installed")
EOF
} >"$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: run with --dry-run on a CPU" >&2
  exit 1
fi

step vet_op "$T_VET" "$PY" benchmarks/vet_op.py "${VET_ARGS[@]}" --json "$OUT/vet_op.json"
step train_10crops "$T_TRAIN10" "$PY" benchmarks/train_step.py --size "$SIZE" --crops 10 --sweep \
  "${TRAIN_ARGS[@]}" --json "$OUT/train_10crops.jsonl"
step train_1crop "$T_TRAIN1" "$PY" benchmarks/train_step.py --size "$SIZE" --crops 1 \
  "${TRAIN_ARGS[@]}" --json "$OUT/train_1crop.jsonl"
step generate "$T_GEN" "$PY" benchmarks/generate.py --size "$SIZE" "${GEN_ARGS[@]}" --json "$OUT/generate.jsonl"
step pytest_gpu "$T_TEST" "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/ops tests/training/test_speed.py

"$PY" benchmarks/suite_report.py "$OUT" >/dev/null && echo "report: $OUT/report.md"
awk -F'\t' '$2 != 0 {bad = 1} END {exit bad}' "$OUT/steps.tsv"
