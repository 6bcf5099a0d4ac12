#!/usr/bin/env bash
# One GPU session in one call: install, the GPU benchmarks of BDH and FFF, the `gpu`-marked tests.
#
#   OUT=DIR bash benchmarks/device_session.sh          # on the GPU machine (the device tool sets OUT)
#   DEVICE=cpu QUICK=1 OUT=/tmp/dry bash benchmarks/device_session.sh   # dry run of the script here
#   BDH=0 OUT=DIR bash benchmarks/device_session.sh    # FFF and the GPU tests only (about 2 minutes)
#   FFF=0 OUT=DIR bash benchmarks/device_session.sh    # BDH and the GPU tests only
#   PROFILE=0 ...                                      # without the diagnostics (benchmarks/*_profile.py)
#   FOCUS=1 ...                                        # the open figures first, fewer cases (see below)
#   COMPARE=1 CORPUS=.corpus/debian.tar.xz ...         # also bdh-compare's GPU size (bdh-ref vs gpt-medium, ~4 min);
#                                                      #   the GPU machine has no corpus: pack this machine's (60 MiB,
#                                                      #   about 7 MiB packed) with
#                                                      #   tar -C ~/.cache/recruit/corpus -cJf .corpus/debian.tar.xz debian
#                                                      #   and carry .corpus (a corpus directory works too)
#   BDH=0 FFF=0 GPU_TESTS=0 COMPARE=1 CORPUS=...       # bdh-compare alone: a second call on the warm machine
#
# The GPU machine has a CUDA torch, triton, transformers and pytest but no network: the fff benchmark's peer comes
# as a wheel, `pip download --no-deps -d .whl fastfeedforward==0.2.1` here and carry `.whl` (installed below).
#
# Records land in $OUT/bdh-speed.jsonl, $OUT/fff.jsonl and $OUT/fff-model.jsonl (copy them to results/gpu/ and
# rebuild docs/results.md with the command on its third line, the GPU files in place of results/recovered/'s);
# logs in $OUT/session.log, diagnostics in $OUT/bdh-profile.txt and $OUT/fff-profile.txt. Each step has its own
# time limit so that one slow step cannot eat the others; a benchmark cut off by its limit leaves the records it
# had measured in $OUT/NAME.partial.jsonl (bdh-speed: each form with its ratios to the reference, which goes first).
set -u
OUT=${OUT:?set OUT to the output folder}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:+--quick}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1
py=python3
{
  date -u
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
    $py -m pip install --no-deps --no-build-isolation -q -e . || exit 1
    if ls .whl/*.whl >/dev/null 2>&1; then $py -m pip install --no-deps -q .whl/*.whl; fi
  fi
  $py -c "import torch, recruit; print('torch', torch.__version__, 'recruit', recruit.__version__)"
} >>"$LOG" 2>&1

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "step $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  return $rc
}

# FOCUS=1: the two open figures first (the device time of a session is short): fff at hidden 4096, 1 and 4096
# tokens, with the launch sweep (the figure nearest its target goes first), then bdh-speed's training of the
# reference and fused forms; then the GPU tests of the kernels, then the diagnostics; no fff-model. The benchmarks
# check their own kernels in the same run (fff: tokens_agreeing_with_reference; bdh-speed: first_step_loss and
# last_step_loss per form), so the figures need not wait for the tests.
if [ "${FOCUS:-0}" != 0 ]; then
  # the tests of explicit launch configs first (each compiles only its own), the model tests (which autotune every
  # config at each of their shapes) last; -vv (over pyproject's -q) names each test as it passes, should the step's
  # limit cut it short
  TESTS=(-vv tests/test_bdh_triton.py::test_persistent_programs_equal_one_program_per_tile_on_cuda
         tests/test_bdh_triton.py::test_programs_holding_their_b_block_equal_programs_walking_k_on_cuda
         tests/test_fff_kernels.py tests/test_fff_bench.py
         tests/test_bdh_triton.py::test_fused_model_equals_fast_model_on_cuda tests/test_bdh_speed.py)
  BDH_SET=(--set impls=reference,fused --set generation=false)
  # the sweep's warm pass bounded to FFF_SWEEP_S (40 s) per case, the untimed launches first: two cases, each
  # with its dense, peers and cycled pass, within the fff step's limit
  if [ -n "$QUICK" ]; then FFF_SET=(--set batches=1); else
    FFF_SET=(--set hidden=4096 --set batches=1,4096 --set "sweep_s=${FFF_SWEEP_S:-40}"); fi
else
  TESTS=(-q tests/) BDH_SET=() FFF_SET=()
fi

fff() {  # FFF_LIMIT (300 s); under FOCUS=1 no more than the call has left before BDH_RESERVE (180 s, for
  # bdh-speed after it) and TESTS_RESERVE (200 s, for the GPU tests after that), at least a minute
  local limit=${FFF_LIMIT:-300} reserve=${TESTS_RESERVE:-200}
  # the sweep's L2 prefetch is inline PTX first run here: a fault would end the benchmark's process and lose its
  # cases, so its bf16 GPU tests go first (three launches, about 20 s), and the sweep leaves the prefetch out if
  # they fail
  if [ "${FOCUS:-0}" != 0 ] && [ "$DEVICE" = cuda ] &&
    ! step prefetch-check 60 $py -m pytest -m gpu -p no:cacheprovider -q -x tests/test_fff_kernels.py \
      -k "small_batch_launches_equal_reference and prefetch and dtype1"; then
    FFF_SET+=(--set skip=prefetch)
  fi
  if [ "${FOCUS:-0}" != 0 ]; then
    on BDH && reserve=$((reserve + ${BDH_RESERVE:-180}))
    local left=$((570 - SECONDS - reserve))
    [ "$left" -lt 60 ] && left=60
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  step fff "$limit" recruit bench fff -q --device "$DEVICE" --out "$OUT" $QUICK "${FFF_SET[@]}"
  [ "${FOCUS:-0}" != 0 ] ||
    step fff-model "${FFF_MODEL_LIMIT:-150}" recruit bench fff-model -q --device "$DEVICE" --out "$OUT" $QUICK
}
fff_profile() {  # the token kernel's cost per routing step at 1 token, from L2 and from memory ($OUT/fff-profile.txt)
  if [ "$DEVICE" = cuda ]; then
    step fff-profile "${FFF_PROFILE_LIMIT:-200}" $py benchmarks/fff_profile.py --out "$OUT"
  else
    step fff-profile 300 env TRITON_INTERPRET=1 $py benchmarks/fff_profile.py --device cpu --quick --out "$OUT"
  fi
}
bdh_profile() {  # where a fused BDH step spends its time ($OUT/bdh-profile.txt)
  if [ "$DEVICE" = cuda ]; then
    step bdh-profile "${PROFILE_LIMIT:-150}" $py benchmarks/bdh_profile.py --out "$OUT"
  else
    step bdh-profile 300 env TRITON_INTERPRET=1 $py benchmarks/bdh_profile.py --device cpu --quick --out "$OUT"
  fi
}
bdh_speed() {  # BDH_MODES=max-autotune-no-cudagraphs also times the fast and fused forms compiled in that mode
  # (about three minutes more of compiling); by default the time a 600 s call has left, at least 2 minutes; under
  # FOCUS=1 (after fff) less TESTS_RESERVE (200 s, for the GPU tests after it)
  local reserve=0
  [ "${FOCUS:-0}" != 0 ] && reserve=${TESTS_RESERVE:-200}
  local left=$((570 - SECONDS - reserve))
  [ "$left" -lt 120 ] && left=120
  step bdh-speed "${BDH_LIMIT:-$left}" recruit bench bdh-speed -q --device "$DEVICE" --out "$OUT" $QUICK \
    "${BDH_SET[@]}" ${BDH_MODES:+--set "extra_modes=$BDH_MODES"}
}
on() { [ "${!1:-1}" != 0 ]; }  # on NAME: the part NAME (FFF, BDH, PROFILE, GPU_TESTS) is not switched off

gpu_tests() {  # GPU_TESTS=0 leaves them out
  on GPU_TESTS && [ "$DEVICE" = cuda ] &&
    step gpu-tests "${TESTS_LIMIT:-240}" $py -m pytest -m gpu -p no:cacheprovider "${TESTS[@]}"
}

if [ "${FOCUS:-0}" != 0 ]; then
  on FFF && fff
  on BDH && bdh_speed
  gpu_tests
  on FFF && on PROFILE && fff_profile
  on BDH && on PROFILE && bdh_profile
else
  gpu_tests
  on FFF && fff
  on FFF && on PROFILE && fff_profile
  on BDH && on PROFILE && bdh_profile
  on BDH && bdh_speed
fi
# the larger size of the BDH-vs-GPT comparison, opt-in (minutes of training)
if [ "${COMPARE:-0}" != 0 ]; then
  corpus=${CORPUS:-debian}
  if [[ "$corpus" == *.tar.xz ]]; then  # a packed corpus directory: unpacked beside the run
    dir=$(mktemp -d)
    tar -C "$dir" -xJf "$corpus" >>"$LOG" 2>&1 || echo "could not unpack $corpus" | tee -a "$LOG"
    corpus=$(dirname "$(find "$dir" -name manifest.json -print -quit)")
  fi
  step bdh-compare "${COMPARE_LIMIT:-300}" recruit bench bdh-compare -q --device "$DEVICE" --out "$OUT" $QUICK \
    --corpus "$corpus"
fi
tail -n 25 "$LOG"
