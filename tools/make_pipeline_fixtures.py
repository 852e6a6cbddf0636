#!/usr/bin/env python3
"""Reference images of the full text-to-image pipeline, made with diffusers' StableDiffusionPipeline.

For each case: a tiny model folder under tests/data/models (made by tools/make_tiny_models.py), a prompt, a negative
prompt, a size, a step count, a guidance scale, a sampler (DDIM, DDPM, Euler or DPM-Solver++ 2M, built from the folder's scheduler config),
an eta and a seed (torch.Generator().manual_seed(seed) on the CPU, so every request has its own generator). The image
is diffusers' own uint8 output (output_type="pil", i.e. round(clamp(x/2+0.5, 0, 1) * 255)).

Writes tests/data/pipeline/cases.json: [{"model", "prompt", ..., "width", "height", "rgb_hex"}].
Run from the repository root: python3 tools/make_pipeline_fixtures.py
"""
import json
import pathlib

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       StableDiffusionPipeline)

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "models"
OUT = ROOT / "tests" / "data" / "pipeline" / "cases.json"

CASES = [
    dict(model="sd-tiny", prompt="a red circle", negative_prompt="", width=32, height=32, steps=8, guidance=7.5,
         sampler="ddim", eta=0.0, seed=42),
    dict(model="sd-tiny", prompt="two blue squares on a yellow background", negative_prompt="blurry", width=48,
         height=32, steps=5, guidance=3.0, sampler="ddim", eta=0.5, seed=7),
    dict(model="sd-tiny", prompt="a green triangle", negative_prompt="", width=32, height=32, steps=6, guidance=1.0,
         sampler="ddpm", eta=0.0, seed=1234),
    dict(model="sd-tiny-linear", prompt="a small yellow star at the top left", negative_prompt="", width=32,
         height=32, steps=7, guidance=5.0, sampler="ddpm", eta=0.0, seed=3),
    dict(model="sd-tiny-legacy", prompt="three purple circles", negative_prompt="red", width=16, height=16,
         steps=4, guidance=7.5, sampler="ddim", eta=1.0, seed=99),
    dict(model="sd-tiny", prompt="an orange square at the bottom", negative_prompt="", width=32, height=32, steps=6,
         guidance=4.0, sampler="euler", eta=0.0, seed=5),
    dict(model="sd-tiny-linear", prompt="a white circle", negative_prompt="", width=32, height=32, steps=7,
         guidance=6.0, sampler="dpm_solver", eta=0.0, seed=11),
]


def run(case):
    folder = MODELS / case["model"]
    variant = "fp16" if (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists() and not (
        folder / "unet" / "diffusion_pytorch_model.safetensors").exists() else None
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                   variant=variant, torch_dtype=torch.float32)
    cls = dict(ddim=DDIMScheduler, ddpm=DDPMScheduler, euler=EulerDiscreteScheduler,
               dpm_solver=DPMSolverMultistepScheduler)[case["sampler"]]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {}
    if case["sampler"] == "ddim":
        kwargs["eta"] = case["eta"]
    image = pipe(prompt=case["prompt"], negative_prompt=case["negative_prompt"] or None, width=case["width"],
                 height=case["height"], num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                 generator=torch.Generator().manual_seed(case["seed"]), output_type="pil", **kwargs).images[0]
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    assert rgb.shape == (case["height"], case["width"], 3)
    return dict(case, rgb_hex=rgb.tobytes().hex())


def main():
    torch.set_num_threads(1)
    cases = [run(c) for c in CASES]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
