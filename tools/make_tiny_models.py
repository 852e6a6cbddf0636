#!/usr/bin/env python3
"""Generate the tiny diffusers-format Stable Diffusion folders used by carousel's tests.

Run from the repository root (deterministic: same bytes on every run with the same library versions):

    pip install --no-deps open_clip_torch   # only for its copy of the CLIP BPE merges (bpe_simple_vocab_16e6.txt.gz)
    python tools/make_tiny_models.py [--check]

Writes (random weights from torch's default initializers after torch.manual_seed):

  tests/data/models/sd-tiny/          diffusers' current pipeline-test configuration (UNet (4, 8), CLIP hidden 8),
                                      fp32, DDIM scheduler; plus vae-legacy-names/: the same VAE with the pre-0.14
                                      attention names (query/key/value/proj_attn), not listed in model_index.json.
  tests/data/models/sd-tiny-linear/   like sd-tiny with use_linear_projection=True and attention_head_dim given per
                                      block ([2, 4]: 4 heads of dim 2 in the cross-attention blocks), fp32.
  tests/data/models/sd-tiny-legacy/   after the hub's older tiny configuration (CLIP hidden 32, intermediate 37,
                                      5 layers, 4 heads; UNet layers_per_block 2, 32 groups, cross_attention_dim 32),
                                      narrowed to stay within the fixture budget: UNet (32, 32) instead of (32, 64),
                                      VAE [8, 16] with layers_per_block 2 and 8 groups instead of [32, 64].
                                      The UNet only as the fp16 variant (diffusion_pytorch_model.fp16.safetensors),
                                      VAE and text encoder only in fp32; DDPM scheduler.
  Text encoders are stored with the 'text_model.' key prefix of real SD-1.x files; sd-tiny-legacy's also carries the
  int64 'text_model.embeddings.position_ids' buffer.
  tests/data/models/dtypes/           dtypes.safetensors (one set of values as F32, F16, BF16, F64; an I64 tensor;
                                      a scalar) and expected.json (torch's float32 conversions as bit patterns).
  tests/data/models/reference-configs/{sd15,sd21}/{unet,vae,text_encoder}/config.json and schema.json
                                      real-size configurations built on the meta device (no weights) and every
                                      parameter name and shape (SD-1.5 totals checked against the known figures).
  tests/data/models/structure.json    per model, the block layout diffusers built from each config (heads, head dim,
                                      resnets, transformer blocks) — the reference for the C++ config helpers.
  tests/data/tokenizer/clip/          the full CLIP BPE tokenizer (vocab.json with 49408 entries + merges.txt).

The tiny models share a reduced CLIP tokenizer: the first 486 merges of the real CLIP merges, vocab = 256 byte
symbols (bytes_to_unicode order), the same with '</w>', one entry per merge, then '<|startoftext|>' (998) and
'<|endoftext|>' (999), i.e. vocab_size 1000 like the text encoders.

--check reloads every folder with StableDiffusionPipeline.from_pretrained and runs two denoising steps.
"""

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clip_bpe import bytes_to_unicode, clip_merges

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "models"
TOKENIZERS = ROOT / "tests" / "data" / "tokenizer"
TINY_VOCAB = 1000
SPECIALS = ["<|startoftext|>", "<|endoftext|>"]





def build_vocab(merges):
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + SPECIALS
    return {token: i for i, token in enumerate(vocab)}


def write_tokenizer(folder, merges, with_configs):
    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(merges)
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("".join(f"{a} {b}\n" for a, b in merges))
    if with_configs:
        special = {
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        }
        config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True)
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
    return vocab


def make_pipeline(unet_kw, vae_kw, clip_kw, scheduler, seed, tokenizer_dir, vocab):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_kw)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(vae_kw["block_out_channels"]),
        up_block_types=["UpDecoderBlock2D"] * len(vae_kw["block_out_channels"]),
        latent_channels=4,
        **vae_kw,
    )
    torch.manual_seed(seed + 2)
    eos = vocab["<|endoftext|>"]
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=eos,
        pad_token_id=eos,
        **clip_kw,
    )
    text_encoder = CLIPTextModel(config)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    # Default initializers leave norm scales at 1 and many biases at 0; perturb every constant tensor so a swapped
    # weight/bias or a skipped affine step changes the output.
    torch.manual_seed(seed + 3)
    with torch.no_grad():
        for module in (unet, vae, text_encoder):
            for _, p in sorted(module.named_parameters()):
                if p.numel() == 1 or p.std() == 0:
                    p.add_(0.1 * torch.randn_like(p))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, folder, tokenizer_src):
    if folder.exists():
        shutil.rmtree(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    # Replace whatever this transformers version writes for the tokenizer by the classic SD-1.x files.
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(tokenizer_src, folder / "tokenizer")


def to_fp16_variant(component_dir):
    """Keep only diffusion_pytorch_model.fp16.safetensors, as save_pretrained(variant='fp16') of a half model writes."""
    src = component_dir / "diffusion_pytorch_model.safetensors"
    tensors = {k: v.half().contiguous() for k, v in load_file(src).items()}
    save_file(tensors, component_dir / "diffusion_pytorch_model.fp16.safetensors", metadata={"format": "pt"})
    src.unlink()


def prefix_text_model(component_dir, position_ids):
    """Rewrite the text encoder with the 'text_model.' key prefix of real SD-1.x files (transformers 5 drops it);
    optionally add the int64 'text_model.embeddings.position_ids' [1, 77] buffer that older files carry."""
    path = component_dir / "model.safetensors"
    tensors = {"text_model." + k: v for k, v in load_file(path).items()}
    if position_ids:
        tensors["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    save_file(tensors, path, metadata={"format": "pt"})


def write_legacy_vae_names(vae_dir, out_dir):
    """Copy a VAE folder, renaming attention tensors to diffusers' pre-0.14 names (query/key/value/proj_attn)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(vae_dir / "config.json", out_dir / "config.json")
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    tensors = {}
    for name, value in load_file(vae_dir / "diffusion_pytorch_model.safetensors").items():
        for new, old in renames.items():
            if ".attentions." in name and new in name:
                name = name.replace(new, old)
        tensors[name] = value
    save_file(tensors, out_dir / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})


def write_dtype_fixture(folder):
    """dtypes.safetensors: the same values stored as F32, F16, BF16, F64 (+ an I64 tensor), and expected.json with
    torch's float32 conversion of each, as uint32 bit patterns (exact; NaN payloads included)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    special = [0.0, -0.0, 1.0, -2.5, 65504.0, 1e-8, 6e-8, 6.1e-5, 3.4e38, float("inf"), float("-inf"), float("nan")]
    values = torch.cat([torch.tensor(special, dtype=torch.float64), torch.randn(52, dtype=torch.float64) * 100])
    tensors = {
        "f32": values.float().reshape(4, 16),
        "f16": values.half().reshape(4, 16),
        "bf16": values.bfloat16().reshape(2, 2, 16),
        "f64": values.reshape(64),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(0.5, dtype=torch.float32),
    }
    save_file(tensors, folder / "dtypes.safetensors", metadata={"format": "pt"})  # one key: Rust's HashMap order varies
    expected = {}
    for name, t in tensors.items():
        if t.is_floating_point():
            f = t.float().contiguous()
            expected[name] = {"shape": list(t.shape), "bits": f.view(torch.int32).flatten().tolist()}
    for entry in expected.values():
        entry["bits"] = [b & 0xFFFFFFFF for b in entry["bits"]]
    (folder / "expected.json").write_text(json.dumps(expected) + "\n")


def structure(unet, vae, te):
    """What diffusers / transformers actually built from each config: heads, head dims, resnets and transformer
    blocks per UNet block, VAE decoder layout, CLIP layout. The C++ config helpers are tested against this."""

    def attn_heads(block):
        if not hasattr(block, "attentions"):
            return None
        a = block.attentions[0].transformer_blocks[0].attn1
        return [a.heads, a.inner_dim // a.heads, len(block.attentions[0].transformer_blocks)]

    return {
        "unet": {
            "down": [[len(b.resnets), attn_heads(b)] for b in unet.down_blocks],
            "mid": attn_heads(unet.mid_block),
            "up": [[len(b.resnets), attn_heads(b), b.resnets[0].conv1.out_channels] for b in unet.up_blocks],
            "time_embed_dim": unet.time_embedding.linear_1.out_features,
            "linear_proj": isinstance(unet.mid_block.attentions[0].proj_in, torch.nn.Linear),
        },
        "vae": {
            "up": [[len(b.resnets), b.resnets[0].conv1.out_channels] for b in vae.decoder.up_blocks],
            "latent": vae.config.latent_channels,
        },
        "text_encoder": {
            "layers": len(te.encoder.layers),
            "heads": te.encoder.layers[0].self_attn.num_heads,
            "head_dim": te.encoder.layers[0].self_attn.head_dim,
        },
    }


def write_reference_configs():
    """Real-size configurations (SD-1.5, SD-2.1) built on the meta device — no weights — written as config.json files
    under models/reference-configs/<name>/<component>/, with schema.json: every parameter name and shape
    (text encoder names with the 'text_model.' prefix). Returns their structure() for structure.json."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae_kw = dict(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        sample_size=512,
    )
    unet_sd15 = dict(
        cross_attention_dim=768,
        sample_size=64,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    )
    configs = {
        "sd15": (
            unet_sd15,
            dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu", projection_dim=768),
        ),
        "sd21": (
            dict(unet_sd15, cross_attention_dim=1024, sample_size=96, attention_head_dim=[5, 10, 20, 20],
                 use_linear_projection=True, upcast_attention=True),
            dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 hidden_act="gelu", projection_dim=512),
        ),
    }
    out = {}
    for name, (unet_kw, clip_kw) in configs.items():
        folder = MODELS / "reference-configs" / name
        with torch.device("meta"):
            unet = UNet2DConditionModel(**unet_kw)
            vae = AutoencoderKL(**vae_kw)
            te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **clip_kw))
        unet.save_config(folder / "unet")
        vae.save_config(folder / "vae")
        (folder / "text_encoder").mkdir(parents=True, exist_ok=True)
        te.config.to_json_file(folder / "text_encoder" / "config.json")
        schema = {
            "unet": {k: list(v.shape) for k, v in unet.state_dict().items()},
            "vae": {k: list(v.shape) for k, v in vae.state_dict().items()},
            "text_encoder": {"text_model." + k: list(v.shape) for k, v in te.state_dict().items()},
        }
        if name == "sd15":  # the totals the numerics reference gives for SD-1.5
            count = {c: sum(math.prod(s) for s in t.values()) for c, t in schema.items()}
            assert count["unet"] == 859520964 and len(schema["unet"]) == 686, count
            assert count["vae"] == 83653863, count
            assert count["text_encoder"] == 123060480 and len(schema["text_encoder"]) == 196, count
        (folder / "schema.json").write_text(json.dumps(schema, indent=0, sort_keys=True) + "\n")
        out[name] = structure(unet, vae, te)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="reload each folder in diffusers and run 2 steps")
    args = parser.parse_args()

    from diffusers import DDIMScheduler, DDPMScheduler

    merges = clip_merges()
    write_tokenizer(TOKENIZERS / "clip", merges, with_configs=False)
    tiny_merges = merges[: TINY_VOCAB - 512 - len(SPECIALS)]
    tiny_tok = MODELS / ".tokenizer-tiny"
    vocab = write_tokenizer(tiny_tok, tiny_merges, with_configs=True)
    assert len(vocab) == TINY_VOCAB

    sd_schedule = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    tiny_unet = dict(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    tiny_vae = dict(block_out_channels=[4, 8], norm_num_groups=2, layers_per_block=1, sample_size=32)
    tiny_clip = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2)

    models = {
        "sd-tiny": make_pipeline(
            tiny_unet,
            tiny_vae,
            tiny_clip,
            DDIMScheduler(**sd_schedule, set_alpha_to_one=False),
            0,
            tiny_tok,
            vocab,
        ),
        "sd-tiny-linear": make_pipeline(
            dict(tiny_unet, use_linear_projection=True, attention_head_dim=[2, 4]),
            tiny_vae,
            tiny_clip,
            DDIMScheduler(**sd_schedule, set_alpha_to_one=False),
            10,
            tiny_tok,
            vocab,
        ),
        "sd-tiny-legacy": make_pipeline(
            dict(
                block_out_channels=(32, 32),
                layers_per_block=2,
                sample_size=8,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
            ),
            dict(block_out_channels=[8, 16], layers_per_block=2, norm_num_groups=8, sample_size=16),
            dict(hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4),
            DDPMScheduler(**sd_schedule),
            20,
            tiny_tok,
            vocab,
        ),
    }
    for name, pipe in models.items():
        save_pipeline(pipe, MODELS / name, tiny_tok)
    expected = {name: structure(pipe.unet, pipe.vae, pipe.text_encoder) for name, pipe in models.items()}
    expected.update(write_reference_configs())
    (MODELS / "structure.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    for name in models:
        prefix_text_model(MODELS / name / "text_encoder", position_ids=name == "sd-tiny-legacy")
    to_fp16_variant(MODELS / "sd-tiny-legacy" / "unet")
    write_legacy_vae_names(MODELS / "sd-tiny" / "vae", MODELS / "sd-tiny" / "vae-legacy-names")
    shutil.rmtree(tiny_tok)
    write_dtype_fixture(MODELS / "dtypes")

    if args.check:
        check(list(models))


def check(names):
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    for name in names:
        folder = MODELS / name
        variant = "fp16" if name == "sd-tiny-legacy" else None
        pipe = StableDiffusionPipeline.from_pretrained(folder, variant=variant, torch_dtype=torch.float32)
        stored = load_file(folder / "text_encoder" / "model.safetensors")
        for k, v in pipe.text_encoder.state_dict().items():
            assert torch.equal(stored["text_model." + k], v), f"{name}: text encoder tensor {k} not loaded"
        image = pipe("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
        assert ids[0] == 998 and ids[-1] == 999, ids
        print(f"{name}: image {image.shape}, finite={bool((image == image).all())}, ids[:8]={ids[:8]}")
    legacy = AutoencoderKL.from_pretrained(MODELS / "sd-tiny" / "vae-legacy-names")
    current = AutoencoderKL.from_pretrained(MODELS / "sd-tiny" / "vae")
    for (k, a), (_, b) in zip(sorted(legacy.state_dict().items()), sorted(current.state_dict().items())):
        assert torch.equal(a, b), k
    print("vae-legacy-names: loads in diffusers with the same weights as sd-tiny/vae")
    full = CLIPTokenizer.from_pretrained(TOKENIZERS / "clip")
    print("full tokenizer:", full("a photo of a cat").input_ids)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
