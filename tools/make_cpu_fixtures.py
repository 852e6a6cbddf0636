#!/usr/bin/env python3
"""Dump reference tensors for the CPU backend's tests (tests/cpu/) from diffusers / transformers.

Run from anywhere, after tools/make_tiny_models.py has written tests/data/models/ (deterministic: same bytes on every
run with the same library versions; needs torch, diffusers, transformers, safetensors):

    python tools/make_cpu_fixtures.py

For each tiny model M in sd-tiny, sd-tiny-linear, sd-tiny-legacy writes tests/data/cpu/M.safetensors with

  text_ids [3, 77]            token ids (I32): <|startoftext|>, random ids below 998, <|endoftext|>, padding 999;
                              rows of 6, 21 and 77 tokens
  text_out [3, 77, D]         CLIPTextModel(ids).last_hidden_state (after final_layer_norm)
  text_out_skip1 [3, 77, D]   final_layer_norm(hidden_states[-2]) (diffusers' clip_skip=1)
  prompt_ids [2, 77], prompt_out [2, 77, D]
                              CLIPTokenizer ids (padding max_length 77) of "a photo of a cat" and
                              "An astronaut riding a horse, oil painting", and their text encoding
  unet_sample [3, 4, H, W], unet_timesteps [3] (999, 500, 1 — one call with a timestep vector),
  unet_context [3, 77, C], unet_out [3, 4, H, W]
  unet_odd_sample [2, 4, 15, 13], unet_odd_timesteps [2], unet_odd_context [2, 77, C], unet_odd_out
                              a latent size that is not a multiple of 2^upsamplers (upsample to the skip's size)
  vae_latents [2, 4, h, w]    scaled latents as a sampler produces them
  vae_out [2, 3, h*f, w*f]    AutoencoderKL.decode(latents / scaling_factor).sample

and tests/data/cpu/random-shapes.safetensors, for deeper configurations than the tiny folders, with weights that
the C++ side regenerates (carousel::cpu::RandomWeights, reimplemented bit-exactly in random_weights() below), so no
weight file is needed:

  sd15_*      UNet with SD-1.5's topology (4 levels, CrossAttnDown x3 + DownBlock2D, 2 layers per block, 8 heads,
              conv projections) at widths (32, 64, 64, 64), ctx 64; sample [2, 4, 16, 16], timesteps (981, 21)
  sd2_*       UNet with linear projections, heads per block (2, 4, 8), layers per block (1, 2, 1), transformer layers
              per block (1, 2, 1), flip_sin_to_cos false, freq_shift 1, center_input_sample; sample [2, 4, 11, 10]
  vae_*       AutoencoderKL decoder with SD's topology (4 levels, 2 layers) at widths (32, 64, 64, 64); [1, 4, 8, 8]
  clip_*      CLIP text tower, hidden 64, 3 layers, 4 heads, intermediate 128, hidden_act gelu; ids [2, 77]

Every *_out tensor is the float32 model's output; the same name with suffix "_f64" is the float64 model's output
(rounded to float32), the more exact reference the tests measure against.
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "models"
OUT = ROOT / "tests" / "data" / "cpu"


def token_rows(generator):
    rows = []
    for length in (6, 21, 77):
        body = torch.randint(0, 998, (length - 2,), generator=generator, dtype=torch.int64)
        row = torch.cat([torch.tensor([998]), body, torch.tensor([999])])
        rows.append(torch.cat([row, torch.full((77 - length,), 999, dtype=torch.int64)]))
    return torch.stack(rows)


def both(fn, module):
    """fn(module, dtype) in float32 and in float64 -> (f32 result, f64 result rounded to f32)."""
    out32 = fn(module.float(), torch.float32)
    out64 = fn(module.double(), torch.float64)
    module.float()
    return out32.float().contiguous(), out64.float().contiguous()


@torch.no_grad()
def fixtures(name):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = MODELS / name
    variant = "fp16" if name == "sd-tiny-legacy" else None
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant=variant, torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval()
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1234)
    t = {}

    ids = token_rows(g)
    t["text_ids"] = ids.to(torch.int32)
    t["text_out"], t["text_out_f64"] = both(lambda m, dt: m(ids).last_hidden_state, text)

    def skip1(m, dt):
        hidden = m(ids, output_hidden_states=True).hidden_states[-2]
        norm = m.text_model.final_layer_norm if hasattr(m, "text_model") else m.final_layer_norm
        return norm(hidden)

    t["text_out_skip1"], t["text_out_skip1_f64"] = both(skip1, text)

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    prompts = ["a photo of a cat", "An astronaut riding a horse, oil painting"]
    prompt_ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    t["prompt_ids"] = prompt_ids.to(torch.int32)
    t["prompt_out"], t["prompt_out_f64"] = both(lambda m, dt: m(prompt_ids).last_hidden_state, text)

    c = unet.config.cross_attention_dim
    size = unet.config.sample_size
    for key, shape, steps in (("unet", (3, 4, size, size), [999.0, 500.0, 1.0]), ("unet_odd", (2, 4, 15, 13), [250.0, 751.0])):
        sample = torch.randn(shape, generator=g)
        context = torch.randn((shape[0], 77, c), generator=g)
        timesteps = torch.tensor(steps)
        t[f"{key}_sample"], t[f"{key}_timesteps"], t[f"{key}_context"] = sample, timesteps, context
        t[f"{key}_out"], t[f"{key}_out_f64"] = both(
            lambda m, dt: m(sample.to(dt), timesteps.to(dt), encoder_hidden_states=context.to(dt)).sample, unet
        )

    latents = torch.randn((2, 4, 8, 8), generator=g) * vae.config.scaling_factor
    t["vae_latents"] = latents
    t["vae_out"], t["vae_out_f64"] = both(
        lambda m, dt: m.decode(latents.to(dt) / m.config.scaling_factor).sample, vae
    )
    return {k: v.contiguous() for k, v in t.items()}


SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def random_weights(seed, name, shape):
    """carousel::cpu::RandomWeights::take(name, shape) for RandomWeights(seed), bit for bit."""
    state = (seed ^ SPLITMIX_GAMMA) & MASK64
    for byte in name.encode():
        state = ((state ^ byte) * 0x100000001B3) & MASK64
    n = int(np.prod(shape)) if len(shape) else 1
    fan_in = int(np.prod(shape[1:])) if len(shape) >= 2 else 1
    k = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(state) + k * np.uint64(SPLITMIX_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0) * np.float32(2.0) - np.float32(1.0)
    norm_scale = len(shape) == 1 and name.endswith(".weight")
    bound = np.float32(1.0) / np.sqrt(np.float32(fan_in)) if len(shape) >= 2 else np.float32(0.1)
    return torch.from_numpy((np.float32(1.0 if norm_scale else 0.0) + bound * u).astype(np.float32).reshape(shape))


def with_random_weights(module, seed, prefix=""):
    state = {
        name: random_weights(seed, prefix + name, tuple(t.shape)) if t.is_floating_point() else t
        for name, t in module.state_dict().items()
    }
    module.load_state_dict(state)
    return module.eval()


@torch.no_grad()
def random_shape_fixtures():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    g = torch.Generator().manual_seed(4321)
    t = {}
    unets = {
        "sd15": (
            dict(
                block_out_channels=(32, 64, 64, 64),
                layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                attention_head_dim=8,
                cross_attention_dim=64,
                norm_num_groups=32,
            ),
            (2, 4, 16, 16),
            [981.0, 21.0],
            1515,
        ),
        "sd2": (
            dict(
                block_out_channels=(32, 64, 64),
                layers_per_block=(1, 2, 1),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                attention_head_dim=(2, 4, 8),
                transformer_layers_per_block=(1, 2, 1),
                use_linear_projection=True,
                flip_sin_to_cos=False,
                freq_shift=1,
                center_input_sample=True,
                cross_attention_dim=48,
                norm_num_groups=32,
            ),
            (2, 4, 11, 10),
            [999.0, 333.0],
            2002,
        ),
    }
    for key, (config, shape, steps, seed) in unets.items():
        unet = with_random_weights(UNet2DConditionModel(in_channels=4, out_channels=4, **config), seed)
        sample = torch.randn(shape, generator=g)
        context = torch.randn((shape[0], 77, config["cross_attention_dim"]), generator=g)
        timesteps = torch.tensor(steps)
        t[f"{key}_sample"], t[f"{key}_timesteps"], t[f"{key}_context"] = sample, timesteps, context
        t[f"{key}_out"], t[f"{key}_out_f64"] = both(
            lambda m, dt: m(sample.to(dt), timesteps.to(dt), encoder_hidden_states=context.to(dt)).sample, unet
        )

    vae = AutoencoderKL(
        block_out_channels=[32, 64, 64, 64],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
    )
    with_random_weights(vae, 8080)
    latents = torch.randn((1, 4, 8, 8), generator=g) * vae.config.scaling_factor
    t["vae_latents"] = latents
    t["vae_out"], t["vae_out_f64"] = both(lambda m, dt: m.decode(latents.to(dt) / m.config.scaling_factor).sample, vae)

    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=999,
    )
    text = CLIPTextModel(config)
    # The C++ tower asks for "text_model."-prefixed names; transformers 5 names its parameters without the prefix.
    prefix = "" if next(iter(text.state_dict())).startswith("text_model.") else "text_model."
    with_random_weights(text, 3003, prefix)
    ids = torch.randint(0, 1000, (2, 77), generator=g, dtype=torch.int64)
    t["clip_ids"] = ids.to(torch.int32)
    t["clip_out"], t["clip_out_f64"] = both(lambda m, dt: m(ids).last_hidden_state, text)
    return {k: v.contiguous() for k, v in t.items()}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = random_shape_fixtures()
    save_file(tensors, OUT / "random-shapes.safetensors", metadata={"generator": "tools/make_cpu_fixtures.py"})
    print(f"random-shapes: {len(tensors)} tensors, {(OUT / 'random-shapes.safetensors').stat().st_size / 1024:.1f} KiB")
    for name in ("sd-tiny", "sd-tiny-linear", "sd-tiny-legacy"):
        tensors = fixtures(name)
        save_file(tensors, OUT / f"{name}.safetensors", metadata={"generator": "tools/make_cpu_fixtures.py"})
        size = (OUT / f"{name}.safetensors").stat().st_size
        print(f"{name}: {len(tensors)} tensors, {size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
