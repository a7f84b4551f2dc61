#!/usr/bin/env bash
# GPU checks of modmask on a machine with one NVIDIA GPU, in under 8 minutes (BUDGET seconds, 470 by
# default: a part gets at most what is left of it, and one with under 15 s left is skipped).
#
#     OUT=/some/folder bash benchmarks/device_check.sh      (from the repository root)
#     DEVICE=cpu PAPER_STEPS=3 ONLY=paper TIME_SCALE=10 BUDGET=4000 bash benchmarks/device_check.sh
#                                                        (try parts on a machine without a GPU)
#
# The machine needs no package registry: it runs modmask from source (PYTHONPATH=src) with the
# PyTorch, safetensors, tqdm, matplotlib and pytest it has. Every part runs under `timeout`, so
# one that hangs or fails leaves the others' results; each writes $OUT/<part>.txt and a line
# "<part> rc=<status> seconds=<n>" to $OUT/summary.txt (rc 124: the part ran out of time).
# DEVICE (default cuda) is the device of the benchmark and the experiment runs; ONLY, a regular
# expression, runs only the parts whose names match it; TIME_SCALE multiplies every part's limit
# (for a slower machine, with BUDGET raised to match).
set -u

OUT=${OUT:-device_check_out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-470}
PAPER_STEPS=${PAPER_STEPS:-200}
ONLY=${ONLY:-}
TIME_SCALE=${TIME_SCALE:-1}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$(date +%s)
NOT_SELECTED=254 NO_TIME=253  # part's statuses for a part it did not run

part() {  # part NAME SECONDS COMMAND...: run COMMAND with a time limit, log its status, return it
    local name=$1 limit=$2 start rc left
    shift 2
    [[ -z $ONLY || $name =~ $ONLY ]] || return $NOT_SELECTED
    limit=$(( limit * TIME_SCALE ))
    left=$(( BUDGET - ($(date +%s) - START) - 10 ))  # 10: timeout's --kill-after
    if (( left < 15 )); then
        echo "$name skipped: ${left}s of the ${BUDGET}s budget left" | tee -a "$SUMMARY"
        return $NO_TIME
    fi
    (( limit > left )) && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee -a "$SUMMARY"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$SUMMARY"
    tail -n 15 "$OUT/$name.txt"
    return $rc
}

part environment 15 bash -c "nvidia-smi; $PYTHON -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0), \"bf16\", torch.cuda.is_bf16_supported())'"

# 1. The tests marked `cuda` (CUDA equals CPU, sample groups, the memory plan against the peak
#    allocated, a plan that does not fit, bf16), then the core tests on the GPU machine's PyTorch.
part cuda_tests 90 "$PYTHON" -m pytest -m cuda tests/core -q -p no:cacheprovider -rs

# 2. Mask step against plain step, with peak memory and the plan, for every model line; the
#    group model (samples_per_pass 4, 2, 1 and bf16) at two sizes: 21M and 117M parameters.
part mask_step 100 "$PYTHON" benchmarks/mask_step.py --device "$DEVICE" --steps 10 --bf16
part mask_step_large 40 "$PYTHON" benchmarks/mask_step.py --device "$DEVICE" --steps 10 --bf16 --models "" \
    --group-model gpt-1024x8 --samples-per-pass 4,1 --joint ""

# 3. Does a short GPU run learn hard problems? DeepMind Mathematics' small preset on one module
#    with five times its pretraining (6,000 steps), its two masks and the hard-test evaluation, in
#    at most 4 minutes (needs MODMASK_DATA; generated data is cached in its dm_math_generated).
if [[ -n ${MODMASK_DATA:-} ]]; then
    rm -rf "$OUT/dm_math_learn"
    part dm_math_learn 240 "$PYTHON" -m modmask.cli run dm_math --preset small --set modules=arithmetic__add_or_sub \
        --set pretrain_steps=6000 --set warmup=600 --device "$DEVICE" --quiet --out "$OUT/dm_math_learn"
    cp "$OUT/dm_math_learn/report.md" "$OUT/dm_math_learn_report.md" 2>/dev/null
fi

# 4. PAPER_STEPS pretraining steps and PAPER_STEPS steps per mask of each experiment's paper
#    presets, timed, and the hours per seed the paper's step counts would take: seconds per step
#    from seed-0's timings.json (phases `pretrain`, scan's `baseline:<split>`, `mask:<name>` and
#    `masks:<names>` of masks trained together), scaled to the paper's pretrain_steps and
#    mask.steps; phases without steps (dm_math's `data` and `evaluate`) count as measured; what
#    runs outside the phases (data loading, evaluation) is left out. One line per preset goes to
#    $OUT/paper_hours.txt. The presets that differ from `paper` only in initial logits or dropout
#    (permuted_mnist paper_prefer_old*, cifar paper_no_dropout) cost the same and are not run.
#    CIFAR, SCAN, permuted MNIST and DeepMind Mathematics need MODMASK_DATA (the layout of the
#    project's datasets folder; dm_math runs one module on 2,000 examples per difficulty, read
#    from MODMASK_DATA's dm_math_generated folder or generated with mathematics-dataset);
#    without it they are skipped. A run that stops early (its time limit) is projected from the
#    phases it finished, marked INCOMPLETE. They run last and get what is left of BUDGET (after the parts
#    above, about enough for the three that need no data); `ONLY=paper` gives them all of it.
HOURS="$OUT/paper_hours.txt"
: > "$HOURS"

project() {  # project RUN_DIR [NOTE]: print the projected hours per seed at the paper's step counts
    timeout 60 "$PYTHON" - "$@" <<'PY'
import json
import sys
from pathlib import Path

from modmask.config import resolve, to_json
from modmask.launch.catalogue import experiment_module

run = Path(sys.argv[1])
if not (run / "config.json").exists():
    sys.exit(f"{run}: no projection, the run did not start (no config.json)")
used = json.loads((run / "config.json").read_text())
module = experiment_module(used["experiment"])
paper = resolve(module.Config, module.PRESETS, used["preset"])


def kind_and_steps(config: dict, phase: str):
    """('pretrain' | 'mask', the step count the phase's time scales with), or ('rest', None)."""
    if phase.startswith(("mask:", "masks:")):  # masks:a,b,...: masks trained together
        return "mask", config["mask"]["steps"]
    if phase == "pretrain" or phase.startswith("baseline:"):  # scan's baselines train like pretraining
        return "pretrain", config.get("pretrain_steps")
    return "rest", None


files = sorted((run / "seed-0").rglob("timings.json"))
if not files:
    sys.exit(f"{run}: no projection, no phase finished (no timings.json under seed-0)")
seconds = {"pretrain": [0.0, 0.0], "mask": [0.0, 0.0], "rest": [0.0, 0.0]}  # kind -> [measured, projected]
ms_per_step = {"pretrain": [], "mask": []}
for path in files:
    # dm_math: one folder per module, each with the paper's settings for that module
    target = to_json(paper.for_module(path.parent.name) if used["experiment"] == "dm_math" else paper)
    for phase, measured in json.loads(path.read_text()).items():
        kind, done = kind_and_steps(used, phase)
        wanted = kind_and_steps(target, phase)[1]
        if not (done and wanted):
            kind = "rest"
        seconds[kind][0] += measured
        seconds[kind][1] += measured if kind == "rest" else measured / done * wanted
        if kind != "rest":
            ms_per_step[kind].append(measured / done * 1e3)
hours = sum(projected for _, projected in seconds.values()) / 3600


def rate(kind: str) -> str:
    low, high = min(ms_per_step[kind]), max(ms_per_step[kind])
    return f" at {low:.1f} ms/step" if low == high else f" at {low:.1f}-{high:.1f} ms/step"


parts = [f"{kind} {measured:.0f} s -> {projected / 3600:.2f} h" + (rate(kind) if kind != "rest" else "")
         for kind, (measured, projected) in seconds.items() if measured]
scope = "per seed"
if used["experiment"] == "dm_math":  # the study runs per module; say which were measured
    scope = f"for {len(files)} of the paper's {len(paper.modules)} modules ({', '.join(p.parent.name for p in files)})"
note = f" {sys.argv[2]}" if len(sys.argv) > 2 else ""
print(f"{used['experiment']} {used['preset']}: {hours:.2f} h {scope} at the paper's steps ({'; '.join(parts)}){note}")
PY
}

paper() {  # paper EXPERIMENT PRESET SECONDS [--set KEY=VALUE ...]: time the preset, then project
    local experiment=$1 preset=$2 limit=$3 dir="$OUT/paper-$1-$2"
    shift 3
    rm -rf "$dir"  # a run directory refuses other settings; start afresh
    part "paper_${experiment}_$preset" "$limit" "$PYTHON" -m modmask.cli run "$experiment" --preset "$preset" \
        --set mask.steps="$PAPER_STEPS" "$@" --device "$DEVICE" --quiet --out "$dir"
    case $? in
        0) project "$dir" 2>&1 | tee -a "$HOURS" ;;
        "$NOT_SELECTED") ;;
        "$NO_TIME") echo "$experiment $preset: not run, no time left" | tee -a "$HOURS" ;;
        *) project "$dir" "INCOMPLETE: the run stopped (paper_${experiment}_$preset.txt); phases not reached are missing" \
               2>&1 | tee -a "$HOURS" ;;
    esac
}

PRETRAIN=(--set pretrain_steps="$PAPER_STEPS")
paper addmul paper 30 "${PRETRAIN[@]}" --set random_draws=0
paper doubleadd paper 30 "${PRETRAIN[@]}" --set random_draws=0
paper sharing paper 45 "${PRETRAIN[@]}"
if [[ -n ${MODMASK_DATA:-} ]]; then
    DM_MATH=(--set modules=arithmetic__add_or_sub --set generate_train=2000 --set generate_test=500
             --set held_out=200 --set test_examples=256)
    paper permuted_mnist paper 30
    paper scan paper 30 "${PRETRAIN[@]}"
    paper cifar paper 40 "${PRETRAIN[@]}" --set random_draws=0
    paper dm_math paper 40 "${PRETRAIN[@]}" "${DM_MATH[@]}"
    paper scan paper-transformer 30 "${PRETRAIN[@]}"
    paper cifar paper-resnet 45 "${PRETRAIN[@]}" --set random_draws=0
    paper dm_math paper-lstm 30 "${PRETRAIN[@]}" "${DM_MATH[@]}"
else
    echo "paper presets of permuted_mnist, scan, cifar, dm_math skipped: set MODMASK_DATA to their data" \
        | tee -a "$SUMMARY" "$HOURS"
fi

# 5. The whole core suite on the GPU machine's PyTorch, with what is left.
part core_tests 40 "$PYTHON" -m pytest tests/core -q -p no:cacheprovider -x

echo "== done in $(( $(date +%s) - START ))s; results in $OUT" | tee -a "$SUMMARY"
