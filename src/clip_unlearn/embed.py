"""Batched text and image encoding (the hot path).

Text: CLIP's text tower is causal and pools at the end-of-text token, so running only the
first L positions (L = the longest prompt in the batch) gives the same features as open_clip's
fixed context while skipping the padding (DESIGN.md §5: ~3.7× faster for IDIA-style prompts).
"""

from __future__ import annotations

from typing import Any


def supports_truncation(model: Any) -> bool:
    """Only the standard causal CLIP text tower pooled at EOT may be cut to the prompt length."""
    return (
        hasattr(model, "positional_embedding")
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")
    )


def encode_text(model: Any, tokens: Any, normalize: bool = True) -> Any:
    """``model.encode_text`` computed over the first L token positions only (same features)."""
    import torch.nn.functional as F

    if not supports_truncation(model):
        return model.encode_text(tokens, normalize=normalize)
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :max(1, length)]
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if hasattr(model.text_projection, "weight") else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x
