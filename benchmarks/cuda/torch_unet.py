"""PyTorch eager baseline for benchmarks/cuda/cuda_bench.cu: one step of diffusers' UNet2DConditionModel with the
SD-1.5 configuration (random weights, fp16, 64x64 latents, 77x768 context) at batch sizes 1, 2, 4, 8, 16, timed
with CUDA events (3 warm-up steps, then the mean of 5). diffusers' default attention processor (AttnProcessor2_0,
torch's scaled_dot_product_attention) is used, as a plain `pipe.unet(...)` would.

With --vae it also decodes one 512x512 image (1x4x64x64 latents) with diffusers' AutoencoderKL in the SD-1.5
configuration (random weights), float32 and fp16, and prints {"vae": "fp32" | "fp16", "ms": ...} per dtype
(BM_VaeDecodeSd15's counterpart; gpu-check.sh sets NVIDIA_TF32_OVERRIDE=0, so float32 is true float32 on both sides).

With --compile it also times the same UNet through torch.compile(mode="max-autotune-no-cudagraphs"), one compiled
graph per batch size (dynamic=False), the compile and autotuning excluded (they run in the warm-up calls), and prints
{"batch": B, "mode": "compile", "ms": ..., "compile_s": ...} per batch: the anchor beside eager. Autotuning takes
minutes per batch size on an H100.

With --profile-batch B (0: off) it then profiles 3 steps at batch B with torch.profiler and prints one more line,
{"profile_batch": B, "ms": {category: ms per step}}, the GPU kernels' time in the categories of carousel's
Engine profile (cuda::OpKind), classified by kernel name (`kernel_category`).

Run: python3 benchmarks/cuda/torch_unet.py [--batches 1,2,4,8,16] [--profile-batch 8] [--vae] [--compile] > torch.json
(one JSON object per line)
"""

import argparse
import json
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel


def kernel_category(name: str) -> str:
    """carousel's OpKind name for a CUDA kernel of PyTorch / cuDNN / cuBLAS, by its name."""
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa", "softmax")):
        return "attention"
    if any(k in n for k in ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "implicit_convolve", "winograd")):
        return "conv"
    if any(k in n for k in ("gemm", "cutlass", "cublas", "matmul", "gemv", "nvjet")):
        return "gemm"  # nvjet_*: cuBLAS's Hopper GEMM kernels
    if any(k in n for k in ("group_norm", "groupnorm", "rowwisemoments", "computefusedparams")):
        return "group_norm"  # PyTorch's GroupNorm: moments, fused parameters, then an affine kernel
    if "layer_norm" in n or "layernorm" in n:
        return "layer_norm"
    if "catarray" in n:
        return "elementwise"  # torch.cat's kernel: carousel's channel concatenation counts as elementwise
    if any(k in n for k in ("nchwtonhwc", "nhwctonchw", "transpose", "direct_copy", "memcpy", "memset")):
        return "layout"
    return "elementwise"


def profile(unet, batch: int, steps: int = 3) -> dict:
    """Mean GPU kernel milliseconds per step at `batch`, by kernel_category."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    sample = torch.randn(batch, 4, 64, 64, device="cuda", dtype=torch.float16)
    timesteps = torch.full((batch,), 500, device="cuda", dtype=torch.int64)
    context = torch.randn(batch, 77, 768, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        unet(sample, timesteps, context)
        torch.cuda.synchronize()
        # CPU activity too: some PyTorch versions record no kernel events without it; the sum keeps kernels only.
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                unet(sample, timesteps, context)
            torch.cuda.synchronize()
    ms: dict = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        category = kernel_category(event.name)
        ms[category] = ms.get(category, 0.0) + event.time_range.elapsed_us() / 1e3 / steps
    return ms


def time_ms(fn, iterations: int) -> float:
    """Mean milliseconds of fn() over `iterations` calls after 3 warm-up calls, by CUDA events."""
    with torch.inference_mode():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            fn()
        stop.record()
        torch.cuda.synchronize()
    return start.elapsed_time(stop) / iterations


def vae_decode_ms(dtype: torch.dtype, iterations: int) -> float:
    """One 512x512 decode by the SD-1.5 AutoencoderKL (random weights) in `dtype`."""
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        sample_size=512,
    ).to(device="cuda", dtype=dtype).eval()
    z = torch.randn(1, 4, 64, 64, device="cuda", dtype=dtype)
    return time_ms(lambda: vae.decode(z), iterations)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--profile-batch", type=int, default=0)
    parser.add_argument("--vae", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also torch.compile(mode=max-autotune-no-cudagraphs)")
    args = parser.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8,
    ).to(device="cuda", dtype=torch.float16).eval()
    for batch in [int(b) for b in args.batches.split(",")]:
        sample = torch.randn(batch, 4, 64, 64, device="cuda", dtype=torch.float16)
        timesteps = torch.full((batch,), 500, device="cuda", dtype=torch.int64)
        context = torch.randn(batch, 77, 768, device="cuda", dtype=torch.float16)
        ms = time_ms(lambda: unet(sample, timesteps, context), args.iterations)
        print(json.dumps({"batch": batch, "ms": ms, "images_per_s": batch / (ms / 1e3),
                          "device": torch.cuda.get_device_name()}), flush=True)
    if args.compile:
        for batch in [int(b) for b in args.batches.split(",")]:
            compiled = torch.compile(unet, mode="max-autotune-no-cudagraphs", dynamic=False)
            sample = torch.randn(batch, 4, 64, 64, device="cuda", dtype=torch.float16)
            timesteps = torch.full((batch,), 500, device="cuda", dtype=torch.int64)
            context = torch.randn(batch, 77, 768, device="cuda", dtype=torch.float16)
            begin = time.perf_counter()
            with torch.inference_mode():
                compiled(sample, timesteps, context)  # compiles and autotunes for this shape
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - begin
            ms = time_ms(lambda: compiled(sample, timesteps, context), args.iterations)
            print(json.dumps({"batch": batch, "mode": "compile", "ms": ms, "compile_s": compile_s}), flush=True)
    if args.profile_batch:
        print(json.dumps({"profile_batch": args.profile_batch, "ms": profile(unet, args.profile_batch)}), flush=True)
    if args.vae:
        del unet
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            print(json.dumps({"vae": name, "ms": vae_decode_ms(dtype, args.iterations)}), flush=True)


if __name__ == "__main__":
    main()
