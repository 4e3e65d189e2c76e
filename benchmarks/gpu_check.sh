#!/usr/bin/env bash
# The GPU measurements, in one script that fits a short lease on a GPU machine.
#
#   benchmarks/gpu_check.sh throughput OUTDIR   # images/s and the nets' share of the wall time at 224 px (~3 min)
#   benchmarks/gpu_check.sh tests OUTDIR        # the GPU-only tests (tests/engine/test_cuda.py)
#   benchmarks/gpu_check.sh profile OUTDIR      # qmix's training and audit at 224 px under cProfile (~1.5 min)
#   benchmarks/gpu_check.sh probefit OUTDIR     # the audit probes' fit: host threads against the GPU (~1 min)
#   benchmarks/gpu_check.sh layout OUTDIR       # channels-last against the default layout under autocast (~1 min)
#   benchmarks/gpu_check.sh vote OUTDIR         # the audit's neighbour vote by training-set size and block (~1 min)
#   benchmarks/gpu_check.sh quality OUTDIR      # qmix, then ce, on 20,000 Fashion-MNIST images for 30 epochs
#   benchmarks/gpu_check.sh all OUTDIR          # throughput, tests and quality, in that order
#   benchmarks/gpu_check.sh throughput,tests,profile OUTDIR   # any steps, comma-separated, in the order above
#
# Each step writes its JSON and log to OUTDIR as soon as it ends, so a lease cut short keeps what finished (`all`
# writes 8 files, throughput 2, tests 1, profile 4, probefit 2, layout 2, vote 2, quality 5: a lease that returns at most 8 needs the
# steps chosen to fit). BUDGET_S (seconds, default none) bounds the whole script: each step is stopped where it
# would overrun, keeping what it wrote (a stopped training run keeps its per-epoch metrics).
# Works from a checkout without installing qmix (the repository goes on PYTHONPATH) where torch, timm and the other
# dependencies are present. Fashion-MNIST comes from the Debian package or from $QMIX_FASHION_MNIST_DIR (the four
# original idx .gz files). Environment overrides, for a dry run on a CPU: DEVICE (default cuda), MODEL, IMG_SIZE,
# TRAIN_SIZE, EPOCHS, METHODS, PROFILE_SIZE, LAYOUT_MODELS, VOTE_SIZES, QUALITY_SIZE, QUALITY_EPOCHS, QUALITY_MODEL,
# QUALITY_IMG_SIZE, BUDGET_S.
set -uo pipefail

steps=",${1:-all},"
[[ "$steps" == ,all, ]] && steps=",throughput,tests,quality,"
wants() { [[ "$steps" == *",$1,"* ]]; }
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

# One step: its output to the screen and to OUTDIR/NAME.log (OUTDIR/$LOG.log where several steps share one); a
# failed step is reported and the next one still runs. CAP (seconds) bounds the step; with BUDGET_S it also ends
# 15 s before the script's budget would.
failed=0
run_step() {
  local name="$1" limit="${CAP:-86400}"
  shift
  if [[ -n "${BUDGET_S:-}" ]]; then
    local left=$((BUDGET_S - SECONDS - 15))
    ((left < limit)) && limit=$left
    if ((limit < 20)); then
      echo "gpu_check: no time left for step $name" >&2
      failed=1
      return
    fi
  fi
  if ! timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/${LOG:-$name}.log"; then
    echo "gpu_check: step $name failed (see $out/${LOG:-$name}.log)" >&2
    failed=1
  fi
}

cd "$here"
# The throughput and profile steps time the same setting: RGB input as users' photos have, at the backbone's size.
throughput_setting=(bench_throughput.py --device "$device" --model "${MODEL:-resnet18}" --img-size "${IMG_SIZE:-224}"
  --set channels=3 --warmup-epochs 2)
if wants throughput; then
  # Every method, so the epoch ratios are measured on the same card.
  CAP="${THROUGHPUT_CAP_S:-300}" run_step throughput "$python" "${throughput_setting[@]}" \
    --train-size "${TRAIN_SIZE:-5000}" --epochs "${EPOCHS:-6}" --methods "${METHODS:-qmix,dividemix,ce}" \
    --json "$out/throughput.json"
fi
if wants tests; then
  cd .. && CAP="${TESTS_CAP_S:-200}" run_step tests "$python" -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py
  cd "$here"
fi
if wants profile; then
  # Where the host's time goes in qmix's epochs and audit (on a GPU, waiting for the device shows in the call that
  # synchronises): the functions by cumulative and own time, in OUTDIR/profile/.
  CAP="${PROFILE_CAP_S:-150}" run_step profile "$python" "${throughput_setting[@]}" --train-size "${PROFILE_SIZE:-3000}" \
    --epochs 4 --methods qmix --min-seconds 0.3 --profile "$out/profile" --json "$out/profile.json"
fi
if wants probefit; then
  CAP="${PROBEFIT_CAP_S:-120}" run_step probefit "$python" bench_probe_fit.py --sizes "${PROBEFIT_SIZES:-2000,8000,32000}" \
    --json "$out/probefit.json"
fi
if wants layout; then
  # Channels-last has been the default on CUDA from the start, chosen for tensor cores and never measured here.
  CAP="${LAYOUT_CAP_S:-150}" run_step layout "$python" bench_memory_format.py --device "$device" \
    --models "${LAYOUT_MODELS:-resnet18:224:3,efficientnet_b0:224:3,convnext_atto:224:3}" --json "$out/layout.json"
fi
if wants vote; then
  # The similarity block was chosen for a host's cache (docs/decisions.md, "Nineteenth round"); a GPU keeps a larger
  # one, untimed until this step runs there. Widths of a resnet18's two probe feature sets, for each snapshot.
  CAP="${VOTE_CAP_S:-150}" run_step vote "$python" bench_vote.py --device "$device" \
    --sizes "${VOTE_SIZES:-20000,100000,300000}" --widths 768,768 --blocks 22,24,26 --json "$out/vote.json"
fi
if wants quality; then
  # Does qmix's semi-supervised phase improve its classifier once the schedule is long enough for mixup, and does
  # qmix then overtake ce (docs/decisions.md, "Twelfth round")? One method per call, qmix first (the question);
  # each run logs its test accuracy after every epoch (metrics-METHOD.jsonl, field val_acc), kept if it is stopped.
  for method in qmix ce; do
    LOG=quality run_step "quality-$method" "$python" bench_methods.py --device "$device" --methods "$method" \
      --model "${QUALITY_MODEL:-resnet18}" --img-size "${QUALITY_IMG_SIZE:-32}" \
      --train-size "${QUALITY_SIZE:-20000}" --epochs "${QUALITY_EPOCHS:-30}" --set val=fashion-mnist:test \
      --work "$out/quality-work" --json "$out/quality-$method.json"
    cp "$out/quality-work/run-$method/metrics.jsonl" "$out/metrics-$method.jsonl" 2>/dev/null || true
  done
  rm -rf "$out/quality-work"
fi
exit "$failed"
