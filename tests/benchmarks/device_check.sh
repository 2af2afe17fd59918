#!/usr/bin/env bash
# One call on a GPU machine: every GPU path of brainldm measured and checked, in at most about 8.5
# minutes on one H100 (the steps' limits; a device-tool timeout of 600 s leaves room). Run from the repository root. Logs go to $OUT/device_check/ when OUT is set (else a
# temporary folder); every step has its own time limit and prints its figures as it goes, so a
# run cut short still reports the steps it finished.
#
# Preparation, on a machine with PyPI, in the repository root (the GPU machine has no network;
# .whl/ is git-ignored and travels with the working tree, ~46 MB of the 64 MiB allowed):
#
#   rm -rf .whl && mkdir .whl
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --abi cp312 --abi abi3 --abi none --platform any --platform manylinux_2_17_x86_64 \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
#       --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_12_x86_64 \
#       --platform manylinux2010_x86_64 -d .whl -r tests/benchmarks/device_wheels.txt
#   python3 -m pip wheel --no-deps -w .whl connection_pool==0.0.3    # an sdist on PyPI; pure Python
#
# Then, on the GPU machine (the device tool: carry [".whl"], timeout 600 s):
#
#   bash tests/benchmarks/device_check.sh
#
# Wheels whose distribution the image already has are skipped; the others are installed with
# `pip install --no-index --no-deps --target` into a temporary folder put first on PYTHONPATH.
#
#   bash tests/benchmarks/device_check.sh --dry    # every step at tiny sizes on the CPU (2-4 min on 2 cores)
#
# Steps (limits in seconds; the toy graph runs in the background from the start, with 12 of the
# 16 cores, beside the benchmarks, which it perturbs a little):
#   0. the GPU (nvidia-smi, torch)
#   1. the toy graph with model.device cuda (decoding and encoding on torch_cuda) against the same
#      graph on the CPU (numpy backends): summary tables compared within the tolerances of
#      tests/benchmarks/compare_toy_runs.py                                                     [450]
#   2. bench_reconstruction.py at SD v1.4 sizes, fp16, batch sizes 1, 8, 32                     [150]
#   3. bench_features.py --sd-configs --device cuda                                              [35]
#   3b. bench_evaluation.py: identification and metric networks, float32/float16, readers 0/4   [60]
#   4. bench_decoding.py at NSD scale: ours and himalaya, both on torch_cuda, all targets       [100]
#   5. bench_encoding.py at scale 1, 20 candidates: ours and himalaya, both on torch_cuda      [130]
#   6. bench_reconstruction.py variants at batch 8 (writer thread, attention, layout)            [60]
#   7. the same with torch.compile of the U-Net       [what is left of DEVICE_CHECK_BUDGET=480 s]
set -u

DRY=0
if [ "${1:-}" = "--dry" ]; then
    DRY=1
fi
REPO=$(pwd)
if [ ! -f "$REPO/Snakefile" ] || [ ! -d "$REPO/tests/benchmarks" ]; then
    echo "run from the repository root (no Snakefile here: $REPO)" >&2
    exit 2
fi
LOGS="${OUT:-$(mktemp -d -t device_check_XXXX)}/device_check"
WORK=$(mktemp -d -t device_check_work_XXXX)
mkdir -p "$LOGS"
# the toy runs and installed wheels go with the work folder; DEVICE_CHECK_KEEP=1 keeps it
if [ "${DEVICE_CHECK_KEEP:-0}" != 1 ]; then
    trap 'rm -rf "$WORK"' EXIT
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export PYTHONPATH="$REPO/workflow/scripts${PYTHONPATH:+:$PYTHONPATH}"
BENCH="$REPO/tests/benchmarks"
T0=$(date +%s)
# seconds the steps may take together (the torch.compile step gets what the others leave)
BUDGET=${DEVICE_CHECK_BUDGET:-480}
echo "device check: logs in $LOGS, work in $WORK, mode $([ $DRY = 1 ] && echo 'dry (CPU, tiny sizes)' || echo GPU)"

# step NAME LIMIT COMMAND...: run COMMAND under `timeout`, its output shown and kept in LOGS/NAME.log
step() {
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "=== [$name] limit ${limit}s: $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    echo "=== [$name] exit $rc$([ "$rc" = 124 ] && echo ' (time limit)') after $(($(date +%s) - start)) s; $(($(date +%s) - T0)) s in all"
}

# --------------------------------------------------------------------------- wheels
if [ -d "$REPO/.whl" ]; then
    SITE="$WORK/site"
    missing=$(python3 - "$REPO/.whl" <<'EOF'
import importlib.metadata
import pathlib
import sys

for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    try:
        importlib.metadata.version(wheel.name.split("-")[0])
    except importlib.metadata.PackageNotFoundError:
        print(wheel)
EOF
)
    if [ -n "$missing" ]; then
        echo "installing $(echo "$missing" | wc -l) wheel(s) into $SITE"
        # shellcheck disable=SC2086
        python3 -m pip install --quiet --no-index --no-deps --target "$SITE" $missing 2>&1 | tail -5
        export PYTHONPATH="$PYTHONPATH:$SITE"
    else
        echo "every wheel in .whl is installed already"
    fi
else
    echo "no .whl folder: using the installed packages"
fi

# --------------------------------------------------------------------------- 0. the device
if [ $DRY = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOGS/gpu.log"
fi
python3 -c "
import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f'GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs')
import diffusers, himalaya, transformers
print('diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'himalaya', himalaya.__version__)
" 2>&1 | tee -a "$LOGS/gpu.log"

# --------------------------------------------------------------------------- 1. toy graph (background)
if [ $DRY = 1 ]; then
    # one toy run at a time on a small machine; the decoding summary only (fMRI, features, decoders)
    TOY_TARGETS="results/toy/summary/decoding.tsv"
    TOY_CORES=2
    CHECKED_DEVICE="model: {device: cpu}
decoding: {backend: torch}
encoding: {backend: torch}"
else
    TOY_TARGETS="results/toy/summary/decoding.tsv results/toy/summary/identification.tsv
        results/toy/summary/metrics.tsv results/toy/summary/attributes.tsv results/toy/summary/encoding.tsv"
    TOY_CORES=6
    CHECKED_DEVICE="model: {device: cuda}
decoding: {backend: auto}
encoding: {backend: auto}"
fi
REFERENCE="model: {device: cpu}
decoding: {backend: numpy}
encoding: {backend: numpy}"

# toy_run NAME CONFIG: the toy graph's summary tables in a copy of the workflow under WORK/NAME
toy_run() {
    local dir="$WORK/$1"
    mkdir -p "$dir"
    cp -r "$REPO/Snakefile" "$REPO/workflow" "$REPO/config" "$REPO/envs" "$REPO/profiles" "$dir/"
    printf '%s\n' "$2" >"$dir/config/device_check.yaml"
    # shellcheck disable=SC2086
    (cd "$dir" && python3 -m snakemake --cores "$TOY_CORES" --configfile config/toy.yaml \
        config/device_check.yaml --scheduler greedy --quiet rules -- $TOY_TARGETS)
}

toy_both() {
    if [ $DRY = 1 ]; then
        toy_run toy_reference "$REFERENCE" && toy_run toy_checked "$CHECKED_DEVICE"
    else
        toy_run toy_reference "$REFERENCE" &
        toy_run toy_checked "$CHECKED_DEVICE" &
        wait
    fi
}

# `timeout` runs programs, not shell functions: the toy runs go through `bash -c`
export -f toy_run toy_both
export WORK REPO DRY TOY_TARGETS TOY_CORES REFERENCE CHECKED_DEVICE
if [ $DRY = 1 ]; then
    step toy_graph 600 bash -c toy_both
else
    step toy_graph 450 bash -c toy_both >"$LOGS/toy_graph.out" 2>&1 &
    TOY_PID=$!
    echo "toy graph started in the background (pid $TOY_PID); its log: $LOGS/toy_graph.log"
fi

# --------------------------------------------------------------------------- 2-7. benchmarks
if [ $DRY = 1 ]; then
    # one torch thread: tiny networks beside other work on 2 cores run 100x slower on two
    step reconstruction 120 python3 "$BENCH/bench_reconstruction.py" --device cpu --size tiny --threads 1 \
        --batch-sizes 1 3 --samples 2 --gpu-options
    step features 120 python3 "$BENCH/bench_features.py" --images 8 --batch-size 4 --workdir "$WORK/features"
    step evaluation 120 python3 "$BENCH/bench_evaluation.py" --tiny --threads 1 --gpu-options --reader-threads 0 2
    step decoding 180 python3 "$BENCH/bench_decoding.py" --scale 0.02 --targets-c 600 --baseline-targets 600 \
        --backend torch --himalaya-backend torch
    step encoding 180 python3 "$BENCH/bench_encoding.py" --scale 0.02 --n-iter 2 --backend torch \
        --himalaya-backend torch
    step reconstruction_variants 120 python3 "$BENCH/bench_reconstruction.py" --device cpu --size tiny --threads 1 \
        --batch-sizes 3 --samples 2 --gpu-options --variants sync-writer classic-attention no-channels-last
    step reconstruction_compile 120 python3 "$BENCH/bench_reconstruction.py" --device cpu --size tiny --threads 1 \
        --batch-sizes 3 --samples 2 --gpu-options --variants compile --compile-backend eager
else
    step reconstruction 150 python3 "$BENCH/bench_reconstruction.py" --device cuda --size sd --batch-sizes 1 8 32 \
        --threads 4
    step features 35 python3 "$BENCH/bench_features.py" --sd-configs --device cuda --images 48 --batch-size 16 \
        --threads 4 --workdir "$WORK/features"
    # 128 images: without reader threads the metrics pass alone reads for ~8 s (PixCorr and SSIM ~60 ms each)
    step evaluation 60 python3 "$BENCH/bench_evaluation.py" --device cuda --images 128 --batch-sizes 32 \
        --dtypes float32 float16 --reader-threads 0 4 --threads 4
    step decoding 100 python3 "$BENCH/bench_decoding.py" --scale 1 --backend torch_cuda \
        --himalaya-backend torch_cuda --baseline-targets 59136
    step encoding 130 python3 "$BENCH/bench_encoding.py" --scale 1 --n-iter 20 --backend torch_cuda --threads 16
    step reconstruction_variants 60 python3 "$BENCH/bench_reconstruction.py" --device cuda --size sd --threads 4 \
        --batch-sizes 8 --images 2 --variants sync-writer classic-attention no-channels-last
    # torch.compile last, with what is left of the budget (compiling SD's U-Net takes about a minute)
    left=$((BUDGET - ($(date +%s) - T0)))
    if [ "$left" -ge 30 ]; then
        step reconstruction_compile "$left" python3 "$BENCH/bench_reconstruction.py" --device cuda --size sd --threads 4 \
            --batch-sizes 8 --images 2 --variants compile
    else
        echo "=== [reconstruction_compile] skipped: ${left}s left of the ${BUDGET}s budget"
    fi
fi

# --------------------------------------------------------------------------- 1. toy graph: compare
if [ $DRY = 0 ]; then
    wait "$TOY_PID"
    cat "$LOGS/toy_graph.out"
fi
step toy_compare 30 python3 "$BENCH/compare_toy_runs.py" "$WORK/toy_reference/results/toy/summary" \
    "$WORK/toy_checked/results/toy/summary"
echo "device check done in $(($(date +%s) - T0)) s; logs in $LOGS"
