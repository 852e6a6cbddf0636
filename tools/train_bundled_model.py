#!/usr/bin/env python3
"""Train carousel's bundled text-to-image model ("shapes-32") from scratch and save it in diffusers layout.

Model: a pixel-space (no VAE) conditional diffusion model on 32x32 RGB images of coloured shapes
(tools/shapes_dataset.py): a small diffusers UNet2DConditionModel conditioned by a small transformers CLIPTextModel
trained jointly from scratch, with the real CLIP BPE tokenizer (vocab 49408, built from open_clip_torch's
bpe_simple_vocab_16e6.txt.gz). Scheduler: DDIMScheduler, squaredcos_cap_v2 betas, v_prediction, trailing spacing.
Classifier-free guidance training: 10% of captions are replaced by the empty prompt. Loss: v-prediction MSE with
Min-SNR-5 weighting (without it the UNet ignored the caption for the first ~1500 steps; with it colours follow the
prompt after ~600). AdamW lr 1e-3, 200 warm-up steps, cosine decay to 1e-4 over the time budget; EMA 0.999.

Output folder (default models/shapes-32):
    model_index.json  scheduler/scheduler_config.json  tokenizer/{vocab.json,merges.txt,...}
    text_encoder/{config.json,model.safetensors}  unet/{config.json,diffusion_pytorch_model.safetensors}
Weights are stored as fp16 tensors (EMA of the trained weights). There is no vae/: the UNet works on pixels in
[-1, 1]; an image is clamp(x * 0.5 + 0.5, 0, 1) * 255.

Run (CPU, in the background; checkpoints the folder every --save-every minutes, stops after --minutes):
    nohup nice -n 10 python tools/train_bundled_model.py > /tmp/train.log 2>&1 &      # the shipped run (66 min)
    python tools/train_bundled_model.py --bench            # time a few iterations and exit
    python tools/train_bundled_model.py --roundtrip-only   # reload the saved folder with diffusers, write the grid
The round-trip check (always run after training) loads every component with diffusers / transformers
from_pretrained(torch_dtype=float32), samples a grid with DDIM and writes docs/img/bundled-model-grid.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes_dataset  # noqa: E402
from clip_bpe import bytes_to_unicode, clip_merges  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "models", "shapes-32")
DEFAULT_GRID = os.path.join(REPO, "docs", "img", "bundled-model-grid.png")
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 2.0
TRAIN_SEED = 1000
GRID_PROMPTS = [
    "a red circle", "a blue square", "a green triangle", "a yellow circle",
    "two purple squares", "three red triangles", "two black circles", "three blue squares",
    "a green triangle at the top left", "a red square at the bottom right", "a blue circle in the center",
    "a purple triangle at the top right", "a yellow square on a blue background",
    "two red circles on a yellow background", "a black triangle on a green background",
    "a green circle at the bottom left on a purple background",
]


# ----------------------------------------------------------------------------------------------- tokenizer files
def write_tokenizer(folder: str) -> None:
    """Write the full CLIP tokenizer (vocab 49408) in transformers' CLIPTokenizer layout."""
    merges = clip_merges()
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                   "clean_up_tokenization_spaces": True, **special}, f, indent=2)


# ----------------------------------------------------------------------------------------------- model definition
def make_models(args: argparse.Namespace):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=args.text_hidden, intermediate_size=2 * args.text_hidden,
        num_hidden_layers=args.text_layers, num_attention_heads=args.text_heads, max_position_embeddings=77,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=args.text_hidden,
    )
    text_encoder = CLIPTextModel(text_cfg)
    ch = tuple(int(c) for c in args.channels.split(","))
    n_attn = args.attn_levels  # cross-attention only at the lowest resolutions: 16x16 attention triples CPU cost
    unet = UNet2DConditionModel(
        sample_size=shapes_dataset.SIZE, in_channels=3, out_channels=3, block_out_channels=ch,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * (len(ch) - n_attn) + ("CrossAttnDownBlock2D",) * n_attn,
        up_block_types=("CrossAttnUpBlock2D",) * n_attn + ("UpBlock2D",) * (len(ch) - n_attn),
        cross_attention_dim=args.text_hidden, attention_head_dim=args.heads, norm_num_groups=args.groups,
    )
    return text_encoder, unet


def scheduler_config() -> dict:
    return {
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction", "timestep_spacing": "trailing", "steps_offset": 0,
        "clip_sample": False, "set_alpha_to_one": True, "rescale_betas_zero_snr": False,
    }


def count_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------------------------- saving / loading
def save_folder(out: str, text_encoder, unet) -> None:
    """Write the complete diffusers-layout folder with fp16 weights (copies, the trained models stay fp32)."""
    import diffusers
    from diffusers import DDIMScheduler

    os.makedirs(out, exist_ok=True)
    write_tokenizer(os.path.join(out, "tokenizer"))
    DDIMScheduler(**scheduler_config()).save_pretrained(os.path.join(out, "scheduler"))
    copy.deepcopy(text_encoder).half().save_pretrained(os.path.join(out, "text_encoder"))
    copy.deepcopy(unet).half().save_pretrained(os.path.join(out, "unet"))
    index = {
        "_class_name": "CarouselPixelPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


def load_folder(folder: str):
    """Load (tokenizer, text_encoder, unet, scheduler) from a saved folder with diffusers / transformers, float32."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), torch_dtype=torch.float32)
    scheduler = DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
    text_encoder.eval()
    unet.eval()
    return tokenizer, text_encoder, unet, scheduler


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def generate(parts, prompts: list[str], steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
             seed: int = 0, batch: int = 50) -> np.ndarray:
    """NxHxWx3 uint8 images, the way carousel's pipeline makes them: prompt i uses
    torch.Generator().manual_seed(seed + i) for its initial noise, DDIM eta 0, CFG with the empty prompt."""
    tokenizer, text_encoder, unet, scheduler = parts
    uncond = text_encoder(tokenize(tokenizer, [""]))[0]
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        n = len(chunk)
        cond = text_encoder(tokenize(tokenizer, chunk))[0]
        ctx = torch.cat([uncond.expand(n, -1, -1), cond])
        x = torch.cat([torch.randn((1, 3, shapes_dataset.SIZE, shapes_dataset.SIZE),
                                   generator=torch.Generator().manual_seed(seed + start + i)) for i in range(n)])
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            pred = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
            pu, pc = pred.chunk(2)
            x = scheduler.step(pu + guidance * (pc - pu), t, x).prev_sample
        img = ((x.clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.append(img)
    return np.concatenate(out)


def save_grid(images: np.ndarray, path: str, cols: int = 8, scale: int = 2) -> None:
    from PIL import Image

    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = im
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def roundtrip(folder: str, grid_path: str) -> None:
    """Reload the folder with diffusers/transformers and sample GRID_PROMPTS with DDIM into a grid PNG."""
    parts = load_folder(folder)
    ids = tokenize(parts[0], ["a red circle"])[0].tolist()
    assert ids[0] == 49406 and ids[-1] == 49407, ids
    t0 = time.time()
    images = generate(parts, GRID_PROMPTS, seed=0)
    dt = time.time() - t0
    save_grid(images, grid_path)
    print(f"roundtrip: loaded {folder} with diffusers; {len(GRID_PROMPTS)} images, {DEFAULT_STEPS} DDIM steps, "
          f"guidance {DEFAULT_GUIDANCE}: {dt:.1f}s -> {grid_path}", flush=True)
    for i, p in enumerate(GRID_PROMPTS):
        print(f"  [{i // 8},{i % 8}] {p}")


# ----------------------------------------------------------------------------------------------- training
def train(args: argparse.Namespace) -> None:
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

    torch.manual_seed(args.seed)
    tok_dir = os.path.join(args.out, "tokenizer")
    write_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)

    t0 = time.time()
    samples = shapes_dataset.make_samples(TRAIN_SEED, args.dataset_size)
    images = torch.from_numpy(np.stack([shapes_dataset.render(s) for s in samples])).permute(0, 3, 1, 2).contiguous()
    captions = sorted({s.caption for s in samples})
    cap_index = {c: i + 1 for i, c in enumerate(captions)}  # 0 is the empty prompt
    sample_cap = torch.tensor([cap_index[s.caption] for s in samples])
    all_ids = tokenize(tokenizer, [""] + captions)
    print(f"dataset: {len(samples)} images, {len(captions)} distinct captions ({time.time() - t0:.1f}s)", flush=True)

    text_encoder, unet = make_models(args)
    print(f"params: unet {count_params(unet):,}  text_encoder {count_params(text_encoder):,}", flush=True)
    ema_te, ema_unet = make_models(args)
    ema_te.load_state_dict(text_encoder.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    for p in list(ema_te.parameters()) + list(ema_unet.parameters()):
        p.requires_grad_(False)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    ema_params = list(ema_te.parameters()) + list(ema_unet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    sched = DDIMScheduler(**scheduler_config())
    abar = sched.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(args.seed)

    budget = args.minutes * 60.0
    start = time.time()
    last_save = start
    step = 0
    loss_avg = None
    while True:
        elapsed = time.time() - start
        if (args.max_steps and step >= args.max_steps) or (not args.max_steps and elapsed >= budget):
            break
        frac = step / args.max_steps if args.max_steps else elapsed / budget
        warm = min(1.0, (step + 1) / 200)
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr

        idx = torch.randint(0, len(samples), (args.batch,), generator=gen)
        x0 = images[idx].float() / 127.5 - 1.0
        cap = sample_cap[idx].clone()
        cap[torch.rand(args.batch, generator=gen) < 0.1] = 0
        uniq, inv = torch.unique(cap, return_inverse=True)
        ctx = text_encoder(all_ids[uniq])[0][inv]

        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        pred = unet(xt, t, encoder_hidden_states=ctx).sample
        if args.min_snr > 0:
            # Min-SNR-gamma weighting (Hang et al. 2023) in its v-prediction form: converges faster
            snr = abar[t] / (1 - abar[t])
            w = snr.clamp(max=args.min_snr) / (snr + 1)
            loss = (w * ((pred - v) ** 2).mean(dim=(1, 2, 3))).mean()
        else:
            loss = torch.nn.functional.mse_loss(pred, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema_params, decay)
            torch._foreach_add_(ema_params, [p.detach() for p in params], alpha=1 - decay)
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        if step % 50 == 0 or args.bench:
            el = time.time() - start
            print(f"step {step} loss {loss_avg:.4f} lr {lr:.2e} {el / step:.3f}s/it elapsed {el / 60:.1f}min",
                  flush=True)
        if args.bench and step >= args.bench_steps:
            return
        if time.time() - last_save > args.save_every * 60:
            save_folder(args.out, ema_te, ema_unet)
            last_save = time.time()
            print(f"saved checkpoint at step {step}", flush=True)

    save_folder(args.out, ema_te, ema_unet)
    total = time.time() - start
    with open(os.path.join(args.log_dir, "train_summary.json"), "w") as f:
        json.dump({"steps": step, "seconds": total, "batch": args.batch, "final_loss_ema": loss_avg,
                   "unet_params": count_params(unet), "text_encoder_params": count_params(text_encoder),
                   "threads": torch.get_num_threads(), "args": vars(args)}, f, indent=2)
    print(f"done: {step} steps in {total / 60:.1f} min, loss {loss_avg:.4f}; saved {args.out}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--grid", default=DEFAULT_GRID)
    ap.add_argument("--minutes", type=float, default=66.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=0, help="train this many steps instead of a time budget")
    ap.add_argument("--save-every", type=float, default=8.0, help="minutes between checkpoints of --out")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR-gamma loss weighting (0: plain MSE)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset-size", type=int, default=60000)
    ap.add_argument("--channels", default="16,32,64")
    ap.add_argument("--attn-levels", type=int, default=1, help="resolution levels with cross-attention")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--text-hidden", type=int, default=64)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--text-heads", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="1 beats 2 on a busy 2-core machine")
    ap.add_argument("--log-dir", default="/tmp")
    ap.add_argument("--bench", action="store_true", help="time --bench-steps iterations and exit")
    ap.add_argument("--bench-steps", type=int, default=6)
    ap.add_argument("--roundtrip-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.roundtrip_only:
        train(args)
        if args.bench:
            return
    roundtrip(args.out, args.grid)


if __name__ == "__main__":
    main()
