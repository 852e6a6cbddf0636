#!/usr/bin/env bash
# One-shot GPU check of the CUDA backend for a lent H100/H200 machine (no Debian packages, no network): 176-177 s on an
# H100 including the build (2026-11-27), plus ~30 s to start the machine:
#   1. finds nvcc, cmake (the Python environment's), ninja, cuBLAS and cuDNN (the CUDA toolkit's, else the pip wheels
#      under site-packages/nvidia/ that PyTorch uses) and unpacks .carry/deps.tar.xz (scripts/prepare-carry.sh:
#      doctest, Google Benchmark, nlohmann json, OpenBLAS for the CPU oracle; .carry/wheels holds diffusers for the
#      PyTorch baseline, installed into /tmp when the image lacks it);
#   2. builds the GPU tests and the benchmark (Release, sm_90; the per-header nvcc check runs in CI, not here);
#   3. runs the CUDA backend's tests (ctest -L "gpu|cuda", TF32 off);
#   4. runs benchmarks/cuda (carousel-bench-cuda) and benchmarks/cuda/torch_unet.py on the same GPU and writes a
#      table: per-step ms, TFLOP/s and % of the measured fp16 GEMM peak, PyTorch eager ms, speed-up; attention,
#      GroupNorm bandwidth, the host boundary's share, and how much of a VAE decode on its own stream a concurrent UNet
#      step hides (Options::concurrent_retire);
#   4b. builds the CLI (examples on, a build of its own) and draws the bundled model's picture with --device cuda and
#      --device cpu into $OUT (bundled-cuda.png, bundled-cpu.png): the main job end to end on the GPU;
#   5. runs compute-sanitizer memcheck on the test binaries in the time left, and prints the table (with the memcheck
#      and test results) last.
# Every step's timeout is cut to fit GPU_CHECK_SECONDS (default 540) in all, so the table is printed even when a step
# hangs: give the device call a timeout_s a little above it (GPU_CHECK_SECONDS=300 with 320 leaves room for reruns).
# Usage (device tool): scripts/prepare-carry.sh here, then run `bash scripts/gpu-check.sh` with carry [".carry"].
# Results land in $OUT (or /tmp/carousel-gpu-check): summary.txt, bench.json, torch.json, unet-curve-guided.csv, the
# two pictures, and logs.tar.gz (configure, build, ctest, benchmark, PyTorch, end-to-end and sanitizer logs).
set -uo pipefail
start=$(date +%s)
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# The device tool brings back at most 8 files from $OUT: the results go there, every log into $OUT/logs.tar.gz (on any
# exit, also when a timeout stops the script with SIGTERM).
final="${OUT:-/tmp/carousel-gpu-check}"
out=/tmp/carousel-gpu-work
rm -rf "$out" && mkdir -p "$out" "$final"
pack() {
  trap - EXIT
  for f in summary.txt bench.json torch.json unet-curve-guided.csv bundled-cuda.png bundled-cpu.png; do
    [ -f "$out/$f" ] && cp "$out/$f" "$final/"
  done
  tar -C "$out" -czf "$final/logs.tar.gz" . 2>/dev/null
}
trap pack EXIT
trap 'exit 143' TERM INT
log() { echo "[gpu-check +$(($(date +%s) - start))s] $*"; }
budget=${GPU_CHECK_SECONDS:-540}  # the whole check, build included; give the device call a timeout a little above
status=0

# ---- 1. tools and libraries ---------------------------------------------------------------------------------------
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || log "nvidia-smi failed"
py=$(command -v python3)
site_dirs=$("$py" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
find_in_wheels() {  # first file called $1 under site-packages/nvidia
  for s in $site_dirs; do find "$s/nvidia" -name "$1" 2>/dev/null; done | head -1
}
nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc 2>/dev/null | head -1)
[ -n "$nvcc" ] || nvcc=$(find_in_wheels nvcc)
cmake_bin=$(command -v cmake || echo "$(dirname "$py")/cmake")
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cuda_home="$(dirname "$(dirname "$nvcc")")"
cudnn_root="" cublas_root=""
if [ -f "$cuda_home/include/cudnn.h" ] && ls "$cuda_home"/lib64/libcudnn.so* >/dev/null 2>&1; then
  cudnn_root="$cuda_home"
else
  h=$(find_in_wheels cudnn.h) && [ -n "$h" ] && cudnn_root="$(dirname "$(dirname "$h")")"
fi
if ! ls "$cuda_home"/lib64/libcublas.so* >/dev/null 2>&1 || [ ! -f "$cuda_home/include/cublas_v2.h" ]; then
  h=$(find_in_wheels cublas_v2.h) && [ -n "$h" ] && cublas_root="$(dirname "$(dirname "$h")")"
fi
log "nvcc=$nvcc ($("$nvcc" --version | tail -1)) cmake=$cmake_bin cudnn=${cudnn_root} cublas=${cublas_root:-toolkit}"
carry=/tmp/carousel-carry
rm -rf "$carry" && mkdir -p "$carry" && tar -C "$carry" -xJf .carry/deps.tar.xz || {
  log "missing .carry/deps.tar.xz: run scripts/prepare-carry.sh and carry .carry"
  exit 2
}
prefix="$carry/prefix"
for d in "$cudnn_root/lib" "$cudnn_root/lib64" "$cublas_root/lib" "$cublas_root/lib64" "$prefix/lib" \
  "$cuda_home/lib64" "$cuda_home/lib"; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export CPATH="$prefix/include${CPATH:+:$CPATH}"
export NVIDIA_TF32_OVERRIDE=0  # fp32 comparisons need true fp32 (the backend asks for it too)

# ---- 2. build -----------------------------------------------------------------------------------------------------
log "configure"
"$cmake_bin" -S . -B build-gpu "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCAROUSEL_BUILD_EXAMPLES=OFF \
  -DCAROUSEL_INSTALL=OFF -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_PREFIX_PATH="$prefix" \
  -DCAROUSEL_CUDNN_ROOT="$cudnn_root" -DCAROUSEL_CUBLAS_ROOT="$cublas_root" >"$out/configure.log" 2>&1 ||
  { tail -40 "$out/configure.log"; exit 3; }
grep -E "carousel|CUDA" "$out/configure.log" | tail -5
log "build"
# The build takes 60-90 s on the 16-core H100 machine (a fresh tree rebuilds everything): at least 150 s however small
# the budget, since nothing after it can run without it.
build_timeout=$((budget - 150))
[ "$build_timeout" -lt 150 ] && build_timeout=150
timeout "$build_timeout" "$cmake_bin" --build build-gpu -j "$(nproc)" --target carousel.cuda.ops carousel.cuda.sampler carousel.cuda.models \
  carousel.cuda.host carousel-bench-cuda >"$out/build.log" 2>&1 ||
  { tail -60 "$out/build.log"; exit 4; }

# ---- 3. tests, 4. benchmarks; compute-sanitizer last, in the time that is left ------------------------------------
# Every step's timeout is cut to what the deadline leaves after reserving time for the steps that matter more, so the
# table is written even when a step hangs; memcheck (the most expendable) gets whatever remains.
time_left() { echo $((budget - ($(date +%s) - start))); }  # seconds to the deadline
step_timeout() {  # step_timeout MAX RESERVE: at most MAX seconds, leaving RESERVE seconds before the deadline
  local t=$(($(time_left) - $2))
  [ "$t" -gt "$1" ] && t=$1
  [ "$t" -lt 10 ] && t=10
  echo "$t"
}
log "GPU tests"
# ctest's own per-test timeout records a hung test as failed (for --rerun-failed); the outer one bounds the whole.
(cd build-gpu && timeout "$(step_timeout 240 210)" ctest -L "gpu|cuda" --timeout 150 --output-on-failure) 2>&1 |
  tee "$out/ctest.log" | tail -40
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  status=5
  # A kernel that faults leaves the CUDA context unusable for the rest of its process: rerun what failed without the
  # flash kernel, so that its faults do not hide the state of everything else.
  log "GPU tests failed: rerunning the failed ones with CAROUSEL_CUDA_ATTENTION=plain"
  (cd build-gpu && CAROUSEL_CUDA_ATTENTION=plain timeout "$(step_timeout 120 200)" ctest --rerun-failed --timeout 100 \
    --output-on-failure) 2>&1 | tee "$out/ctest-plain.log" | tail -30
fi

log "carousel-bench-cuda"
timeout "$(step_timeout 200 100)" build-gpu/benchmarks/cuda/carousel-bench-cuda --benchmark_out="$out/bench.json" \
  --benchmark_out_format=json >"$out/bench.txt" 2>&1 || {
  tail -20 "$out/bench.txt"
  status=7
  if ! grep -q '"BM_UNetStepSd15Fp16/batch:8' "$out/bench.json" 2>/dev/null; then
    log "benchmarks stopped early: again without the flash kernel (CAROUSEL_CUDA_ATTENTION=plain)"
    cp "$out/bench.json" "$out/bench-first.json" 2>/dev/null
    CAROUSEL_CUDA_ATTENTION=plain timeout "$(step_timeout 200 90)" build-gpu/benchmarks/cuda/carousel-bench-cuda \
      --benchmark_filter='-BM_AttentionSd15Fp16/kernel:0' --benchmark_out="$out/bench.json" \
      --benchmark_out_format=json >"$out/bench-plain.txt" 2>&1 || tail -20 "$out/bench-plain.txt"
    echo "benchmarks: rerun with CAROUSEL_CUDA_ATTENTION=plain (the first run stopped early)" >"$out/summary-note.txt"
  fi
}
log "PyTorch eager (diffusers UNet2DConditionModel)"
if ! "$py" -c 'import diffusers' 2>/dev/null; then  # the image has PyTorch, not diffusers: the carried wheel
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/carousel-site \
    .carry/wheels/*.whl && export PYTHONPATH="/tmp/carousel-site${PYTHONPATH:+:$PYTHONPATH}"
fi
PYTHONUNBUFFERED=1 timeout "$(step_timeout 150 20)" "$py" benchmarks/cuda/torch_unet.py --profile-batch 8 --vae >"$out/torch.json" \
  2>"$out/torch.err" || { tail -20 "$out/torch.err"; status=8; }
"$py" - "$out/bench.json" "$out/torch.json" "$out/unet-curve-guided.csv" >"$out/summary.txt" <<'PY'
import json, sys
bench, graph, torch, attention, overlap, boundary, group_norm, layer_norm, vae = {}, {}, {}, {}, {}, None, {}, {}, {}
torch_vae, torch_compiled = {}, {}
breakdown, torch_breakdown, searched = None, {}, {}
peak = None
def load_benchmarks(path):
    """The benchmarks of a Google Benchmark JSON file, also of one cut off by a crash or a timeout (the entries
    finished before it)."""
    text = open(path).read()
    try:
        return json.loads(text)["benchmarks"]
    except ValueError:
        cut = text.rfind("\n    }")
        return json.loads(text[:cut + 6] + "\n  ]\n}")["benchmarks"] if cut > 0 else []


try:
    for b in load_benchmarks(sys.argv[1]):
        if b.get("error_occurred") or not {"ms", "TFLOPS", "sum_ms"} & set(b):
            print(f"{b['name']}: {b.get('error_message', 'no result')}")
            continue
        if b["name"].startswith("BM_GemmPeakFp16"):
            peak = b.get("TFLOPS")
        elif b["name"].startswith("BM_AttentionSd15Fp16/kernel:"):
            kernel = int(b["name"].split("kernel:")[1].split("/")[0])
            attention[["flash", "plain"][kernel]] = b
        elif b["name"].startswith("BM_GroupNormSd15/vae:"):
            group_norm["VAE 1x512x512x128 fp32" if "vae:1" in b["name"] else "UNet 16x64x64x320 fp16"] = b
        elif b["name"].startswith("BM_VaeDecodeSd15/fp16:"):
            vae[("fp16" if "fp16:1" in b["name"] else "fp32", int(b["batch"]))] = b
        elif b["name"].startswith("BM_LayerNormSd15/level:"):
            layer_norm[int(b["name"].split("level:")[1].split("/")[0])] = b
        elif b["name"].startswith("BM_UNetBreakdownSd15Fp16/"):
            breakdown = b
        elif b["name"].startswith("BM_HostBoundarySd15"):
            boundary = b
        elif b["name"].startswith("BM_DecodeOverlapSd15/overlap:"):
            overlap["concurrent" if "overlap:1" in b["name"] else "sequential"] = b
        elif b["name"].startswith("BM_UNetStepSd15Fp16Graph/") and "batch" in b:
            graph[int(b["batch"])] = b
        elif b["name"].startswith("BM_UNetStepSd15Fp16ConvSearch/") and "batch" in b:
            searched[int(b["batch"])] = b
        elif b["name"].startswith("BM_UNetStepSd15Fp16/") and "batch" in b:
            bench[int(b["batch"])] = b
except Exception as e:  # noqa: BLE001 - print what is there
    print("no carousel benchmark results:", e)
try:
    for line in open(sys.argv[2]):
        r = json.loads(line)
        if "profile_batch" in r:
            torch_breakdown = r["ms"]
        elif "vae" in r:
            torch_vae[r["vae"]] = r["ms"]
        elif r.get("mode") == "compile":
            torch_compiled[r["batch"]] = r
        else:
            torch[r["batch"]] = r
except Exception as e:  # noqa: BLE001
    print("no PyTorch results:", e)
device = next(iter(torch.values()), {}).get("device", "?")
print(f"SD-1.5 UNet step, 64x64 latents (512x512), fp16, {device}; cuBLAS fp16 GEMM peak: "
      + (f"{peak:.0f} TFLOP/s" if peak else "n/a"))
print(f"{'batch':>5} {'carousel ms':>12} {'TFLOP/s':>8} {'% peak':>7} {'graph ms':>9} {'torch eager ms':>15} "
      f"{'speed-up':>9}")
for batch in sorted(set(bench) | set(torch)):
    b, t = bench.get(batch), torch.get(batch)
    ms = b["ms"] if b else float("nan")
    tf = b["TFLOPS"] if b else float("nan")
    pct = 100 * tf / peak if b and peak else float("nan")
    gms = graph[batch]["ms"] if batch in graph else float("nan")
    tms = t["ms"] if t else float("nan")
    print(f"{batch:>5} {ms:>12.2f} {tf:>8.1f} {pct:>6.1f}% {gms:>9.2f} {tms:>15.2f} {tms / ms:>8.2f}x")
for batch, c in sorted(torch_compiled.items()):
    base = bench[batch]["ms"] if batch in bench else float("nan")
    print(f"batch {batch} torch.compile (max-autotune-no-cudagraphs): {c['ms']:.2f} ms, carousel {base:.2f} ms "
          f"({c['ms'] / base:.2f}x; compiled in {c['compile_s']:.0f} s)")
for batch, b in sorted(searched.items()):
    base = bench[batch]["ms"] if batch in bench else float("nan")
    print(f"batch {batch} with convolution algorithms timed (cudnnFind, like cudnn.benchmark): {b['ms']:.2f} ms "
          f"(heuristic: {base:.2f} ms)")
# The serving benchmark's cost curve for guided requests (each is 2 UNet rows): batch_size = rows / 2, so that
# `carousel-bench-serving --curve unet-curve-guided.csv` replays the serving grid on this GPU's step times; with the
# float32 VAE decode of batch_size images as decode_ms when every size was measured.
curve = [(rows // 2, bench[rows]["ms"]) for rows in sorted(bench) if rows % 2 == 0]
if curve:
    with open(sys.argv[3], "w") as f:
        if all(("fp32", b) in vae for b, _ in curve):
            f.write("batch_size,step_ms,decode_ms\n"
                    + "".join(f"{b},{ms:.3f},{vae[('fp32', b)]['ms']:.3f}\n" for b, ms in curve))
        else:
            f.write("batch_size,step_ms\n" + "".join(f"{b},{ms:.3f}\n" for b, ms in curve))
    print(f"serving cost curve (guided requests per step -> ms): {sys.argv[3].rsplit('/', 1)[-1]}")
for kind, b in sorted(attention.items()):
    print(f"attention 2x8x4096x4096 (head_dim 40), {kind}: {b['ms']:.2f} ms, {b['TFLOPS']:.1f} TFLOP/s")
if breakdown:
    print(f"batch-{int(breakdown['batch'])} step's device time by op kind, ms: carousel (Engine profile) | PyTorch "
          "(its kernels, by name)")
    for kind in ("conv", "gemm", "attention", "group_norm", "layer_norm", "elementwise", "layout"):
        print(f"  {kind:>12} {breakdown.get(kind + '_ms', float('nan')):8.2f} | "
              f"{torch_breakdown.get(kind, float('nan')):8.2f}")
    print(f"  {'sum':>12} {breakdown['sum_ms']:8.2f} | {sum(torch_breakdown.values()) if torch_breakdown else float('nan'):8.2f}"
          f"   (carousel's unprofiled step: {breakdown['step_ms']:.2f} ms)")
for kind, b in sorted(group_norm.items()):
    print(f"GroupNorm+SiLU {kind}: {b['ms']:.3f} ms, {b['GBps']:.0f} GB/s = {100 * b['of_copy']:.0f}% of a copy's")
for level, b in sorted(layer_norm.items()):
    print(f"LayerNorm UNet level {level} batch 8 fp16: {b['ms']:.3f} ms, {b['GBps']:.0f} GB/s = "
          f"{100 * b['of_copy']:.0f}% of a copy's")
if boundary and 16 in bench:
    print(f"host boundary of a guided batch-8 step (16 rows in, output back): {boundary['ms']:.2f} ms = "
          f"{100 * boundary['ms'] / bench[16]['ms']:.1f}% of the batch-16 UNet step")
for dt in ("fp32", "fp16"):
    row = {b: vae[(dt, b)]["ms"] for (d, b) in vae if d == dt}
    if row:
        print(f"VAE decode of b 512x512 images, {dt}, ms: " + ", ".join(f"b={b} {ms:.1f}" for b, ms in sorted(row.items()))
              + f" (PyTorch b=1: {torch_vae.get(dt, float('nan')):.1f})")
if len(overlap) == 2:
    seq, con = overlap["sequential"], overlap["concurrent"]
    print(f"UNet step b=8 ({con['step_ms']:.1f} ms) + VAE decode 512x512 fp32 ({con['decode_ms']:.1f} ms): "
          f"one after the other {seq['ms']:.1f} ms, concurrent (retire stage) {con['ms']:.1f} ms, "
          f"{100 * con['hidden']:.0f}% of the decode hidden")
PY
[ -f "$out/summary-note.txt" ] && cat "$out/summary-note.txt" >>"$out/summary.txt"
cat "$out/summary.txt"

# The main job end to end: carousel-sd on the bundled model with --device cuda and --device cpu, both images to $OUT
# (examples on in a build of their own, so that a configure problem there costs nothing above).
if [ "$(time_left)" -gt 120 ]; then
  log "carousel-sd on the bundled model, cuda and cpu"
  e2e="failed (see e2e.log)"
  (timeout "$(step_timeout 60 50)" "$cmake_bin" -S . -B build-gpu-examples "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DCAROUSEL_BUILD_TESTS=OFF -DCAROUSEL_BUILD_BENCHMARKS=OFF -DCAROUSEL_INSTALL=OFF \
    -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_PREFIX_PATH="$prefix" -DCAROUSEL_CUDNN_ROOT="$cudnn_root" \
    -DCAROUSEL_CUBLAS_ROOT="$cublas_root" &&
    timeout "$(step_timeout 120 40)" "$cmake_bin" --build build-gpu-examples -j "$(nproc)" --target carousel-sd &&
    for d in cuda cpu; do
      timeout "$(step_timeout 60 10)" build-gpu-examples/examples/sd_cli/carousel-sd --device "$d" \
        --prompt "a red circle at the top left" --seed 7 --out "$out/bundled-$d.png" || exit 1
    done) >"$out/e2e.log" 2>&1 && e2e="bundled-cuda.png and bundled-cpu.png written"
  echo "carousel-sd --device cuda|cpu on the bundled model: $e2e" >>"$out/summary.txt"
fi
log "compute-sanitizer memcheck"
sanitizer=$(command -v compute-sanitizer || echo "$cuda_home/bin/compute-sanitizer")
: >"$out/sanitizer.log"
# (Cuda.Allocator.OutOfMemory runs out of device memory on purpose, which memcheck reports as API errors.)
for t in "carousel.cuda.sampler" "carousel.cuda.models --test-case=Cuda.Models.MatchCpu,Cuda.Models.EmptyBatch" \
  "carousel.cuda.ops --test-case=Cuda.Ops.*,Cuda.Allocator.*,Cuda.Engine.* --test-case-exclude=Cuda.Allocator.OutOfMemory"; do
  set -- $t
  if [ "$(time_left)" -lt 30 ]; then
    log "memcheck $t: skipped (out of time)"
    echo "memcheck $1: skipped (out of time)" >>"$out/summary.txt"
    continue
  fi
  timeout "$(step_timeout 150 5)" "$sanitizer" --tool memcheck --error-exitcode 9 "build-gpu/tests/cuda/$1" "${@:2}" \
    >>"$out/sanitizer.log" 2>&1
  rc=$?
  log "memcheck $t: rc=$rc"
  echo "memcheck $1: $([ $rc -eq 0 ] && echo clean || echo "rc=$rc (sanitizer.log)")" >>"$out/summary.txt"
  [ $rc -eq 0 ] || status=6
done
grep -E "ERROR SUMMARY|========= " "$out/sanitizer.log" | sort | uniq -c | head -20
echo "tests: $(grep -E "tests passed|tests failed" "$out/ctest.log" | tail -1)" >>"$out/summary.txt"
[ -f "$out/ctest-plain.log" ] &&
  echo "failed tests rerun with plain attention: $(grep -E "tests passed|tests failed" "$out/ctest-plain.log" | tail -1)" \
    >>"$out/summary.txt"
log "done (status $status)"
cat "$out/summary.txt"
exit $status
