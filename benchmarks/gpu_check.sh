#!/usr/bin/env bash
# The GPU figures in one command, on a machine where nothing can be downloaded (docs/gpu_check.md).
#
#     bash benchmarks/gpu_check.sh prepare [PYTHON_VERSION]   # here, with the registries: the kit
#     bash benchmarks/gpu_check.sh                            # there: install the kit, measure
#
# prepare downloads into benchmarks/gpu_kit/ (git-ignored; GPU_KIT names another folder) the wheels of everything the check needs
# beside torch and numpy, for PYTHON_VERSION (default 3.12) on manylinux x86_64, and regenerates a
# 300-episode pointmaze-medium-navigate-v0 file; the kit must stay under 60 MiB. The check installs the
# kit with --no-index into a scratch folder (the machine's own torch is used), picks MUJOCO_GL=egl where
# it renders (no rendering otherwise), then runs each step on its own, a failing one reported in one
# line: updates/s of benchmarks/update_speed.py per size and mode (each mode in its own process), the
# training script's end-to-end offline updates/s on config_ogbench_crl with no speed flag, online
# frames/s of the paper's config (FetchReach-v4 when gymnasium-robotics is installed, else the OGBench
# pointmaze env), and the ratios to OGBench's JAX CRL measured on an H200. Without a CUDA device it runs
# a short CPU fallback of the same steps. Every figure goes to $OUT/gpu_check.txt when $OUT is set, else
# benchmarks/results/gpu_check_<date>.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=${GPU_KIT:-benchmarks/gpu_kit}  # another folder for a dry run
DATASET=pointmaze-medium-navigate-v0
KIT_LIMIT_MIB=60

if [ "${1:-}" = prepare ]; then
    set -e
    PYTHON_VERSION=${2:-3.12}
    rm -rf "$KIT" && mkdir -p "$KIT/wheels" "$KIT/data"
    PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any)
    # The pins of requirements.txt; then what these import, small and pure Python or one wheel each.
    PACKAGES=(torchrl==0.14.1 tensordict==0.14.3 hydra-core==1.3.2 omegaconf==2.3.0 gymnasium==1.4.0
              mujoco==3.11.0 ogbench==1.2.2 farama-notifications cloudpickle pyvers orjson packaging
              typing_extensions pyyaml tqdm absl-py etils glfw pyopengl imageio)
    for package in "${PACKAGES[@]}"; do
        python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
            "${PLATFORMS[@]}" -d "$KIT/wheels" "$package"
    done
    # antlr4-python3-runtime 4.9.3 (omegaconf's pin) is published as a source archive only.
    python -m pip wheel --quiet --no-deps -w "$KIT/wheels" antlr4-python3-runtime==4.9.3
    python make_dataset.py --ogbench "$DATASET" --episodes 300 --root "$KIT/data" 2> "$KIT/make_dataset.log"
    echo "$PYTHON_VERSION" > "$KIT/python_version"
    size=$(du -sm "$KIT" | cut -f1)
    echo "kit for Python $PYTHON_VERSION in $KIT: $(ls "$KIT/wheels" | wc -l) wheels and $DATASET, $size MiB"
    if [ "$size" -ge "$KIT_LIMIT_MIB" ]; then
        echo "error: the kit is $size MiB, over the $KIT_LIMIT_MIB MiB a GPU machine accepts" >&2
        exit 1
    fi
    exit 0
fi

export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if [ -n "${OUT:-}" ]; then
    RESULTS=$OUT REPORT=$OUT/gpu_check.txt
else
    RESULTS=benchmarks/results REPORT=benchmarks/results/gpu_check_$(date +%Y%m%d_%H%M).txt
fi
mkdir -p "$RESULTS"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
say() { echo "$*" | tee -a "$REPORT"; }
: > "$REPORT"
say "gpu_check on $(hostname), $(date -u +%Y-%m-%dT%H:%MZ), $(python --version 2>&1)"

DATA_ROOT=$HOME/.ogbench/data
if [ -d "$KIT/wheels" ]; then
    if python -m pip install --quiet --no-index --no-deps --target "$SCRATCH/site" "$KIT"/wheels/*.whl \
            > "$SCRATCH/install.log" 2>&1; then
        export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
        say "kit: $(ls "$KIT/wheels" | wc -l) wheels installed from $KIT into a scratch folder"
    else
        say "kit: install failed ($(tail -n 1 "$SCRATCH/install.log")); going on with what is installed"
    fi
    DATA_ROOT=$KIT/data
fi
if MUJOCO_GL=egl python -c "import mujoco; mujoco.GLContext(8, 8).make_current()" > /dev/null 2>&1; then
    export MUJOCO_GL=egl
    say "rendering: MUJOCO_GL=egl"
else
    export MUJOCO_GL=disabled
    say "rendering: none (EGL does not start here; nothing in the check renders)"
fi
say "$(python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device: CPU fallback')" 2>&1)"

if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null; then
    DEVICE=cuda
    # size:modes; each mode of each size is its own process.
    SPEED_ROWS=("small:eager tf32 cudagraphs reduce_overhead auto" "recipe:tf32 cudagraphs auto" "paper:tf32 bf16 cudagraphs auto")
    SPEED_ARGS=(--rounds 5) STEP_TIMEOUT=240 OFFLINE_STEPS=5000 ONLINE_FRAMES=20000 SIZE=()
else
    DEVICE=cpu
    SPEED_ROWS=("small:eager auto")
    SPEED_ARGS=(--rounds 2 --updates 8 --warmup 3) STEP_TIMEOUT=300 OFFLINE_STEPS=300 ONLINE_FRAMES=1500
    SIZE=(buffer.batch_size=256 model.hidden_dim=256 model.num_layers=2 model.embed_dim=64)
fi

step() {  # step NAME COMMAND...: run one step; a failure is one line and the check goes on
    local name=$1 log=$SCRATCH/$1.log
    shift
    if ! timeout "$STEP_TIMEOUT" "$@" > "$log" 2>&1; then
        local why
        why=$(grep -E "Error|error|Killed" "$log" | grep -v HYDRA_FULL_ERROR | tail -n 1 | cut -c1-300)
        [ -n "$why" ] || why=$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-300)
        say "$name: failed (${why:-timed out after $STEP_TIMEOUT s or printed nothing})"
        return 1
    fi
}
rate() {  # the last value of a csv scalar of a run directory
    tail -n 1 "$(find "$1" -path "*scalars/$2.csv" | head -n 1)" | cut -d, -f2
}

say "== updates/s, benchmarks/update_speed.py ($DATASET from $DATA_ROOT)"
for row in "${SPEED_ROWS[@]}"; do
    size=${row%%:*}
    read -r -a modes <<< "${row#*:}"
    if step "update_speed_$size" python benchmarks/update_speed.py --device $DEVICE --root "$DATA_ROOT" \
            --sizes "$size" --modes "${modes[@]}" "${SPEED_ARGS[@]}" --json "$RESULTS/update_speed_$size.json"; then
        tr '\r' '\n' < "$SCRATCH/update_speed_$size.log" | grep -E "updates/s|failed" \
            | sed 's/^.*\(small\|mid\|recipe\|paper\) /\1 /' | tee -a "$REPORT"
    fi
done

say "== end-to-end offline, config_ogbench_crl ${SIZE[*]}, no speed flag ($OFFLINE_STEPS gradient steps)"
if step offline python stable_contrastive_rl.py --config-name config_ogbench_crl device=$DEVICE "${SIZE[@]}" \
        offline.root="$DATA_ROOT" offline.gradient_steps=$OFFLINE_STEPS offline.eval_interval=$OFFLINE_STEPS \
        logger.num_eval_episodes=1 logger.backend=csv hydra.run.dir="$SCRATCH/offline"; then
    grep -o "on $DEVICE.*" "$SCRATCH/offline.log" | head -n 1 | tee -a "$REPORT"
    say "offline updates/s (whole run, compilation included): $(rate "$SCRATCH/offline" train/updates_per_second)"
fi

ONLINE_ENV=pointmaze-medium-navigate-v0 ONLINE_ARGS=(env.max_steps=1000)
if python -c "import gymnasium_robotics" 2> /dev/null; then
    ONLINE_ENV=FetchReach-v4 ONLINE_ARGS=()
fi
say "== online $ONLINE_ENV, config.yaml ${SIZE[*]} ($ONLINE_FRAMES frames, no speed flag)"
if step online python stable_contrastive_rl.py env.env_name=$ONLINE_ENV "${ONLINE_ARGS[@]}" device=$DEVICE \
        "${SIZE[@]}" collector.total_frames=$ONLINE_FRAMES collector.init_random_frames=1000 \
        logger.eval_interval=$ONLINE_FRAMES logger.num_eval_episodes=1 logger.backend=csv \
        hydra.run.dir="$SCRATCH/online"; then
    say "online frames/s: $(rate "$SCRATCH/online" train/frames_per_second)," \
        "updates/s: $(rate "$SCRATCH/online" train/updates_per_second)"
fi

if [ "$DEVICE" = cuda ]; then
say "== against OGBench's JAX CRL on an H200 (updates/s: small 404.8, recipe 278.7, paper 195.7; goals 3x, 2x, 2x)"
python - "$RESULTS" <<'EOF' | tee -a "$REPORT"
import json, sys
from pathlib import Path
jax, goal = {"small": 404.8, "recipe": 278.7, "paper": 195.7}, {"small": 3, "recipe": 2, "paper": 2}
for size in jax:
    path = Path(sys.argv[1]) / f"update_speed_{size}.json"
    rows = [row for row in json.loads(path.read_text()) if "updates_per_s" in row] if path.is_file() else []
    if rows:
        best = max(rows, key=lambda row: row["updates_per_s"])
        ratio = best["updates_per_s"] / jax[size]
        print(f"{size}: best {best['mode']} {best['updates_per_s']:.1f} updates/s, {ratio:.2f}x the JAX CRL"
              f" (goal {goal[size]}x: {'met' if ratio >= goal[size] else 'missed'})")
    else:
        print(f"{size}: no figure")
EOF
fi
echo "figures written to $REPORT"
