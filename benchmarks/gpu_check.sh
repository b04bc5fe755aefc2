#!/usr/bin/env bash
# One script for the first GPU: what llpf does on it, measured, in one folder with a one-screen summary.
#
#   benchmarks/gpu_check.sh [--device cuda] [--out DIR] [--data PATH] [--tiny]
#
# Run from the repository root. About 6 minutes on one H100- or H200-class GPU (under 8), it writes into DIR
# (default runs/gpu-check-DATE):
#   env.txt            the machine: GPU (nvidia-smi), CPU, memory, Python, torch, CUDA, cuDNN, llpf's commit
#   bench.json/.txt    llpf bench --device DEVICE --json: tick_ratio, eval_share, recalibration_s,
#                      geometry_overhead, data_overhead, batched_speedup (K up to 200 on CUDA)
#   endpoints/         two ResNet18 at the paper's width on CIFAR-10 (Table 3's recipe, 3 epochs)
#   m2m-fp32/          a short M2M between them (Table 1's six phases at 1/100 of their iterations, r = 2)
#                      in full precision: bf16 and channels_last off
#   m2m-fast/          the same path on the fast path: bf16 autocast and channels_last on
#   batched/, one-by-one/   K = 8 LeNet5 M2M paths on digits (the demo's first phase, 300 iterations), as
#                      one batched computation
#                      (llpf reproduce --batch-paths 8) and one after another (--batch-paths 1)
#   summary.txt        the figures above on one screen, the fast path's speed-up and whether the batched
#                      paths agree with the same paths run one at a time
# Each step's output is in DIR/logs/; a step that fails is named in the summary and the others still run.
# --data is CIFAR-10 (a folder or archive llpf reads; default ../shared/data/cifar10-jpg.tar.xz).
# --tiny shrinks every step to seconds (ResNet18 at width 1/8 on 256 digits, bench --quick, K = 2): with
# --device cpu it is how the test suite runs this script end to end.
set -uo pipefail

DEVICE=cuda
OUT="runs/gpu-check-$(date +%Y%m%d-%H%M%S)"
DATA=../shared/data/cifar10-jpg.tar.xz
TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "gpu_check.sh: $OUT is not empty; choose another --out" >&2; exit 2
fi
mkdir -p "$OUT/logs" "$OUT/configs" "$OUT/endpoints"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
: > "$OUT/steps.tsv"

# step NAME COMMAND...: run one step, its output in logs/NAME.log, its status and seconds in steps.tsv
step() {
  local name="$1"; shift
  local t0; t0=$(date +%s%N)
  echo "== $name: $*" >&2
  "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$OUT/steps.tsv"
  [ $rc -eq 0 ] || echo "   $name failed (exit $rc): see $OUT/logs/$name.log" >&2
  return 0
}

# ---------------------------------------------------------------- the machine
{
  echo "date: $(date -Is)"; echo "host: $(hostname)"; echo "device: $DEVICE; tiny: $TINY"
  echo "llpf commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2-), $(nproc --all) cores"
  echo "memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  "$PY" -c 'import sys, torch, torchvision; print("python:", sys.version.split()[0]); print("torch:", torch.__version__,
"torchvision:", torchvision.__version__, "cuda:", torch.version.cuda, "cudnn:", torch.backends.cudnn.version(),
"gpus:", torch.cuda.device_count())' 2>&1
} > "$OUT/env.txt"

# ---------------------------------------------------------------- configs
if [ "$TINY" = 1 ]; then
  MODEL='name = "resnet18"
in_channels = 1
width = 0.125'
  DATA_TABLE='name = "digits"
limit_train = 256
limit_test = 128'
  EPOCHS=1; BATCH=32; ITER1=4; ITER=2; EVAL=4; K=2; PATH_ITERS=6; PATH_EVAL=3; BENCH_QUICK=--quick
else
  MODEL='name = "resnet18"
in_channels = 3'
  DATA_TABLE="name = \"cifar10\"
root = \"$DATA\""
  EPOCHS=3; BATCH=256; ITER1=100; ITER=50; EVAL=50; K=8; PATH_ITERS=300; PATH_EVAL=50; BENCH_QUICK=
fi
# resnet18_config BF16 CHANNELS_LAST: the short ResNet18 M2M, on the fast path or off it (asked explicitly)
resnet18_config() {
  echo 'name = "gpu-check-resnet18"'
  echo 'description = "ResNet18 M2M: Table 1 six phases at 1/100 of their iterations, r = 2 (benchmarks/gpu_check.sh)"'
  printf '[model]\n%s\n\n[data]\n%s\n\n' "$MODEL" "$DATA_TABLE"
  printf '[train]\nepochs = %s\nbatch_size = %s\nlr = 0.1\nmomentum = 0.9\nweight_decay = 5e-4\n' "$EPOCHS" "$BATCH"
  printf 'schedule = "onecycle"\naugmentation = "default"\n\n'
  printf '[m2m]\nbatch_size = %s\nlr = 1e-3\nloss_threshold = 0.1\nloss_threshold_relative = 1.5\n' "$BATCH"
  printf 'eval_every = %s\nsave_every = %s\ncheckpoint_every = %s\n' "$EVAL" "$EVAL" "$EVAL"
  printf 'bf16 = "%s"\nchannels_last = "%s"\n' "$1" "$2"
  i=0
  for layers in '["*"]' '["conv1.weight", "bn1.weight", "bn1.bias", "fc.weight", "fc.bias"]' '["layer1.*"]' \
                '["layer2.*"]' '["layer3.*"]' '["*"]'; do
    i=$((i + 1))
    printf '\n[[m2m.phases]]\niterations = %s\nlayers = %s\n' "$([ $i = 1 ] && echo $ITER1 || echo $ITER)" "$layers"
    [ $i -ge 3 ] && [ $i -le 5 ] && printf 'keep_previous = true\n'
    printf 'step_a = %s\nstep_f = 0.0\nrounds = 2\n' "$([ $i = 1 ] && echo 5e-3 || echo 1e-2)"
  done
}
resnet18_config off off > "$OUT/configs/resnet18-m2m-fp32.toml"
resnet18_config on on > "$OUT/configs/resnet18-m2m-fast.toml"
{
  echo 'name = "gpu-check-lenet5-batched"'
  echo 'description = "The demo config'"'"'s LeNet5 M2M on digits, batched against one by one (benchmarks/gpu_check.sh)"'
  printf '[model]\nname = "lenet5"\n\n[data]\nname = "digits"\n%s\n\n' "$([ "$TINY" = 1 ] && echo 'limit_train = 256')"
  printf '[train]\nepochs = %s\nbatch_size = 64\nlr = 0.01\nmomentum = 0.9\n\n' "$([ "$TINY" = 1 ] && echo 2 || echo 20)"
  printf '[m2m]\nbatch_size = 64\nlr = 0.01\neval_every = %s\nsave_every = %s\ncheckpoint_every = %s\n' \
    "$PATH_EVAL" "$PATH_ITERS" "$PATH_ITERS"
  printf '\n[[m2m.phases]]\niterations = %s\nstep_a = 0.01\nstep_f = 1e-3\nrounds = 5\n' "$PATH_ITERS"
} > "$OUT/configs/lenet5-batched.toml"

# ---------------------------------------------------------------- the steps
LLPF=("$PY" -m llpf)
R18="$OUT/configs/resnet18-m2m-fp32.toml"
L5="$OUT/configs/lenet5-batched.toml"
step bench "${LLPF[@]}" bench --device "$DEVICE" --json "$OUT/bench.json" $BENCH_QUICK
for seed in 0 1; do
  step "train-resnet18-seed$seed" "${LLPF[@]}" train "$R18" --seed $seed --out "$OUT/endpoints/resnet18-seed$seed.safetensors" \
    --device "$DEVICE" --quiet
done
A="$OUT/endpoints/resnet18-seed0.safetensors"; B="$OUT/endpoints/resnet18-seed1.safetensors"
for mode in fp32 fast; do
  step "m2m-$mode" "${LLPF[@]}" m2m "$OUT/configs/resnet18-m2m-$mode.toml" --start "$A" --dest "$B" \
    --out "$OUT/m2m-$mode" --device "$DEVICE" --quiet
done
for seed in 0 1; do
  step "train-lenet5-seed$seed" "${LLPF[@]}" train "$L5" --seed $seed --out "$OUT/endpoints/lenet5-seed$seed.safetensors" \
    --device "$DEVICE" --quiet
done
for mode in batched one-by-one; do
  n=$([ $mode = batched ] && echo "$K" || echo 1)
  step "paths-$mode" "${LLPF[@]}" reproduce "$L5" --reps "$K" --batch-paths "$n" --out "$OUT/$mode" \
    --start "$OUT/endpoints/lenet5-seed0.safetensors" --dest "$OUT/endpoints/lenet5-seed1.safetensors" \
    --device "$DEVICE" --quiet
done

"$PY" "$HERE/gpu_check_summary.py" "$OUT" | tee "$OUT/summary.txt"
