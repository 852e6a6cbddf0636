"""Generate the diffusers/torch reference fixtures for carousel's diffusion samplers.

Run from the repository root (CPU only, about a minute):

    python tools/make_sampler_fixtures.py

Writes tests/data/diffusion/*.json. Needs torch and diffusers (versions are recorded in each file) on an x86-64
CPU whose torch kernels are AVX2 or AVX-512 (for the AVX2 randn reference; the portable kernel is produced in a
subprocess with ATEN_CPU_CAPABILITY=default). Float32 values are stored exactly, as 8-hex-digit IEEE-754 bit
patterns concatenated into one string per array ("hex" fields).

Trajectory protocol (mirrored by tests/diffusion/samplers.cpp): a request with seed s draws its initial latents
x = torch.randn(shape, generator=g) * scheduler.init_noise_sigma with g = torch.Generator().manual_seed(s); the
synthetic model draws r = torch.randn(out_shape, generator=m) with m seeded s + 1000 at every step and predicts
out = scheduler.scale_model_input(x, t) * 0.5 + r[:n] * 0.5 (plus, for learned variance, r[n:] squared ("square")
or clamped to [-1, 1] ("clamp")); the scheduler step uses generator g for its noise. Schedulers: DDPM, DDIM,
EulerDiscrete, DPMSolverMultistep ("dpm"). trajectories.json is generated with torch's `** 0.5` made IEEE-exact
(see IeeeSqrt); trajectories_torch.json with stock torch.
"""

import contextlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "diffusion"


def hexf(t):
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32).ravel())
    return "".join(f"{v:08x}" for v in a.view(np.uint32))


def rng_cases():
    import torch

    cases = []
    for seed in [0, 1, 42, 1234, 2**32 + 7, 987654321]:
        for sizes in [[16], [3], [1, 2, 5], [15, 16, 17], [40, 3, 33], [64], [7, 100, 1, 15]]:
            g = torch.Generator().manual_seed(seed)
            draws = [hexf(torch.randn(s, generator=g)) for s in sizes]
            cases.append({"seed": seed, "sizes": sizes, "values": draws})
        g = torch.Generator().manual_seed(seed)
        cases.append({"seed": seed, "sizes": [30], "values": [hexf(torch.randn((2, 3, 5), generator=g))]})
    g = torch.Generator().manual_seed(42)
    cases.append({"seed": 42, "sizes": [4 * 32 * 32, 5], "values": [hexf(torch.randn((1, 4, 32, 32), generator=g)),
                                                                     hexf(torch.randn(5, generator=g))]})
    return cases


if len(sys.argv) > 1 and sys.argv[1] == "--rng-only":
    print(json.dumps(rng_cases()))
    sys.exit(0)

import torch  # noqa: E402
import diffusers  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler  # noqa: E402
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg  # noqa: E402

torch.set_num_threads(1)
VERSIONS = {"torch": torch.__version__, "diffusers": diffusers.__version__}


def clean_config(config):
    """A scheduler config as a JSON-ready dict: no `_use_default_values` (a set, so its order is not reproducible),
    null instead of -inf (DPM-Solver's lambda_min_clipped default; JSON has no -Infinity)."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in config.items()
            if k != "_use_default_values"}


def write(name, payload):
    payload = {"generated_by": "tools/make_sampler_fixtures.py", "versions": VERSIONS, **payload}
    path = OUT / name
    path.write_text(json.dumps(payload, separators=(",", ":")))
    print(f"{path}: {path.stat().st_size} bytes")


def make_rng():
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        sys.exit(f"need torch AVX2/AVX512 kernels for the avx2 reference, got {capability}")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    scalar = json.loads(subprocess.run([sys.executable, __file__, "--rng-only"], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    write("randn.json", {"avx2": rng_cases(), "scalar": scalar})


def schedule_configs():
    out = []
    for schedule, bs, be in [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012), ("squaredcos_cap_v2", 1e-4, 0.02),
                             ("sigmoid", 1e-4, 0.02), ("laplace", 1e-4, 0.02)]:
        for rescale in [False, True]:
            for t in [1000, 37]:
                out.append(dict(num_train_timesteps=t, beta_start=bs, beta_end=be, beta_schedule=schedule,
                                rescale_betas_zero_snr=rescale))
    rs = np.random.RandomState(3)
    out.append(dict(num_train_timesteps=20, trained_betas=[float(b) for b in rs.uniform(1e-4, 0.2, 20)]))
    return out


def make_schedules():
    cases = []
    for cfg in schedule_configs():
        s = DDPMScheduler(**cfg)
        cases.append({"config": clean_config(s.config), "betas": hexf(s.betas), "alphas_cumprod": hexf(s.alphas_cumprod)})
    write("schedules.json", {"cases": cases})


def make_timesteps():
    def checksum(ts):
        ts = [int(v) for v in ts]
        return [len(ts), sum(ts), sum(i * v for i, v in enumerate(ts)), ts[0], ts[-1]]

    cases = []
    full_n = [1, 2, 3, 4, 5, 7, 10, 20, 25, 50, 61, 100, 103, 121, 122, 201, 250, 333, 999, 1000]
    for spacing, offset in [("linspace", 0), ("leading", 0), ("leading", 1), ("trailing", 0), ("trailing", 1)]:
        for t in [1000, 37]:
            s = DDPMScheduler(num_train_timesteps=t, timestep_spacing=spacing, steps_offset=offset)
            sums, full = [], {}
            for n in range(1, t + 1):
                s.set_timesteps(n)
                sums.append(checksum(s.timesteps))
                if t != 1000 or n in full_n:
                    full[str(n)] = [int(v) for v in s.timesteps]
            cases.append({"num_train_timesteps": t, "timestep_spacing": spacing, "steps_offset": offset,
                          "checksums": sums, "full": full})
    write("timesteps.json", {"checksum_fields": ["length", "sum", "sum(i*t)", "first", "last"], "cases": cases})


class IeeeSqrt:
    """Within this context, `x ** 0.5` of a float32 tensor is the correctly rounded float32 square root.

    torch's CPU float32 sqrt comes from MKL's vector math library and differs from IEEE sqrt by one ulp for about a
    fifth of the inputs (and may differ between CPUs). The scheduler coefficients (and Euler's sigmas) are `** 0.5`
    values, so with this patch the fixtures pin diffusers' float32 operation order exactly;
    trajectories_torch.json keeps unpatched runs to measure the agreement with stock diffusers."""

    def __enter__(self):
        self.original = torch.Tensor.__pow__
        original = self.original

        def pow_(t, e):
            if isinstance(e, float) and e == 0.5 and t.dtype == torch.float32 and t.device.type == "cpu":
                return torch.from_numpy(np.asarray(np.sqrt(t.detach().numpy().astype(np.float32)), dtype=np.float32))
            return original(t, e)

        torch.Tensor.__pow__ = pow_

    def __exit__(self, *args):
        torch.Tensor.__pow__ = self.original


def run_case(kind, cfg, n_steps, shape, seed, **kwargs):
    with IeeeSqrt() if IEEE_SQRT else contextlib.nullcontext():
        return run_case_(kind, cfg, n_steps, shape, seed, **kwargs)


def run_case_(kind, cfg, n_steps, shape, seed, eta=0.0, clipped=False, custom=None, checkpoints=None,
              variance_mode="none"):
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
           "dpm": DPMSolverMultistepScheduler}[kind]
    accepted = inspect.signature(cls.__init__).parameters
    sched = cls(**{k: v for k, v in cfg.items() if k in accepted})
    if custom is not None:
        sched.set_timesteps(timesteps=custom)
    else:
        sched.set_timesteps(n_steps)
    g = torch.Generator().manual_seed(seed)
    m = torch.Generator().manual_seed(seed + 1000)
    x = torch.randn(shape, generator=g) * sched.init_noise_sigma
    out_shape = list(shape)
    if variance_mode != "none":
        out_shape[1] *= 2
    timesteps = [float(t) if kind == "euler" else int(t) for t in sched.timesteps]
    points = []
    for i, t in enumerate(sched.timesteps):
        r = torch.randn(out_shape, generator=m)
        eps = sched.scale_model_input(x, t) * 0.5 + r[:, : shape[1]] * 0.5
        if variance_mode == "square":
            out = torch.cat([eps, r[:, shape[1]:] * r[:, shape[1]:]], dim=1)
        elif variance_mode == "clamp":
            out = torch.cat([eps, r[:, shape[1]:].clamp(-1, 1)], dim=1)
        else:
            out = eps
        if kind == "ddim":
            x = sched.step(out, t, x, eta=eta, use_clipped_model_output=clipped, generator=g).prev_sample
        else:
            x = sched.step(out, t, x, generator=g).prev_sample
        if checkpoints is None or i in checkpoints or i == len(timesteps) - 1:
            points.append({"step": i, "sample": hexf(x)})
    config = clean_config(sched.config)
    if "timestep_spacing" not in cfg:
        config.pop("timestep_spacing", None)  # absent, as in SD-1.5's file: each scheduler's own default applies
    return {"sampler": kind, "config": config, "num_inference_steps": n_steps, "custom_timesteps": custom,
            "eta": eta, "use_clipped_model_output": clipped, "shape": list(shape), "seed": seed,
            "variance_mode": variance_mode, "timesteps": timesteps, "checkpoints": points}


SCHEDULES = {"linear": dict(beta_schedule="linear"),
             "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
             "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
             "sigmoid": dict(beta_schedule="sigmoid"),
             "laplace": dict(beta_schedule="laplace")}
IEEE_SQRT = True
SD15 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
            set_alpha_to_one=False, steps_offset=1, clip_sample=False)


def make_trajectories():
    cases = []
    seed = 0
    shape = (1, 4, 4, 4)
    # DDPM: every beta schedule x spacing x prediction type x variance type, 4 steps, no clamping.
    for sname, scfg in SCHEDULES.items():
        for spacing in ["linspace", "leading", "trailing"]:
            for pred in ["epsilon", "sample", "v_prediction"]:
                for var in ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]:
                    seed += 1
                    mode = {"learned": "square", "learned_range": "clamp"}.get(var, "none")
                    cfg = dict(scfg, timestep_spacing=spacing, prediction_type=pred, variance_type=var,
                               clip_sample=False, steps_offset=1 if spacing == "leading" else 0)
                    cases.append(run_case("ddpm", cfg, 4, shape, seed, variance_mode=mode))
    # DDIM: every supported beta schedule x spacing x prediction type x eta x set_alpha_to_one, 4 steps.
    for sname in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
        for spacing in ["linspace", "leading", "trailing"]:
            for pred in ["epsilon", "sample", "v_prediction"]:
                for eta in [0.0, 0.5, 1.0]:
                    for one in [True, False]:
                        seed += 1
                        cfg = dict(SCHEDULES[sname], timestep_spacing=spacing, prediction_type=pred,
                                   set_alpha_to_one=one, clip_sample=False,
                                   steps_offset=1 if spacing == "leading" else 0)
                        cases.append(run_case("ddim", cfg, 4, shape, seed, eta=eta))
    # Clipping and dynamic thresholding, with and without use_clipped_model_output.
    for pred in ["epsilon", "sample", "v_prediction"]:
        for clamp in [dict(clip_sample=True, clip_sample_range=1.0), dict(clip_sample=True, clip_sample_range=2.5),
                      dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
                      dict(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=3.0)]:
            seed += 1
            cfg = dict(SCHEDULES["linear"], prediction_type=pred, **clamp)
            cases.append(run_case("ddpm", cfg, 5, shape, seed))
            for clipped in [False, True]:
                seed += 1
                cases.append(run_case("ddim", cfg, 5, shape, seed, eta=0.5, clipped=clipped))
    # Zero terminal SNR with v prediction and trailing spacing (its intended use); DDPM custom timesteps.
    for kind in ["ddpm", "ddim"]:
        for sname in ["linear", "scaled_linear"]:
            seed += 1
            cfg = dict(SCHEDULES[sname], rescale_betas_zero_snr=True, prediction_type="v_prediction",
                       timestep_spacing="trailing", clip_sample=False)
            cases.append(run_case(kind, cfg, 6, shape, seed, eta=0.3))
    for custom in [[999, 800, 500, 10, 0], [700, 3, 1], [5]]:
        seed += 1
        cases.append(run_case("ddpm", dict(SCHEDULES["linear"], clip_sample=False), None, shape, seed, custom=custom))
    # Step counts 1..1000, the trailing N+1 quirk, SD-1.5's pipeline config; other shapes (numel 15 and 42).
    for kind in ["ddpm", "ddim"]:
        for spacing in ["leading", "trailing", "linspace"]:
            for n in [1, 2, 3, 7, 50, 61, 103, 121, 201, 999, 1000]:
                seed += 1
                cfg = dict(SD15, timestep_spacing=spacing)
                if spacing == "leading" and n == 1000:
                    cfg["steps_offset"] = 0
                checkpoints = set(range(0, n, max(1, n // 4)))
                cases.append(run_case(kind, cfg, n, (1, 2, 3, 7) if n % 2 else shape, seed, eta=1.0 if n % 3 else 0.0,
                                      checkpoints=checkpoints))
    for kind, shp in [("ddpm", (1, 3, 5)), ("ddim", (1, 3, 5)), ("ddpm", (2, 3, 5)), ("ddim", (1, 1, 1))]:
        seed += 1
        cases.append(run_case(kind, dict(SD15), 10, shp, seed, eta=0.7))
    # Euler: beta schedules x spacing (including absent: Euler's default linspace) x prediction type x Karras.
    for sname in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
        for spacing in [None, "leading", "trailing"]:
            for pred in ["epsilon", "sample", "v_prediction"]:
                for karras in [False, True]:
                    seed += 1
                    cfg = dict(SCHEDULES[sname], prediction_type=pred, use_karras_sigmas=karras,
                               steps_offset=1 if spacing == "leading" else 0)
                    if spacing is not None:
                        cfg["timestep_spacing"] = spacing
                    cases.append(run_case("euler", cfg, 4, shape, seed))
    for extra in [dict(final_sigmas_type="sigma_min"), dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0),
                  dict(use_karras_sigmas=True, final_sigmas_type="sigma_min")]:
        for n in [1, 25, 61]:
            seed += 1
            cases.append(run_case("euler", dict(SD15, **extra), n, shape, seed,
                                  checkpoints=set(range(0, n, max(1, n // 5)))))
    # DPM-Solver++ (2M): beta schedules x spacing (absent: linspace) x prediction type x Karras, 6 steps; then
    # heun, order 1, thresholding, euler_at_final, final sigma_min, lower_order_final off, long runs.
    for sname in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
        for spacing in [None, "leading", "trailing"]:
            for pred in ["epsilon", "sample", "v_prediction"]:
                # squaredcos_cap_v2 + Karras repeats timesteps, which diffusers' step-index lookup cannot handle.
                for karras in [False] if sname == "squaredcos_cap_v2" else [False, True]:
                    seed += 1
                    cfg = dict(SCHEDULES[sname], prediction_type=pred, use_karras_sigmas=karras,
                               steps_offset=1 if spacing == "leading" else 0)
                    if spacing is not None:
                        cfg["timestep_spacing"] = spacing
                    cases.append(run_case("dpm", cfg, 6, shape, seed))
    for extra in [dict(solver_type="heun"), dict(solver_order=1), dict(euler_at_final=True),
                  dict(final_sigmas_type="sigma_min"), dict(lower_order_final=False, final_sigmas_type="sigma_min"),
                  dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
                  dict(use_karras_sigmas=True, solver_type="heun")]:
        for n in [1, 2, 7, 20, 30]:
            seed += 1
            cases.append(run_case("dpm", dict(SD15, **extra), n, shape, seed,
                                  checkpoints=set(range(0, n, max(1, n // 5)))))
    write("trajectories.json", {"cases": cases})


def make_torch_trajectories():
    """Stock diffusers (torch's own sqrt): SD-1.5 style runs, every step recorded."""
    global IEEE_SQRT
    IEEE_SQRT = False
    cases = []
    seed = 5000
    shape = (1, 4, 4, 4)
    for kind, eta, spacing, n in [("ddim", 0.0, "leading", 50), ("ddim", 1.0, "leading", 20), ("ddim", 0.0, "trailing", 25),
                                  ("ddpm", 0.0, "leading", 50), ("ddpm", 0.0, "linspace", 20),
                                  ("ddpm", 0.0, "trailing", 61)]:
        seed += 1
        cases.append(run_case(kind, dict(SD15, timestep_spacing=spacing), n, shape, seed, eta=eta))
    for kind in ["ddpm", "ddim"]:
        for pred in ["epsilon", "sample", "v_prediction"]:
            seed += 1
            cfg = dict(SCHEDULES["linear"], prediction_type=pred, clip_sample=False)
            cases.append(run_case(kind, cfg, 10, shape, seed, eta=0.5))
    for kind, extra, n in [("euler", {}, 30), ("euler", dict(use_karras_sigmas=True), 25), ("dpm", {}, 20),
                           ("dpm", dict(use_karras_sigmas=True), 25)]:
        seed += 1
        cases.append(run_case(kind, dict(SD15, **extra), n, shape, seed))
    IEEE_SQRT = True
    write("trajectories_torch.json", {"cases": cases})


def make_guidance():
    g = torch.Generator().manual_seed(77)
    cases = []
    for scale in [1.0, 3.0, 7.5]:
        for rescale in [0.0, 0.7, 1.0]:
            uncond = torch.randn((1, 4, 4, 4), generator=g)
            cond = torch.randn((1, 4, 4, 4), generator=g)
            if scale > 1:
                out = uncond + scale * (cond - uncond)
                if rescale > 0:
                    out = rescale_noise_cfg(out, cond, guidance_rescale=rescale)
            else:
                out = cond
            cases.append({"guidance_scale": scale, "guidance_rescale": rescale, "uncond": hexf(uncond),
                          "cond": hexf(cond), "out": hexf(out)})
    write("guidance.json", {"cases": cases})


def make_configs():
    sd15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
            "clip_sample": False}
    (OUT / "sd15_scheduler_config.json").write_text(json.dumps(sd15, indent=2) + "\n")
    DDIMScheduler.from_config(sd15).save_config(OUT / "ddim_saved")
    saved = OUT / "ddim_saved" / "scheduler_config.json"
    (OUT / "ddim_scheduler_config.json").write_text(saved.read_text())
    saved.unlink()
    (OUT / "ddim_saved").rmdir()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    make_rng()
    make_schedules()
    make_timesteps()
    make_guidance()
    make_configs()
    make_trajectories()
    make_torch_trajectories()
