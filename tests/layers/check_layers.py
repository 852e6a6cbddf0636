#!/usr/bin/env python3
"""Checks what each part of include/carousel may include (docs/architecture.md):

  core        include/carousel/*.hpp, detail/   the standard library only
  tensor      tensor/                          the standard library only
  checkpoint  checkpoint/                      core, tensor; nlohmann/json; POSIX file calls
  diffusion   diffusion/                       core, tensor, checkpoint; nlohmann/json
  nn          nn/                              core, tensor, checkpoint (the networks, over a layers trait)
  cpu         cpu/                             core, tensor, checkpoint, diffusion, nn; CBLAS, oneDNN
  cuda        cuda/                            core, tensor, checkpoint, diffusion, nn; CUDA, cuBLAS, cuDNN (never cpu/)

Usage: check_layers.py INCLUDE_DIR      exits 1 and names every include that breaks the rules
       check_layers.py --self-test      shows that a breach is caught
"""
import pathlib
import re
import sys
import tempfile

CARRIES = {
    "core": {"core"},
    "tensor": {"tensor"},
    "checkpoint": {"core", "tensor", "checkpoint"},
    "diffusion": {"core", "tensor", "checkpoint", "diffusion"},
    "nn": {"core", "tensor", "checkpoint", "nn"},
    "cpu": {"core", "tensor", "checkpoint", "diffusion", "nn", "cpu"},
    "cuda": {"core", "tensor", "checkpoint", "diffusion", "nn", "cuda"},
}
EXTERNAL = {
    "core": [],
    "tensor": [],
    "checkpoint": [r"nlohmann/", r"sys/", r"fcntl\.h$", r"unistd\.h$"],
    "diffusion": [r"nlohmann/"],
    "nn": [],
    "cpu": [r"cblas\.h$", r"openblas", r"dnnl", r"oneapi/"],
    "cuda": [r"cuda", r"cublas", r"cudnn", r"cuda_fp16\.h$", r"nvtx"],
}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)


def layer_of(path, root):
    parts = path.relative_to(root).parts
    return "core" if len(parts) == 1 or parts[0] == "detail" else parts[0]


def breaches(include_dir):
    root = pathlib.Path(include_dir) / "carousel"
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".hpp", ".cuh", ".h"):
            continue
        layer = layer_of(path, root)
        if layer not in CARRIES:
            found.append(f"{path}: no rule for the folder '{layer}'")
            continue
        for target in INCLUDE.findall(path.read_text()):
            if target.startswith("carousel/"):
                to = layer_of(root / target[len("carousel/"):], root)
                if to not in CARRIES[layer]:
                    found.append(f"{path}: {layer} includes {target} ({to})")
            elif "/" in target or "." in target:  # not a standard library header
                if not any(re.search(p, target) for p in EXTERNAL[layer]):
                    found.append(f"{path}: {layer} includes {target}")
    return found


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        with tempfile.TemporaryDirectory() as tmp:
            base = pathlib.Path(tmp) / "carousel"
            (base / "cuda").mkdir(parents=True)
            (base / "cpu").mkdir()
            (base / "nn").mkdir()
            (base / "ticket.hpp").write_text("#include <vector>\n#include <nlohmann/json.hpp>\n")
            (base / "nn" / "z.hpp").write_text('#include <carousel/cpu/y.hpp>\n#include <carousel/ticket.hpp>\n')
            (base / "cuda" / "x.cuh").write_text('#include "carousel/cpu/y.hpp"\n#include <cuda_runtime.h>\n')
            (base / "cpu" / "y.hpp").write_text("#include <carousel/ticket.hpp>\n#include <cblas.h>\n")
            found = breaches(tmp)
            expected = ["core includes nlohmann/json.hpp", "cuda includes carousel/cpu/y.hpp (cpu)",
                        "nn includes carousel/cpu/y.hpp (cpu)"]
            ok = len(found) == 3 and all(any(e in f for f in found) for e in expected)
            print("\n".join(found))
            sys.exit(0 if ok else "FAIL: the self-test's three breaches were not reported exactly")
    found = breaches(sys.argv[1])
    print("\n".join(found) if found else "every include follows docs/architecture.md")
    sys.exit(1 if found else 0)
