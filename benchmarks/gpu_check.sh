#!/usr/bin/env bash
# The GPU measurements, in one script that fits a short lease on a GPU machine.
#
#   benchmarks/gpu_check.sh throughput OUTDIR   # images/s and the nets' share of the wall time at 224 px (~3 min)
#   benchmarks/gpu_check.sh quality OUTDIR      # ce, then qmix, on 20,000 Fashion-MNIST images for 30 epochs
#   benchmarks/gpu_check.sh all OUTDIR          # both
#
# Each step writes its JSON and log to OUTDIR as soon as it ends (8 files at most), so a lease cut short keeps what
# finished.
# Works from a checkout without installing qmix (the repository goes on PYTHONPATH) where torch, timm and the other
# dependencies are present. Fashion-MNIST comes from the Debian package or from $QMIX_FASHION_MNIST_DIR (the four
# original idx .gz files). Environment overrides, for a dry run on a CPU: DEVICE (default cuda), MODEL, IMG_SIZE,
# TRAIN_SIZE, EPOCHS, QUALITY_SIZE, QUALITY_EPOCHS, QUALITY_MODEL, QUALITY_IMG_SIZE.
set -uo pipefail

step="${1:-all}"
out="$(mkdir -p "${2:-/tmp/qmix-gpu-check}" && cd "${2:-/tmp/qmix-gpu-check}" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device="${DEVICE:-cuda}"
python="${PYTHON:-python3}"

"$python" - "$device" <<'EOF'
import sys, torch, timm
device = sys.argv[1]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available (DEVICE=cpu for a dry run)")
name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
print(f"torch {torch.__version__}, timm {timm.__version__}, {name}")
EOF

# One step: its output to the screen and to OUTDIR/NAME.log; a failed step is reported and the next one still runs.
failed=0
run_step() {
  local name="$1"
  shift
  if ! "$@" 2>&1 | tee "$out/$name.log"; then
    echo "gpu_check: step $name failed (see $out/$name.log)" >&2
    failed=1
  fi
}

cd "$here"
if [[ "$step" == throughput || "$step" == all ]]; then
  # RGB input as users' photos have; both methods, so the qmix / ce ratio is measured on the same card.
  run_step throughput "$python" bench_throughput.py --device "$device" --model "${MODEL:-resnet18}" \
    --img-size "${IMG_SIZE:-224}" --set channels=3 --train-size "${TRAIN_SIZE:-5000}" --epochs "${EPOCHS:-6}" \
    --warmup-epochs 2 --methods qmix,ce --json "$out/throughput.json"
fi
if [[ "$step" == quality || "$step" == all ]]; then
  # Does qmix's semi-supervised phase improve its classifier once the schedule is long enough for mixup, and does
  # qmix then overtake ce (docs/decisions.md, "Twelfth round")? One method per call, ce first (the faster); each
  # run logs its test accuracy after every epoch (metrics-METHOD.jsonl, field val_acc).
  for method in ce qmix; do
    run_step "quality-$method" "$python" bench_methods.py --device "$device" --methods "$method" \
      --model "${QUALITY_MODEL:-resnet18}" --img-size "${QUALITY_IMG_SIZE:-32}" \
      --train-size "${QUALITY_SIZE:-20000}" --epochs "${QUALITY_EPOCHS:-30}" --set val=fashion-mnist:test \
      --work "$out/quality-work" --json "$out/quality-$method.json"
    cp "$out/quality-work/run-$method/metrics.jsonl" "$out/metrics-$method.jsonl" 2>/dev/null || true
  done
  rm -rf "$out/quality-work"
fi
exit "$failed"
