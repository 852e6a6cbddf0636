"""PyTorch eager baseline for benchmarks/cuda/cuda_bench.cu: one step of diffusers' UNet2DConditionModel with the
SD-1.5 configuration (random weights, fp16, 64x64 latents, 77x768 context) at batch sizes 1, 2, 4, 8, 16, timed
with CUDA events (3 warm-up steps, then the mean of 5). diffusers' default attention processor (AttnProcessor2_0,
torch's scaled_dot_product_attention) is used, as a plain `pipe.unet(...)` would.

Run: python3 benchmarks/cuda/torch_unet.py [--batches 1,2,4,8,16] > torch.json   (one JSON object per line)
"""

import argparse
import json

import torch
from diffusers import UNet2DConditionModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--iterations", type=int, default=5)
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
        with torch.inference_mode():
            for _ in range(3):
                unet(sample, timesteps, context)
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iterations):
                unet(sample, timesteps, context)
            stop.record()
            torch.cuda.synchronize()
        ms = start.elapsed_time(stop) / args.iterations
        print(json.dumps({"batch": batch, "ms": ms, "images_per_s": batch / (ms / 1e3),
                          "device": torch.cuda.get_device_name()}), flush=True)


if __name__ == "__main__":
    main()
