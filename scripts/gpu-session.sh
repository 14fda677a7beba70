#!/usr/bin/env bash
# One GPU session, offline: pretrain the 8 x 512 French encoder on the in-project corpus,
# fine-tune PLM-ICD on CodiEsp-FR train with it, fit the decision policy on dev (measured
# by cross-fitting), then benchmark training throughput (own encoder and BERT-base size, bf16/fp32).
#
#   bash scripts/gpu-session.sh            # about 9 minutes on one H100
#   SMOKE=1 bash scripts/gpu-session.sh    # about 2 minutes: every stage with tiny budgets
#
# Needs python3 with torch (CUDA), transformers, tokenizers, scikit-learn, scipy, pandas,
# pyarrow, jinja2, pyyaml, tqdm. cimcoder's other dependencies for these commands (pydantic,
# mlflow-skinny and what it imports, edsnlp and cim-11-certic for their terminology tables)
# are taken from wheels in .whl/ when that folder exists (no index is asked), else they must
# be installed. Nothing is downloaded; nothing outside the repository is read.
#
# Environment: OUT (where the log and JSON reports go; default outputs/gpu-session),
# PYTHON (default python3), SMOKE=1, CIMCODER_MLFLOW_DIR (default: a folder in /tmp),
# PRETRAIN_OVERRIDES / TRAIN_OVERRIDES (extra dotted overrides, space-separated), SKIP_BENCH=1.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-outputs/gpu-session}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1
export CIMCODER_MLFLOW_DIR=${CIMCODER_MLFLOW_DIR:-/tmp/cimcoder-mlflow}
export HF_HUB_OFFLINE=1      # local folders only: never wait on a hub
mkdir -p "$CIMCODER_MLFLOW_DIR"

say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
# Run a stage with a wall-clock limit, its output in the log; go on if it fails.
stage() {
    local name=$1 limit=$2
    shift 2
    say "== $name: $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "== $name: exit $rc after $((SECONDS - t0)) s"
    return "$rc"
}
CIMCODER=("$PY" -m cimcoder.cli)   # the `cimcoder` console script, whatever PATH holds

# ---------------------------------------------------------------- environment
if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=${CIMCODER_SITE:-/tmp/cimcoder-site}
    say "installing $(ls .whl/*.whl | wc -l) wheels from .whl into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! (cd / && "$PY" -c "import cimcoder.training.pretrain" 2>/dev/null); then
    say "installing cimcoder (editable, no dependencies)"
    if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tee -a "$LOG"; then
        # No usable setuptools: the same package layout through links.
        src=/tmp/cimcoder-src
        mkdir -p "$src/cimcoder"
        cp cimcoder/*.py "$src/cimcoder/"
        for area in terminologies training eval inference serving; do ln -sfn "$PWD/$area" "$src/cimcoder/$area"; done
        export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
{
    nvidia-smi || echo "nvidia-smi: not available"
    echo "cpu cores: $(nproc)"
    "$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "bf16", torch.cuda.is_bf16_supported())
for name in ("transformers", "tokenizers", "safetensors", "scikit-learn", "scipy", "numpy", "pandas",
             "pydantic", "typing-extensions", "protobuf", "sqlalchemy", "mlflow-skinny", "edsnlp",
             "cim-11-certic", "setuptools"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
EOF
} 2>&1 | tee "$OUT/env.txt" | tee -a "$LOG"

ENCODER=artifacts/encoders/cimcoder-fr-base
RUN=runs/codiesp-fr/gpu-own
if [ "$SMOKE" = 1 ]; then
    PRE=(training.time_budget_s=45 training.max_steps=30)
    FT=(training.epochs=1)
    BENCH=(--steps 3 --warmup 1 --precision bf16)
else
    PRE=()
    FT=()
    BENCH=(--steps 20 --warmup 3 --precision both)
fi
read -r -a extra_pre <<<"${PRETRAIN_OVERRIDES:-}"
read -r -a extra_ft <<<"${TRAIN_OVERRIDES:-}"
PRE+=("${extra_pre[@]}")
FT+=("${extra_ft[@]}")

# ---------------------------------------------------------------- 1. pretrain
stage pretrain 330 "${CIMCODER[@]}" pretrain --config configs/pretrain/gpu-base.yaml --output "$ENCODER" "${PRE[@]}"
cp "$ENCODER/pretrain_info.json" "$OUT/" 2>/dev/null

# ---------------------------------------------------------------- 2. fine-tune, calibrate, evaluate
stage train 300 "${CIMCODER[@]}" train --no-resume configs/codiesp-fr/gpu-own.yaml "model.encoder=$ENCODER" "${FT[@]}"
cp "$RUN/metrics.json" "$OUT/train_metrics.json" 2>/dev/null
stage calibrate 180 "${CIMCODER[@]}" calibrate "$RUN"
stage evaluate 180 "${CIMCODER[@]}" evaluate "$RUN" --data codiesp-fr/dev
cp "$RUN"/eval/*/automation_report.json "$OUT/" 2>/dev/null

# ---------------------------------------------------------------- 3. throughput
[ "${SKIP_BENCH:-0}" = 1 ] || stage bench 240 "$PY" benchmarks/bench_training.py --config configs/codiesp-fr/gpu-own.yaml \
    --bert-base --json "$OUT/bench.json" "${BENCH[@]}" "model.encoder=$ENCODER" "${FT[@]}"

say "done in ${SECONDS} s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
