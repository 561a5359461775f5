#!/usr/bin/env bash
# The GPU figures in one command: ms per update of config_ogbench_crl at the benchmark sizes and at the
# paper size (float32, TF32, bf16 autocast, CUDA graphs; benchmarks/update_speed.py), end-to-end offline
# updates/s of the training script on config_ogbench_crl, and online FetchReach frames/s. Without a CUDA
# device it runs a short CPU fallback of the same steps. Every figure goes to one file, named at the end:
# $OUT/gpu_check.txt when $OUT is set, else benchmarks/results/gpu_check_<date>.txt.
#
#     bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if [ -n "${OUT:-}" ]; then
    RESULTS=$OUT REPORT=$OUT/gpu_check.txt
else
    RESULTS=benchmarks/results REPORT=benchmarks/results/gpu_check_$(date +%Y%m%d_%H%M).txt
fi
mkdir -p "$RESULTS"
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT

if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    SMALL_MODES="compiled tf32 cudagraphs"
    PAPER_MODES="compiled tf32 bf16 cudagraphs"
    OFFLINE_STEPS=5000 ONLINE_FRAMES=20000 COMPILE=true SIZE=()
else
    DEVICE=cpu
    SMALL_MODES="eager compiled" PAPER_MODES=""
    OFFLINE_STEPS=300 ONLINE_FRAMES=1500 COMPILE=false
    SIZE=(buffer.batch_size=256 model.hidden_dim=256 model.num_layers=2 model.embed_dim=64)
fi
{
    echo "gpu_check on $(hostname), $(date -u +%Y-%m-%dT%H:%MZ)"
    python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device: CPU fallback')"
} | tee "$REPORT"

echo "== ms per update (benchmarks/update_speed.py)" | tee -a "$REPORT"
if [ "$DEVICE" = cuda ]; then
    python benchmarks/update_speed.py --device cuda --sizes small mid recipe --modes $SMALL_MODES --rounds 5 \
        --json "$RESULTS/update_speed_sizes.json" | grep -E "updates/s|transitions" | tee -a "$REPORT"
    python benchmarks/update_speed.py --device cuda --sizes paper --modes $PAPER_MODES --rounds 5 \
        --json "$RESULTS/update_speed_paper.json" | grep -E "updates/s" | tee -a "$REPORT"
else
    python benchmarks/update_speed.py --device cpu --sizes small --modes $SMALL_MODES --rounds 2 --updates 8 \
        --warmup 3 | grep -E "updates/s|transitions" | tee -a "$REPORT"
fi

rate() {  # the last value of a csv scalar of a run directory
    tail -n 1 "$(find "$1" -path "*scalars/$2.csv" | head -n 1)" | cut -d, -f2
}

echo "== end-to-end offline, config_ogbench_crl ${SIZE[*]} ($OFFLINE_STEPS gradient steps," \
    "compile.compile=$COMPILE)" | tee -a "$REPORT"
python stable_contrastive_rl.py --config-name config_ogbench_crl device=$DEVICE compile.compile=$COMPILE "${SIZE[@]}" \
    offline.gradient_steps=$OFFLINE_STEPS offline.eval_interval=$OFFLINE_STEPS logger.num_eval_episodes=1 \
    logger.backend=csv hydra.run.dir="$RUNS/offline" > "$RUNS/offline.log" 2>&1
echo "offline updates/s: $(rate "$RUNS/offline" train/updates_per_second)" | tee -a "$REPORT"

echo "== online FetchReach-v4, config.yaml ${SIZE[*]} ($ONLINE_FRAMES frames, compile.compile=$COMPILE)" \
    | tee -a "$REPORT"
python stable_contrastive_rl.py device=$DEVICE compile.compile=$COMPILE "${SIZE[@]}" collector.total_frames=$ONLINE_FRAMES \
    collector.init_random_frames=1000 logger.eval_interval=$ONLINE_FRAMES logger.num_eval_episodes=1 \
    logger.backend=csv hydra.run.dir="$RUNS/online" > "$RUNS/online.log" 2>&1
echo "online frames/s: $(rate "$RUNS/online" train/frames_per_second)" | tee -a "$REPORT"
echo "figures written to $REPORT"
