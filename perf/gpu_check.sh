#!/usr/bin/env bash
# The GPU check in one command, for a lent GPU machine (torch with CUDA, no package registry; see docs/gpu.md):
#
#   bash perf/gpu_check.sh OUT [DATA]
#
# OUT: where the results go; DATA: a folder holding mnist/ (default: data, git-ignored; carry it there).
# In about 9 minutes on one H100 it writes under OUT:
#   tests.txt               the CUDA tests and the one-step harness on CUDA (tests/test_cuda.py, tests/test_step.py)
#   step_backends.json      one regularised step per backend on the GPU (eager, compiled, torch) at full scale
#   vectorized_gpu.json     runs per hour of vectorised jobs, K = 1, 4, 16, 64, against runs alone
#   transformer_importance_gpu.json  post-task Fisher and MAS on a 2-layer BERT and a GPT-2-small-sized model:
#                           the per-sample engine against the naive per-sample loop (issue 31)
#   pmnist-si-full.json     one full-scale P-MNIST SI run (10 tasks, 2000,2000, 20 epochs), timed (time.txt)
#   gpu.txt                 nvidia-smi and torch's view of the device
# Each part runs under its own time limit and goes on after a failure; the exit status is the first failure's.
set -uo pipefail
OUT=${1:?usage: bash perf/gpu_check.sh OUT [DATA]}
DATA=${2:-data}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # clreg from this tree, against the machine's torch
status=0
part() {  # part NAME SECONDS COMMAND...: run one part, keep its output, remember the first failure
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)" | tee -a "$OUT/log.txt"
  local start=$SECONDS
  timeout "$limit" "$@" >>"$OUT/log.txt" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
  [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc
  return 0
}
{ nvidia-smi; python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } >"$OUT/gpu.txt" 2>&1
part tests 150 bash -c "python -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_step.py -k cuda \
  | tee '$OUT/tests.txt'"
part step_backends 60 python perf/step_kernel.py --device cuda --widths 2000 --out "$OUT/step_backends.json"
part vectorized 120 python perf/vectorized.py --device cuda --data-dir "$DATA" --sizes 1,4,16,64 \
  --out "$OUT/vectorized_gpu.json"
part transformer 90 python perf/transformer_importance.py --device cuda --models bert,gpt2-small --samples 128 \
  --large-samples 16 --columns 0 --out "$OUT/transformer_importance_gpu.json"
start=$SECONDS
part pmnist_si_full 150 python -c "from clreg.cli import main; main()" run --benchmark permuted-mnist --method si --device cuda \
  --data-dir "$DATA" --out "$OUT/pmnist-si-full.json"
echo "full-scale P-MNIST SI run: $((SECONDS - start)) s wall" >"$OUT/time.txt"
exit $status
