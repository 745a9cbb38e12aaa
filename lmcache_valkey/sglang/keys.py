"""Key names of HiCache pages, and the format tag that keeps deployments apart.

SGLang names a page by its chained SHA-256 hash, the same string on every TP
rank. A page's bytes depend on much more: the model, which shard of the heads
this rank holds, the pipeline stage, and how the host pool lays a page out.
The key carries all of it, so two deployments whose bytes differ can never
read each other's values::

    <key_prefix><model>:<format tag>:<tp_rank>:<tp_size>[:pp<r>-<n>][:cp<r>-<n>]:<hash>   (MHA)
    <key_prefix><model>:<format tag>[:pp<r>-<n>][:cp<r>-<n>][:dcp<r>-<n>]:<hash>        (MLA)

MLA KV is the same on every TP rank (SGLang writes it from one rank), so its
keys name no TP rank; pipeline stages hold different layers and context-
parallel ranks different slices, so both are named when their size is > 1.
The client adds ``key_prefix``.

The format tag names the byte order of a stored value (the layout family),
the dtype and the page geometry. ``layer_first`` and ``page_first_direct``
store a page in the same order (K of every layer, then V; the zero-copy path
reorders ``layer_first``'s per-layer runs to match), so they share values,
and so do the zero-copy and the generic interfaces of one layout family.
``page_first`` pages are token-major: another family.
"""

from __future__ import annotations

from typing import Any

#: Bumped whenever the stored value layout changes, so old values become misses.
FORMAT_VERSION = 1

# Byte order of a page value, per host-pool layout. A layout not listed is a
# family of its own (its name), so it shares values with nothing else.
_LAYOUT_FAMILY = {
    "layer_first": "lt",        # [K|V][layer][token][head][dim]
    "page_first_direct": "lt",
    "page_first": "tl",         # [K|V][token][layer][head][dim]
    "page_head": "htl",         # [K|V][head][token][layer][dim]
}


def format_tag(pool: Any, is_mla: bool) -> str:
    """e.g. ``v1.mha.lt.bfloat16.p16.l32.8x128`` (see the module docstring)."""
    layout = str(getattr(pool, "layout", "?"))
    family = _LAYOUT_FAMILY.get(layout, layout.replace(":", "_"))
    dtype = str(getattr(pool, "dtype", "?")).removeprefix("torch.")
    layers = getattr(pool, "layer_num", "?")
    if is_mla:
        geometry = f"{getattr(pool, 'kv_cache_dim', '?')}"
    else:
        head_dim = getattr(pool, "head_dim", "?")
        v_head_dim = getattr(pool, "v_head_dim", head_dim)
        geometry = f"{getattr(pool, 'head_num', '?')}x{head_dim}"
        if v_head_dim != head_dim:
            geometry += f"v{v_head_dim}"
    kind = "mla" if is_mla else "mha"
    return f"v{FORMAT_VERSION}.{kind}.{family}.{dtype}.p{pool.page_size}.l{layers}.{geometry}"


def page_namespace(storage_config: Any, pool: Any) -> str:
    """Everything before the page hash (without the client's key prefix)."""
    c = storage_config
    is_mla = bool(getattr(c, "is_mla_model", False))
    parts = [str(getattr(c, "model_name", None) or ""), format_tag(pool, is_mla)]
    if not is_mla:
        parts += [str(c.tp_rank), str(c.tp_size)]
    for name, rank, size in (("pp", "pp_rank", "pp_size"),
                             ("cp", "attn_cp_rank", "attn_cp_size"),
                             ("dcp", "dcp_rank", "dcp_size")):
        n = int(getattr(c, size, 1) or 1)
        if n > 1:
            parts.append(f"{name}{getattr(c, rank, 0)}-{n}")
    return ":".join(parts) + ":"
