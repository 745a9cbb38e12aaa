"""The tiny Llama builder: deterministic bytes, a working tokenizer, HF-compatible files.

No vLLM here (starting a server takes about a minute on CPU); these run in seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from lmcache_valkey.testkit.tiny_llama import (  # noqa: E402
    BENCH_89M,
    PRESETS,
    TEST_TINY,
    build_tiny_llama,
    count_parameters,
    load_tokenizer,
    main,
    synthetic_corpus,
    synthetic_documents,
)

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _digests(d: Path) -> dict[str, str]:
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"), **TEST_TINY)


def test_writes_all_files(tiny: Path) -> None:
    assert sorted(p.name for p in tiny.iterdir()) == sorted(FILES)


def test_deterministic_bytes(tiny: Path, tmp_path: Path) -> None:
    again = build_tiny_llama(tmp_path / "again", **TEST_TINY)
    assert _digests(again) == _digests(tiny)


def test_config(tiny: Path) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == cfg["head_dim"] == 64
    assert cfg["tie_word_embeddings"] is False
    assert cfg["vocab_size"] == TEST_TINY["vocab_size"]
    assert cfg["num_hidden_layers"] == TEST_TINY["num_layers"]


def test_weights_names_shapes_and_values(tiny: Path) -> None:
    import torch
    from safetensors.torch import load_file

    w = load_file(str(tiny / "model.safetensors"))
    n_layers, h = TEST_TINY["num_layers"], TEST_TINY["hidden_size"]
    kv = TEST_TINY["num_kv_heads"] * 64
    inter, vocab = TEST_TINY["intermediate_size"], TEST_TINY["vocab_size"]
    expected = {
        "model.embed_tokens.weight": (vocab, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (vocab, h),
    }
    for i in range(n_layers):
        p = f"model.layers.{i}."
        expected |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    assert {k: tuple(v.shape) for k, v in w.items()} == expected
    assert all(v.dtype == torch.bfloat16 for v in w.values())
    assert sum(v.numel() for v in w.values()) == count_parameters(**TEST_TINY)
    assert torch.equal(w["model.norm.weight"], torch.ones(h, dtype=torch.bfloat16))
    emb = w["model.embed_tokens.weight"].float()
    assert 0.015 < emb.std().item() < 0.025
    # lm_head is its own random matrix (not tied), so logits do not tie.
    assert not torch.equal(w["lm_head.weight"], w["model.embed_tokens.weight"])


def test_bench_preset_is_about_89m() -> None:
    n = count_parameters(**BENCH_89M)
    assert 88_000_000 <= n <= 90_000_000, n
    assert BENCH_89M["hidden_size"] == 1024 and BENCH_89M["num_layers"] == 8
    assert BENCH_89M["hidden_size"] // BENCH_89M["num_heads"] == 64
    assert BENCH_89M["num_kv_heads"] == 4
    assert set(PRESETS) == {"test", "bench"}


def test_tokenizer_round_trip(tiny: Path) -> None:
    tok = load_tokenizer(tiny)
    assert tok.get_vocab_size() == TEST_TINY["vocab_size"]
    assert [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    for text in (
        "The quick brown fox jumped over 1234 lazy dogs!",
        "  spaces\tand\nnewlines ",
        "Ünïcödé 日本語 ✓ emoji 🙂",
    ):
        enc = tok.encode(text)
        assert enc.ids[0] == 1  # BOS
        assert 0 not in enc.ids  # byte-level: nothing is unknown
        assert tok.decode(enc.ids) == text
    # BPE merges exist: ordinary words take fewer tokens than bytes.
    text = next(synthetic_corpus(10))
    assert len(tok.encode(text).ids) < len(text.encode()) / 2


def test_tokenizer_config(tiny: Path) -> None:
    cfg = json.loads((tiny / "tokenizer_config.json").read_text())
    assert (cfg["bos_token"], cfg["eos_token"]) == ("<s>", "</s>")


def test_synthetic_documents(tiny: Path) -> None:
    tok = load_tokenizer(tiny)
    docs = synthetic_documents(5, 300, seed=3, tokenizer=tiny)
    assert len(docs) == len(set(docs)) == 5
    assert docs == synthetic_documents(5, 300, seed=3, tokenizer=tok)
    assert docs != synthetic_documents(5, 300, seed=4, tokenizer=tok)
    lens = [len(tok.encode(d).ids) for d in docs]
    assert all(280 <= n <= 300 for n in lens), lens
    # Distinct from the first few tokens: no shared 32-token block between documents.
    heads = {tuple(tok.encode(d).ids[:32]) for d in docs}
    assert len(heads) == 5
    # Without a tokenizer: an estimate, still distinct and deterministic.
    rough = synthetic_documents(3, 300, seed=3)
    assert len(set(rough)) == 3 and rough == synthetic_documents(3, 300, seed=3)
    assert all(150 <= len(tok.encode(d).ids) <= 600 for d in rough)


def test_rejects_bad_head_dim(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_llama(tmp_path / "bad", hidden_size=256, num_heads=16, num_kv_heads=4)


def test_cli_and_seed(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "cli"), "--preset", "test", "--seed", "1"]) == 0
    assert "parameters" in capsys.readouterr().out
    a, b = _digests(tiny), _digests(tmp_path / "cli")
    assert a["model.safetensors"] != b["model.safetensors"]  # another seed, other weights
    assert a["config.json"] == b["config.json"]


def test_transformers_loads(tiny: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.from_pretrained(str(tiny))
    assert cfg.model_type == "llama"
    assert cfg.head_dim == 64
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny))
    ids = tok("hello world")["input_ids"]
    assert ids[0] == 1
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    assert tok.eos_token_id == 2


def test_transformers_model_loads_weights(tiny: Path) -> None:
    """Every tensor maps onto HF's LlamaForCausalLM (no missing or unexpected keys)."""
    transformers = pytest.importorskip("transformers")
    import torch

    model, info = transformers.LlamaForCausalLM.from_pretrained(
        str(tiny), dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        logits = model(torch.tensor([[1, 50, 60, 70]])).logits[0, -1]
    top2 = logits.topk(2).values
    assert top2[0] - top2[1] > 1e-4  # real random weights: no ties
