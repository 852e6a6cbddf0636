"""The CLIP BPE tables the tools share: the byte -> unicode map and the merges (from open_clip_torch's
bpe_simple_vocab_16e6.txt.gz; pip install --no-deps open_clip_torch). Imported by make_tiny_models.py,
make_tokenizer_fixtures.py and train_bundled_model.py (run from the repository root as python3 tools/NAME.py)."""
import gzip
import importlib.util
from pathlib import Path


def bytes_to_unicode():
    """CLIP's / GPT-2's reversible byte -> printable unicode mapping, in its canonical order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_merges():
    """All CLIP BPE merges (48894 pairs) in rank order."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs open_clip_torch for the CLIP merges: pip install --no-deps open_clip_torch")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
