"""A real CLIP BPE tokenizer, truncated, built offline from open-clip-torch's bundled BPE file.

CLIP's merges are rank-ordered, so the first N merges form a valid smaller
tokenizer that never yields ``<|unk|>``: rare words just split into more pieces.
The vocabulary is the byte-level alphabet (256 symbols), the same with
``</w>``, one entry per kept merge in order, then the two special tokens.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from importlib import resources
from pathlib import Path

DEFAULT_MERGES = 2000


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_merges(n_merges: int) -> list[tuple[str, str]]:
    path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(str(path), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Line 0 is a version header; CLIP uses lines 1 .. 49152 - 256 - 2.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    if not 0 < n_merges <= len(merges):
        raise ValueError(f"n_merges must be in 1..{len(merges)}, got {n_merges}")
    return merges[:n_merges]


def write_tokenizer_files(out_dir: str | Path, n_merges: int = DEFAULT_MERGES) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for a CLIP tokenizer with the first ``n_merges`` merges."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = clip_merges(n_merges)
    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return out


def build_tokenizer(n_merges: int = DEFAULT_MERGES, model_max_length: int = 24):
    """A ``transformers.CLIPTokenizer`` over the truncated vocabulary (built in a temp dir)."""

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(tmp, n_merges)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=model_max_length)
