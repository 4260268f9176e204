#!/usr/bin/env bash
# The engine on a machine with a GPU, torch and transformers but no Ray, in one bounded run:
#
#   bash benchmarks/gpu_check.sh                       # a GPU: at most 8 minutes (--budget)
#   bash benchmarks/gpu_check.sh --device cpu --quick  # the CPU smoke that CI runs (tests/unit/test_gpu_check.py)
#
# 1. environment: GPU, torch, transformers, and that raygen.engine imports without Ray or DeepSpeed;
# 2. the engine's test files on the device (RAYGEN_TEST_DEVICE; needs pytest, skipped where it is missing,
#    and skipped by --device cpu --quick, since the unit tier runs them on CPU anyway);
# 3. benchmarks/engine_parity.py on the device (no pytest needed): greedy parity with transformers in fp32
#    and bf16, the gather + SDPA decode path;
# 4. benchmarks/engine_bench.py: raygen against transformers' static batches, bf16, on gpt2-small's shape
#    (random init) on a GPU, a tiny GPT-2 in fp32 on CPU;
# 5. a summary: tokens/s, % of roofline, decode-step bandwidth as % of the measured copy bandwidth, and the
#    ratio to transformers' best static batch.
#
# Runs from any directory; raygen need not be installed (src/ goes on PYTHONPATH); nothing is downloaded.
# Python: $PYTHON, else the first of .venv/bin/python, python3, python that imports torch.
# Exit status: 0 when every stage that ran passed, 1 otherwise (the summary is printed either way).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benchmarks/gpu_check.sh [--device cuda|cuda:N|cpu] [--quick] [--preset NAME] [--dtype DTYPE]
                               [--requests N] [--out DIR] [--budget SECONDS]
  --device    where everything runs (default cuda)
  --quick     a shorter run: fewer requests and tokens (CPU: tiny model, no pytest stage)
  --preset    engine_bench's model shape (default gpt2-small on a GPU, gpt2-tiny on CPU)
  --dtype     the bench's dtype (default bfloat16 on a GPU, float32 on CPU: bf16 matmuls are slow on CPUs
              without AVX512-BF16 or AMX)
  --requests  the bench's request count (default GPU 256, --quick 64; CPU 8)
  --out       where the log and the bench's JSON/Markdown go (default benchmarks/results/gpu_check/<device>)
  --budget    the whole run's bound in seconds (default 480); each stage gets what is left
EOF
}

DEVICE=cuda QUICK=0 PRESET="" DTYPE="" REQUESTS="" OUT_DIR="" BUDGET=480
while (($#)); do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --preset) PRESET=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
# fp32 parity means fp32: NGC's PyTorch images turn TF32 on for cuBLAS through this variable.
TF32_OVERRIDE=${TORCH_ALLOW_TF32_CUBLAS_OVERRIDE:-}
unset TORCH_ALLOW_TF32_CUBLAS_OVERRIDE

if [[ $DEVICE == cpu ]]; then
  KIND=cpu
  PRESET=${PRESET:-gpt2-tiny} DTYPE=${DTYPE:-float32} REQUESTS=${REQUESTS:-8}
  SYSTEMS="raygen,hf_static${REQUESTS}"
  # One thread: on a shared 2-core box, OpenMP's barriers stall whenever another process holds a core.
  BENCH_EXTRA=(--threads 1 --kv-mib 64)
else
  KIND=cuda
  PRESET=${PRESET:-gpt2-small} DTYPE=${DTYPE:-bfloat16}
  if ((QUICK)); then REQUESTS=${REQUESTS:-64}; SYSTEMS="raygen,hf_static16,hf_static64"
  else REQUESTS=${REQUESTS:-256}; SYSTEMS="raygen,hf_static16,hf_static64,hf_static256"; fi
  BENCH_EXTRA=()
fi
OUT_DIR=${OUT_DIR:-benchmarks/results/gpu_check/$KIND}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

PY=${PYTHON:-}
if [[ -z $PY ]]; then
  for c in "$ROOT/.venv/bin/python" python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then PY=$c; break; fi
  done
fi
if [[ -z $PY ]]; then echo "gpu_check: no python here imports torch; set PYTHON=/path/to/python" >&2; exit 2; fi

DEADLINE=$((SECONDS + BUDGET))
declare -a STAGES=()

# stage NAME CAP_SECONDS CMD...: run CMD under `timeout` for min(CAP, what is left but RESERVE seconds).
RESERVE=15
stage() {
  local name=$1 cap=$2 left rc=0 t0=$SECONDS
  shift 2
  left=$((DEADLINE - SECONDS - RESERVE))
  ((left < cap)) || left=$cap
  echo
  echo "==== $name (up to ${left} s) ===="
  if ((left < 20)); then
    echo "skipped: the ${BUDGET} s budget is spent"
    STAGES+=("$name: SKIPPED (no time left)")
    return 0
  fi
  timeout --kill-after=5 "$left" "$@" || rc=$?
  local took=$((SECONDS - t0))
  if ((rc == 124 || rc == 137)); then
    STAGES+=("$name: TIMEOUT after ${took} s")
  elif ((rc)); then
    STAGES+=("$name: FAILED (exit $rc, ${took} s)")
  else
    STAGES+=("$name: passed (${took} s)")
  fi
  return 0
}

main() {
  echo "==== gpu_check: the raygen engine on $DEVICE ($(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s) ===="
  echo "host        $(hostname 2>/dev/null || echo unknown); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ $KIND == cuda ]] && command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu         /'
  fi
  [[ -z $TF32_OVERRIDE ]] || echo "note        TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=$TF32_OVERRIDE was set; unset for this run"
  # The environment in one process: versions, the device as torch sees it, and raygen.engine importing
  # without Ray or DeepSpeed (the GPU image has neither).
  local env_rc=0
  timeout 120 "$PY" - "$DEVICE" <<'EOF' || env_rc=$?
import importlib.util, platform, sys

import raygen.engine.engine  # noqa: F401  first, so what it pulls in is its own doing

loaded = [m for m in ("ray", "deepspeed", "pydantic") if sys.modules.get(m) is not None]


def have(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


import torch, transformers

print(f"python      {platform.python_version()} ({sys.executable})")
print(f"torch       {torch.__version__} (CUDA build {torch.version.cuda or 'none'}); transformers {transformers.__version__}")
for name in ("pytest", "ray", "deepspeed", "pydantic", "yaml", "numpy"):
    print(f"{name:11s} {'importable' if have(name) else 'not importable'}")
print(f"engine      raygen.engine imports with torch + transformers; it also loaded: {', '.join(loaded) or 'none of ray, deepspeed, pydantic'}")


def major_minor(v):
    return tuple(int(x) for x in v.split("+")[0].split(".")[:2] if x.isdigit())


# What the engine calls: from_pretrained(dtype=...) (transformers 4.56; before it, torch_dtype, and dtype is
# silently ignored), SDPA's enable_gqa (torch 2.5).
for name, have_v, need in (("transformers", transformers.__version__, (4, 56)), ("torch", torch.__version__, (2, 5))):
    if major_minor(have_v) < need:
        print(f"WARNING     {name} {have_v} is older than the engine assumes ({'.'.join(map(str, need))}): expect failures")
device = sys.argv[1]
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device: nothing to check on cuda")
    p = torch.cuda.get_device_properties(torch.device(device))
    print(f"device      {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
else:
    print(f"device      {platform.machine()} CPU, {torch.get_num_threads()} torch threads")
sys.exit(1 if {"ray", "deepspeed"} & set(loaded) else 0)
EOF
  if ((env_rc)); then
    STAGES+=("environment: FAILED (exit $env_rc); nothing else ran")
  else
    STAGES+=("environment: passed")
  fi

  if ((env_rc)); then
    :
  elif [[ $KIND == cpu && $QUICK == 1 ]]; then
    echo; echo "==== engine tests on $DEVICE ===="; echo "skipped: --device cpu --quick (the unit tier runs them on CPU)"
    STAGES+=("engine tests: SKIPPED (--device cpu --quick)")
  elif "$PY" -c "import pytest" >/dev/null 2>&1; then
    RAYGEN_TEST_DEVICE=$DEVICE stage "engine tests on $DEVICE" 180 \
      "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_engine.py tests/unit/test_attention.py
  else
    echo; echo "==== engine tests on $DEVICE ===="; echo "skipped: pytest is not installed here (the parity stage still runs)"
    STAGES+=("engine tests: SKIPPED (no pytest)")
  fi

  local parity_args=(--device "$DEVICE")
  ((QUICK)) && parity_args+=(--quick)
  ((env_rc)) || stage "parity on $DEVICE" 90 "$PY" benchmarks/engine_parity.py "${parity_args[@]}"

  local bench_args=(--device "$DEVICE" --preset "$PRESET" --dtypes "$DTYPE" --requests "$REQUESTS"
                    --systems "$SYSTEMS" --no-poisson --prefix-requests 0 --out "$OUT_DIR"
                    ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"})
  ((QUICK)) && bench_args+=(--quick)
  rm -f "$OUT_DIR/engine_bench.json"
  ((env_rc)) || stage "engine_bench on $DEVICE" 600 "$PY" benchmarks/engine_bench.py "${bench_args[@]}"

  echo
  echo "==== gpu_check summary ===="
  local s failed=0
  for s in "${STAGES[@]}"; do
    echo "stage             $s"
    [[ $s == *FAILED* || $s == *TIMEOUT* ]] && failed=1
  done
  if [[ -f $OUT_DIR/engine_bench.json ]]; then
    "$PY" - "$OUT_DIR/engine_bench.json" <<'EOF' || failed=1
import json, sys

r = json.load(open(sys.argv[1]))
m = r["model"]
print(f"bench             {m['preset']} ({m['params'] / 1e6:.1f}M params) on {r['device_name']}, {r['requests']} "
      f"requests at once, outputs {r['output'][0]}-{r['output'][1]} tokens")
ok = True
for dtype, res in r["all_at_once"].items():
    g = res.get("raygen", {})
    if "tok_s" not in g:
        print(f"raygen tokens/s   failed ({dtype})")
        ok = False
        continue
    bw, vs = r["decode_bw"].get(dtype, {}), r["vs_best_static"].get(dtype)
    print(f"dtype             {dtype}")
    print(f"raygen tokens/s   {g['tok_s']:.1f}")
    print(f"% of roofline     {100 * r['roofline'][dtype]:.1f}  (ideal {r['roofline_tok_s'][dtype]:.0f} tok/s; "
          f"matmul {r['rates'][dtype]['matmul_gflops']:.0f} GFLOP/s, copy {r['rates'][dtype]['copy_gbps']:.1f} GB/s measured)")
    print(f"decode bandwidth  {100 * bw.get('of_peak', float('nan')):.1f}% of the measured copy bandwidth "
          f"({bw.get('gbps', float('nan')):.1f} GB/s of weights + K/V read over {bw.get('steps', 0)} decode-only steps)")
    if vs:
        print(f"vs transformers   {vs['ratio']:.2f}x its best static batch ({vs['system']}: {vs['tok_s']:.1f} tok/s)")
    else:
        print("vs transformers   n/a (no static batch finished)")
        ok = False
print(f"results           {sys.argv[1]}")
sys.exit(0 if ok else 1)
EOF
  else
    echo "bench             no results (the bench stage did not finish)"
    failed=1
  fi
  echo "result            $([[ $failed == 0 ]] && echo OK || echo FAILED) in $SECONDS s"
  return $failed
}

rc=0
main 2>&1 | tee "$OUT_DIR/gpu_check.log" || rc=$?
exit "$rc"
