#!/usr/bin/env bash
# The short GPU check: run first whenever an H100/H200 is available, from the repository root, with the
# dependencies importable (on a machine without a package index, lark's wheel on PYTHONPATH). At most
# about 9 minutes (the stages' limits sum to 540 s); every stage has its own timeout, so a slow stage
# costs only itself. `make gpu-check` is the
# long version (every GPU test, then the forward and backward benchmarks).
#
# Writes to $OUT (default gpu-logs/): one log per stage, and gpu-results.md, a RESULTS.md section with
# the machine, each stage's status and its summary, rewritten after every stage so that it is complete
# up to the last stage that ran even when a later one times out. Exit status: 0 when every stage passed.
#
#   stage 0  the machine and versions                                                  10 s
#   stage 1  forward correctness, 10 variants x bf16/fp16/fp32, no autotune, tiles
#            through tensor descriptors (TMA, the default on Hopper)                    170 s
#   stage 1p the same for 3 variants in bf16 on the pointer path (ATTNSPEC_TMA=0)        50 s
#   stage 2  gradients of b01, m02 and n18 (q, k, v, the relative-position table)         90 s
#   stage 3  speed, autotuned: causal, natten2d and causal RoPE (B10) at 4k and 16k,
#            D = 64 and 128, against compiled FlexAttention and SDPA                   160 s
#   stage 4  linear attention (N18): the chunked kernels against the tile kernels and SDPA
#            at 4k, 16k and 64k, D = 64, forward and forward + backward, no autotune    60 s
set -u
OUT_DIR=${OUT:-gpu-logs}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${GPU_PYTHON:-python3}
RESULTS="$OUT_DIR/gpu-results.md"
T0=$(date +%s)
FAILED=0
declare -a ROWS=()

elapsed() { echo $(( $(date +%s) - T0 )); }

write_results() {
    {
        echo "## First GPU run ($(date -u +%Y-%m-%d), benchmarks/gpu_first_run.sh)"
        echo
        sed 's/^/    /' "$OUT_DIR/machine.txt" 2>/dev/null
        echo
        echo "| stage | status | seconds | summary |"
        echo "|---|---|---|---|"
        for row in "${ROWS[@]}"; do echo "$row"; done
        if [ -s "$OUT_DIR/stage3.log" ]; then
            echo
            echo "Speed (stage 3, the benchmark's table):"
            echo
            grep -E '^\|' "$OUT_DIR/stage3.log" | tail -40
        fi
        if [ -s "$OUT_DIR/stage4.log" ]; then
            echo
            echo "Linear attention (stage 4, linear_gpu.py's table):"
            echo
            grep -E '^\|' "$OUT_DIR/stage4.log" | tail -10
        fi
    } > "$RESULTS"
}

# stage NAME SECONDS COMMAND...: run under a timeout, log, record status and the summary line
stage() {
    local name=$1 limit=$2; shift 2
    local log="$OUT_DIR/$name.log" started status summary
    started=$(date +%s)
    echo "[$(elapsed)s] $name (at most ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    case $? in
        0) status=passed ;;
        124|137) status="timed out"; FAILED=1 ;;
        *) status=failed; FAILED=1 ;;
    esac
    summary=$(grep -E "passed|failed|error|Error" "$log" | tail -1 | tr '|' '/' | cut -c1-160)
    ROWS+=("| $name | $status | $(( $(date +%s) - started )) | ${summary:-see $name.log} |")
    write_results
    tail -15 "$log"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name())"
} > "$OUT_DIR/machine.txt" 2>&1
cat "$OUT_DIR/machine.txt"
$PY -c "import lark" 2>/dev/null || { echo "lark is not importable: put its wheel on PYTHONPATH"; exit 1; }
write_results

# b10_rope_gated: the prologue passes and, without gradients, the forward kernel's fused q prologue and
# epilogue; s02_deberta: per-row tables picked per pair with tl.gather
VARIANTS="b01_causal or b03_document or b04_alibi or b07_softcap or m02_natten2d or n01_sigmoid or k02_moba or b10_rope_gated or s02_deberta or n18_lightning"
stage stage1 170 env ATTNSPEC_AUTOTUNE=0 $PY -m pytest tests/test_triton_gpu.py -q -p no:cacheprovider \
    -k "test_example_on_gpu and ($VARIANTS)"
stage stage1p 50 env ATTNSPEC_AUTOTUNE=0 ATTNSPEC_TMA=0 $PY -m pytest tests/test_triton_gpu.py -q -p no:cacheprovider \
    -k "test_example_on_gpu and bfloat16 and (b01_causal or m02_natten2d or k02_moba)"
stage stage2 90 env ATTNSPEC_AUTOTUNE=0 $PY -m pytest tests/test_triton_gpu.py -q -p no:cacheprovider \
    -k "test_example_gradients_on_gpu and (b01_causal or m02_natten2d or n18_lightning)"
stage stage3 160 $PY benchmarks/triton_attention.py --only b01_causal,m02_natten2d,b10_rope --sizes 4096,16384 \
    --dims 64,128 --reps 10 --max-minutes 2.4
stage stage4 60 env ATTNSPEC_AUTOTUNE=0 $PY benchmarks/linear_gpu.py --lengths 4096 16384 65536 --dims 64 --reps 5
echo "[$(elapsed)s] done: $RESULTS"
exit $FAILED
