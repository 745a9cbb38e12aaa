"""Build small local Llama models with real random weights, for vLLM tests and benchmarks.

No model can be downloaded here, so this writes a complete Hugging Face Llama folder
from scratch: ``config.json``, a ``tokenizers`` byte-level BPE ``tokenizer.json``
trained on a synthetic English-like corpus generated in code, and random weights
(``randn * init_std``, seeded) in ``model.safetensors`` under the exact HF Llama
parameter names. vLLM (including the CPU build) loads the folder with its default
load format; the weights are real, so logits differ between tokens (no ties) and a
wrong KV cache changes the output.

Everything is deterministic: the same arguments give the same bytes.

    from lmcache_valkey.testkit.tiny_llama import BENCH_89M, build_tiny_llama
    build_tiny_llama(Path("/tmp/llama89m"), **BENCH_89M)

    python -m lmcache_valkey.testkit.tiny_llama /tmp/llama89m --preset bench

Only the standard library is needed at import time; building needs ``torch``,
``safetensors`` and ``tokenizers``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_89M",
    "TEST_TINY",
    "PRESETS",
    "build_tiny_llama",
    "count_parameters",
    "load_tokenizer",
    "main",
    "synthetic_corpus",
    "synthetic_documents",
]

#: The small model for tests: head_dim 256/4 = 64 (vLLM CPU needs 64; 16 fails).
TEST_TINY: dict[str, Any] = {
    "hidden_size": 256,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 512,
    "vocab_size": 2048,
}

#: The benchmark model: 89,146,368 parameters (untied lm_head), head_dim 64.
BENCH_89M: dict[str, Any] = {
    "hidden_size": 1024,
    "num_layers": 8,
    "num_heads": 16,
    "num_kv_heads": 4,
    "intermediate_size": 2048,
    "vocab_size": 8704,
}

PRESETS: dict[str, dict[str, Any]] = {"test": TEST_TINY, "bench": BENCH_89M}

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

_TORCH_DTYPES = ("bfloat16", "float16", "float32")

# --------------------------------------------------------------------------- corpus


def _words(text: str) -> list[str]:
    return text.split()


_NOUNS = _words(
    "time year people way day man woman child world life hand part place case week "
    "company system program question work government number night point home water room "
    "mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car "
    "city community name president team minute idea kid body information back parent face "
    "others level office door health person art war history party result change morning "
    "reason research girl guy moment air teacher force education river mountain garden "
    "window table letter music paper market village road engine cloud storm ship island "
    "forest bridge stone lamp clock signal server cache memory block token layer model "
    "record field value key network packet kernel thread queue bucket"
)
_VERBS = _words(
    "is was has had said made went took came saw knew got gave found thought told became "
    "left felt brought began kept held wrote stood heard let meant set met ran paid sat "
    "spoke lay led read grew lost fell sent built understood drew broke spent cut rose "
    "drove bought wore chose carried opened closed watched followed stopped created moved "
    "played turned started showed called asked needed tried loaded stored returned "
    "measured counted painted crossed lifted pushed pulled joined reached"
)
_ADJECTIVES = _words(
    "good new first last long great little own other old right big high different small "
    "large next early young important few public bad same able quiet bright dark cold "
    "warm heavy light quick slow green blue red golden silver ancient modern simple "
    "strange careful gentle busy empty full narrow wide deep shallow rough smooth"
)
_ADVERBS = _words(
    "quickly slowly often never always sometimes quietly carefully suddenly finally again "
    "soon later already still almost nearly rarely gladly openly"
)
_PREPOSITIONS = _words("in on at near under over behind beside across through into from with")
_DETERMINERS = _words("the a this that every each some one another their our his her")
_CONNECTORS = _words("and but so because while although when after before until")
_ONSETS = _words(
    "b c d f g h j k l m n p r s t v w z bl br ch cl cr dr fl fr gl gr kl pl pr sc sh sk "
    "sl sm sn sp st str sw th tr tw wh"
)
_VOWELS = _words("a e i o u ai ea ee oa oo ou ie ia io")
_CODAS = [""] * 6 + _words("n r s l t m nd nt rd rk st ng th x sh ck")


def _pseudo_words(rng: random.Random, n: int) -> list[str]:
    """`n` distinct pronounceable made-up words (names, places, jargon)."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        syllables = rng.choice((1, 2, 2, 2, 3, 3, 4))
        w = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        )
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class _SentenceMaker:
    def __init__(self, rng: random.Random, n_pseudo: int = 6000) -> None:
        self.rng = rng
        self.names = _pseudo_words(rng, n_pseudo)
        self.nouns = list(_NOUNS) + self.names[: n_pseudo // 2]
        self.proper = [w.capitalize() for w in self.names[n_pseudo // 2 :]]

    def _np(self) -> str:
        r = self.rng
        if r.random() < 0.25:
            return r.choice(self.proper)
        parts = [r.choice(_DETERMINERS)]
        if r.random() < 0.5:
            parts.append(r.choice(_ADJECTIVES))
        parts.append(r.choice(self.nouns))
        if r.random() < 0.15:
            where = f"{r.choice(_PREPOSITIONS)} {r.choice(_DETERMINERS)} {r.choice(self.nouns)}"
            parts.append(where)
        return " ".join(parts)

    def _clause(self) -> str:
        r = self.rng
        parts = [self._np()]
        if r.random() < 0.3:
            parts.append(r.choice(_ADVERBS))
        parts.append(r.choice(_VERBS))
        parts.append(self._np())
        if r.random() < 0.4:
            parts.append(f"{r.choice(_PREPOSITIONS)} {self._np()}")
        if r.random() < 0.15:
            parts.append(f"in {r.randint(1200, 2099)}")
        elif r.random() < 0.1:
            count = r.randint(2, 999)  # drawn before the unit, as always: same corpus
            parts.append(f"for {count} {r.choice(('days', 'hours', 'miles', 'coins', 'pages'))}")
        return " ".join(parts)

    def sentence(self) -> str:
        r = self.rng
        s = self._clause()
        if r.random() < 0.35:
            s += f", {r.choice(_CONNECTORS)} {self._clause()}"
        s = s[0].upper() + s[1:]
        return s + r.choice((".", ".", ".", ".", "!", "?", ";"))

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(3, 8)))


def synthetic_corpus(n_sentences: int = 30000, seed: int = 0) -> Iterator[str]:
    """Deterministic English-like paragraphs (about 12 words per sentence)."""
    maker = _SentenceMaker(random.Random(f"tiny-llama-corpus-{seed}"))
    made = 0
    while made < n_sentences:
        p = maker.paragraph()
        made += p.count(". ") + 1
        yield p


# ------------------------------------------------------------------------ tokenizer


def _train_tokenizer(vocab_size: int, seed: int) -> Any:
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(30000, seed), trainer=trainer)
    have = tok.get_vocab_size()
    if have < vocab_size:  # corpus ran out of merges: pad with reserved tokens
        tok.add_special_tokens(
            [AddedToken(f"<|reserved_{i}|>", special=True) for i in range(vocab_size - have)]
        )
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return tok


def load_tokenizer(path: str | os.PathLike[str] | Any) -> Any:
    """A ``tokenizers.Tokenizer`` from a model folder or a ``tokenizer.json`` path
    (an existing ``Tokenizer`` is returned as is)."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    from tokenizers import Tokenizer

    p = Path(path)
    return Tokenizer.from_file(str(p / "tokenizer.json" if p.is_dir() else p))


# -------------------------------------------------------------------------- weights


def _param_shapes(
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vocab_size: int,
) -> dict[str, tuple[int, ...]]:
    head_dim = hidden_size // num_heads
    kv = num_kv_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, hidden_size)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (hidden_size, hidden_size)
        shapes[p + "self_attn.k_proj.weight"] = (kv, hidden_size)
        shapes[p + "self_attn.v_proj.weight"] = (kv, hidden_size)
        shapes[p + "self_attn.o_proj.weight"] = (hidden_size, hidden_size)
        shapes[p + "mlp.gate_proj.weight"] = (intermediate_size, hidden_size)
        shapes[p + "mlp.up_proj.weight"] = (intermediate_size, hidden_size)
        shapes[p + "mlp.down_proj.weight"] = (hidden_size, intermediate_size)
        shapes[p + "input_layernorm.weight"] = (hidden_size,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden_size,)
    shapes["model.norm.weight"] = (hidden_size,)
    shapes["lm_head.weight"] = (vocab_size, hidden_size)
    return shapes


def count_parameters(**args: Any) -> int:
    """Parameter count of the model `build_tiny_llama` writes for these
    arguments (its defaults for the ones not given; the others, such as
    `seed`, do not change the count)."""
    size = {name: p.default for name, p in inspect.signature(build_tiny_llama).parameters.items()
            if p.default is not p.empty}
    size.update(args)
    shapes = _param_shapes(size["hidden_size"], size["num_layers"], size["num_heads"],
                           size["num_kv_heads"], size["intermediate_size"], size["vocab_size"])
    return sum(math.prod(shape) for shape in shapes.values())


def _make_weights(
    shapes: dict[str, tuple[int, ...]], seed: int, dtype: str, init_std: float
) -> dict[str, Any]:
    import torch

    tdtype = getattr(torch, dtype)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.float32)
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float32) * init_std
        out[name] = t.to(tdtype).contiguous()
    return out


# -------------------------------------------------------------------------- builder


def build_tiny_llama(
    dest: str | os.PathLike[str],
    *,
    hidden_size: int = 256,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    vocab_size: int = 2048,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    dtype: str = "bfloat16",
    init_std: float = 0.02,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-5,
) -> Path:
    """Write a complete HF Llama folder (config, tokenizer, random weights) to `dest`.

    `dest` is created (or its model files replaced); returns it as a `Path`.
    The head dimension ``hidden_size // num_heads`` must be 64 (what vLLM's CPU
    attention supports). Same arguments give byte-identical files.
    """
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads, num_heads by num_kv_heads")
    head_dim = hidden_size // num_heads
    if head_dim != 64:
        raise ValueError(f"head_dim = hidden_size/num_heads = {head_dim}; vLLM CPU needs 64")
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {_TORCH_DTYPES}")
    if vocab_size < 512:
        raise ValueError("vocab_size must be at least 512 (256 bytes + specials + merges)")

    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # Write into a temp dir next to dest, then move files in: a crash leaves no half model.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=dest))
    try:
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": max_position_embeddings,
            "rms_norm_eps": rms_norm_eps,
            "rope_theta": rope_theta,
            "rope_scaling": None,
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": init_std,
            "pretraining_tp": 1,
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": vocab_size,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": None,
            "torch_dtype": dtype,
        }
        _write_json(tmp / "config.json", config)
        _write_json(
            tmp / "generation_config.json", {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
        )

        tok = _train_tokenizer(vocab_size, seed)
        (tmp / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
        specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        _write_json(tmp / "special_tokens_map.json", specials)
        _write_json(
            tmp / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                **specials,
                "add_bos_token": True,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": max_position_embeddings,
            },
        )

        shapes = _param_shapes(
            hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size
        )
        weights = _make_weights(shapes, seed, dtype, init_std)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})

        for f in sorted(tmp.iterdir()):
            f.chmod(0o644)  # safetensors writes 0600
            os.replace(f, dest / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------ documents


def synthetic_documents(
    n_docs: int, n_tokens: int, seed: int = 0, tokenizer: str | os.PathLike[str] | Any | None = None
) -> list[str]:
    """`n_docs` distinct English-like text prompts of about `n_tokens` tokens each.

    Each document starts with its own header line, so no two share a prefix longer
    than a few tokens (prefix-cache hits between documents stay at zero blocks).
    With `tokenizer` (a model folder, a ``tokenizer.json`` path or a
    ``tokenizers.Tokenizer``), each text is cut at a word boundary so that it encodes
    to ``n_tokens`` tokens or slightly fewer (BOS included); without one, the length
    is estimated (about 1.3 tokens per word under the tokenizers built here).
    Deterministic in (n_docs, n_tokens, seed).
    """
    if n_docs < 0 or n_tokens < 8:
        raise ValueError("need n_docs >= 0 and n_tokens >= 8")
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    rng = random.Random(f"tiny-llama-docs-{seed}")
    maker = _SentenceMaker(random.Random(f"tiny-llama-doc-words-{seed}"), n_pseudo=3000)
    docs: list[str] = []
    for i in range(n_docs):
        header = f"Document {i} ({rng.getrandbits(48):012x}): {maker.sentence()}"
        # Over-generate by words, then trim with the tokenizer (or the estimate).
        words = header.split()
        target_words = int(n_tokens / 1.3) + 1
        while len(words) < (target_words * 2 if tok is not None else target_words):
            words.extend(maker.paragraph().split())
        if tok is None:
            docs.append(" ".join(words[:target_words]))
            continue
        docs.append(_trim_to_tokens(tok, words, n_tokens))
    return docs


def _trim_to_tokens(tok: Any, words: list[str], n_tokens: int) -> str:
    """Longest prefix of `words` (joined by spaces) with at most `n_tokens` tokens."""
    lo, hi = 1, len(words)
    while lo < hi:  # binary search on the number of words
        mid = (lo + hi + 1) // 2
        if len(tok.encode(" ".join(words[:mid])).ids) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lmcache_valkey.testkit.tiny_llama",
        description="Write a small HF Llama folder with random weights and a local BPE tokenizer.",
    )
    ap.add_argument("dest", type=Path, help="output folder (created)")
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="test",
        help="test: 256 hidden, 2 layers (2.2M params); bench: ~89M params",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=_TORCH_DTYPES, default="bfloat16")
    ap.add_argument("--max-position-embeddings", type=int, default=4096)
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    out = build_tiny_llama(
        args.dest,
        **preset,
        seed=args.seed,
        dtype=args.dtype,
        max_position_embeddings=args.max_position_embeddings,
    )
    print(f"wrote {out} ({args.preset}: {count_parameters(**preset):,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
