#!/usr/bin/env python3
"""Single-file (original LDM layout) checkpoints written from the tiny diffusers folders, for carousel's
single-file loader tests.

Run from the repository root after tools/make_tiny_models.py:

    python tools/make_single_file_fixtures.py

Writes tests/data/models/single-file/:
  sd1-tiny.safetensors          tests/data/models/sd-tiny in the SD-1.x layout (model.diffusion_model.*,
                                first_stage_model.*, cond_stage_model.transformer.text_model.*), float32, a "full"
                                file: it also holds EMA weights (model_ema.<flattened name>, other values than the
                                UNet's), model_ema.decay / num_updates and the LDM schedule buffers (betas,
                                alphas_cumprod, ...), which a loader must skip.
  sd1-tiny-ema-fp16.safetensors the same, EMA-only (no model_ema.*, as pruned files ship), float16.
  sd1-tiny-bf16.safetensors     the same, bfloat16.
  sd2-tiny.safetensors          tests/data/models/sd-tiny-linear in the SD-2.x layout: the text encoder as
                                OpenCLIP (cond_stage_model.model.*, q/k/v fused into attn.in_proj_weight/bias,
                                text_projection), float32.

  sd15-ldm-shapes.json, sd21-ldm-shapes.json
                                {LDM name: shape} of real-size SD 1.5 and SD 2.1 single files (from
                                tests/data/models/reference-configs/*/schema.json; SD 2.1 with OpenCLIP's 24th block),
                                for the tests of the family detection at real size (no weights).

Checks, for every file: diffusers' own conversion functions (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint / convert_open_clip_checkpoint from
diffusers.loaders.single_file_utils) map the file back to exactly the folder's tensors (cast to the file's dtype),
key by key; then StableDiffusionPipeline.from_single_file(file, config=<folder>, local_files_only=True) is tried
offline and its state dicts are compared too (the script reports when diffusers cannot run it offline).
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "data" / "models"
OUT = MODELS / "single-file"

RESNET_RENAMES = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def resnet_part(rest):
    head, _, tail = rest.partition(".")
    return dict(RESNET_RENAMES)[head] + "." + tail


def unet_to_ldm(name, config):
    """The LDM name of a diffusers UNet2DConditionModel parameter (the inverse of convert_ldm_unet_checkpoint)."""
    per = config["layers_per_block"] + 1
    fixed = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
             "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for old, new in fixed.items():
        if name.startswith(old):
            return new + name[len(old):]
    parts = name.split(".")
    if parts[0] == "down_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "resnets":
            return f"input_blocks.{1 + b * per + int(parts[3])}.0." + resnet_part(".".join(parts[4:]))
        if kind == "attentions":
            return f"input_blocks.{1 + b * per + int(parts[3])}.1." + ".".join(parts[4:])
        if kind == "downsamplers":
            return f"input_blocks.{1 + b * per + per - 1}.0.op." + ".".join(parts[5:])
    if parts[0] == "mid_block":
        index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(parts[1], parts[2])]
        rest = ".".join(parts[3:])
        return f"middle_block.{index}." + (resnet_part(rest) if parts[1] == "resnets" else rest)
    if parts[0] == "up_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "resnets":
            return f"output_blocks.{b * per + int(parts[3])}.0." + resnet_part(".".join(parts[4:]))
        if kind == "attentions":
            return f"output_blocks.{b * per + int(parts[3])}.1." + ".".join(parts[4:])
        if kind == "upsamplers":
            has_attention = config["up_block_types"][b].startswith("CrossAttn")
            return f"output_blocks.{b * per + per - 1}.{2 if has_attention else 1}.conv." + ".".join(parts[5:])
    raise ValueError(name)


def vae_to_ldm(name, value, config):
    """The LDM name (and value: attention projections as 1x1 convolutions) of a diffusers AutoencoderKL tensor."""
    n = len(config["block_out_channels"])
    parts = name.split(".")
    side = parts[0]
    if side in ("quant_conv", "post_quant_conv"):
        return name, value
    rest = ".".join(parts[1:])
    for old, new in (("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("conv_norm_out.", "norm_out.")):
        if rest.startswith(old):
            return f"{side}.{new}{rest[len(old):]}", value
    if parts[1] in ("down_blocks", "up_blocks"):
        i = int(parts[2]) if side == "encoder" else n - 1 - int(parts[2])
        ldm = "down" if side == "encoder" else "up"
        if parts[3] == "resnets":
            tail = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.{ldm}.{i}.block.{parts[4]}.{tail}", value
        sampler = "downsample" if side == "encoder" else "upsample"
        return f"{side}.{ldm}.{i}.{sampler}.conv.{parts[-1]}", value
    if parts[1] == "mid_block" and parts[2] == "resnets":
        tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
        return f"{side}.mid.block_{int(parts[3]) + 1}.{tail}", value
    if parts[1] == "mid_block" and parts[2] == "attentions":
        tail = ".".join(parts[4:])
        for old, new in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                         ("to_out.0.", "proj_out.")):
            if tail.startswith(old):
                tail = new + tail[len(old):]
        if value.dim() == 2:
            value = value[:, :, None, None]
        return f"{side}.mid.attn_1.{tail}", value
    raise ValueError(name)


def clip_to_openclip(text):
    """A transformers CLIPTextModel state dict (text_model.* names) in OpenCLIP's layout (q/k/v fused)."""
    out = {}
    layers = sorted({int(k.split(".")[3]) for k in text if k.startswith("text_model.encoder.layers.")})
    for k, v in text.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.split(".")[-1]] = v
    for i in layers:
        p = f"text_model.encoder.layers.{i}."
        q = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[q + f"attn.in_proj_{kind}"] = torch.cat([text[p + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[q + f"attn.out_proj.{kind}"] = text[p + f"self_attn.out_proj.{kind}"]
            out[q + f"ln_1.{kind}"] = text[p + f"layer_norm1.{kind}"]
            out[q + f"ln_2.{kind}"] = text[p + f"layer_norm2.{kind}"]
            out[q + f"mlp.c_fc.{kind}"] = text[p + f"mlp.fc1.{kind}"]
            out[q + f"mlp.c_proj.{kind}"] = text[p + f"mlp.fc2.{kind}"]
    hidden = text["text_model.final_layer_norm.weight"].shape[0]
    torch.manual_seed(5)
    out["text_projection"] = torch.randn(hidden, hidden)
    out["logit_scale"] = torch.tensor(4.6)
    return out


def components(folder):
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    text = load_file(folder / "text_encoder" / "model.safetensors")
    text = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.items()}
    return unet_cfg, vae_cfg, unet, vae, text


def ldm_file(folder, open_clip, ema, dtype):
    unet_cfg, vae_cfg, unet, vae, text = components(folder)
    out = {}
    for k, v in unet.items():
        out["model.diffusion_model." + unet_to_ldm(k, unet_cfg)] = v
    for k, v in vae.items():
        name, value = vae_to_ldm(k, v, vae_cfg)
        out["first_stage_model." + name] = value
    if open_clip:
        out.update({"cond_stage_model.model." + k: v for k, v in clip_to_openclip(text).items()})
    else:
        out.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    if ema:
        torch.manual_seed(11)
        for k in sorted(unet):
            flat = "model_ema." + "".join(("model.diffusion_model." + unet_to_ldm(k, unet_cfg)).split(".")[1:])
            out[flat] = unet[k] + 0.01 * torch.randn_like(unet[k])
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        out["betas"] = betas.float()
        out["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    out = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in out.items()}
    return out


def check_with_diffusers(path, folder, open_clip, dtype):
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, unet, vae, text = components(folder)
    ckpt = load_file(path)
    cast = lambda d: {k: v.to(dtype) for k, v in d.items()}  # noqa: E731
    got_unet = sfu.convert_ldm_unet_checkpoint(ckpt, unet_cfg)
    got_vae = sfu.convert_ldm_vae_checkpoint(ckpt, vae_cfg)
    if open_clip:
        model = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        got_text = {"text_model." + k if not k.startswith("text_model.") else k: v
                    for k, v in sfu.convert_open_clip_checkpoint(model, ckpt).items() if k != "text_projection.weight"}
    else:
        got_text = sfu.convert_ldm_clip_checkpoint(ckpt)
    for what, got, want in (("unet", got_unet, cast(unet)), ("vae", got_vae, cast(vae)), ("text", got_text, cast(text))):
        assert sorted(got) == sorted(want), (what, sorted(set(got) ^ set(want))[:10])
        for k in want:
            assert torch.equal(got[k].reshape(want[k].shape), want[k]), (what, k)
    print(f"  {path.name}: diffusers' conversion functions give the folder's tensors, key by key")

    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                        torch_dtype=dtype, safety_checker=None)
    except Exception as e:  # noqa: BLE001 — report why diffusers cannot run it offline
        print(f"  {path.name}: from_single_file(config=folder) did not run offline: {type(e).__name__}: {e}")
        return
    for what, module, want in (("unet", pipe.unet, unet), ("vae", pipe.vae, vae)):
        state = module.state_dict()
        for k, v in want.items():
            assert torch.equal(state[k], v.to(dtype)), (what, k)
    print(f"  {path.name}: from_single_file(config=folder) loads the folder's UNet and VAE tensors")


def write_reference_shapes():
    """Real-size LDM names and shapes from the reference schemas, checked with diffusers' conversion functions on
    meta tensors (names and shapes back to the schema)."""
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    ref = MODELS / "reference-configs"
    for name, open_clip in (("sd15", False), ("sd21", True)):
        schema = json.loads((ref / name / "schema.json").read_text())
        unet_cfg = json.loads((ref / name / "unet" / "config.json").read_text())
        vae_cfg = json.loads((ref / name / "vae" / "config.json").read_text())
        meta = {c: {k: torch.empty(v, device="meta") for k, v in schema[c].items()} for c in schema}
        out = {"model.diffusion_model." + unet_to_ldm(k, unet_cfg): v for k, v in meta["unet"].items()}
        for k, v in meta["vae"].items():
            ldm, value = vae_to_ldm(k, v, vae_cfg)
            out["first_stage_model." + ldm] = value
        text = {k: v for k, v in meta["text_encoder"].items() if not k.endswith("position_ids")}
        if open_clip:
            layers = CLIPTextConfig.from_pretrained(ref / name / "text_encoder").num_hidden_layers
            last = f"text_model.encoder.layers.{layers - 1}."
            extra = {k.replace(last, f"text_model.encoder.layers.{layers}."): v for k, v in text.items() if k.startswith(last)}
            converted = {k: v for k, v in clip_to_openclip({**text, **extra}).items()}
            converted["text_projection"] = torch.empty(schema["text_encoder"]["text_model.final_layer_norm.weight"] * 2,
                                                       device="meta")
            out.update({"cond_stage_model.model." + k: v for k, v in converted.items()})
        else:
            out.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
        got_unet = sfu.convert_ldm_unet_checkpoint(out, unet_cfg)
        got_vae = sfu.convert_ldm_vae_checkpoint(out, vae_cfg)
        if open_clip:
            model = CLIPTextModel(CLIPTextConfig.from_pretrained(ref / name / "text_encoder")).to("meta")
            got_text = {k: v for k, v in sfu.convert_open_clip_checkpoint(model, out).items()
                        if k != "text_projection.weight"}
        else:
            got_text = sfu.convert_ldm_clip_checkpoint(out)
        for what, got, want in (("unet", got_unet, meta["unet"]), ("vae", got_vae, meta["vae"]), ("text", got_text, text)):
            assert sorted(got) == sorted(want), (name, what, sorted(set(got) ^ set(want))[:10])
            for k in want:
                assert got[k].numel() == want[k].numel(), (name, what, k)
        path = OUT / f"{name}-ldm-shapes.json"
        path.write_text(json.dumps({k: list(v.shape) for k, v in sorted(out.items())}) + "\n")
        print(f"{path.relative_to(ROOT)}: {len(out)} tensors; diffusers' conversion gives the schema back")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    files = [("sd1-tiny.safetensors", "sd-tiny", False, True, torch.float32),
             ("sd1-tiny-ema-fp16.safetensors", "sd-tiny", False, False, torch.float16),
             ("sd1-tiny-bf16.safetensors", "sd-tiny", False, False, torch.bfloat16),
             ("sd2-tiny.safetensors", "sd-tiny-linear", True, False, torch.float32)]
    for name, folder, open_clip, ema, dtype in files:
        tensors = ldm_file(MODELS / folder, open_clip, ema, dtype)
        save_file(tensors, OUT / name, metadata={"format": "pt"})
        (OUT / name).chmod(0o644)
        print(f"{(OUT / name).relative_to(ROOT)}: {len(tensors)} tensors from {folder}")
        check_with_diffusers(OUT / name, MODELS / folder, open_clip, dtype)
    write_reference_shapes()


if __name__ == "__main__":
    main()
