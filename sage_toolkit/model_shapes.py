"""The parameter names and shapes of fairseq's TransformerModel (post-norm, sinusoidal positions), for benchmarks and
GPU checks that time an optimizer step on a real model's tensors without building the model (tested against fairseq's
own parameter counts in tests/test_bench_scripts.py)."""

from __future__ import annotations


def _attention(prefix: str, d: int) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
        out += [(f"{prefix}.{proj}.weight", (d, d)), (f"{prefix}.{proj}.bias", (d,))]
    return out


def _norm(prefix: str, d: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.weight", (d,)), (f"{prefix}.bias", (d,))]


def transformer_shapes(layers, d, ffn, src_vocab, tgt_vocab, share_all, share_dec_io):
    """fairseq's TransformerModel parameters (post-norm, sinusoidal positions): names and shapes."""
    shapes = [("encoder.embed_tokens.weight", (src_vocab, d))]
    for i in range(layers):
        p = f"encoder.layers.{i}"
        shapes += _attention(f"{p}.self_attn", d) + _norm(f"{p}.self_attn_layer_norm", d)
        shapes += [(f"{p}.fc1.weight", (ffn, d)), (f"{p}.fc1.bias", (ffn,))]
        shapes += [(f"{p}.fc2.weight", (d, ffn)), (f"{p}.fc2.bias", (d,))] + _norm(f"{p}.final_layer_norm", d)
    if not share_all:
        shapes.append(("decoder.embed_tokens.weight", (tgt_vocab, d)))
    for i in range(layers):
        p = f"decoder.layers.{i}"
        shapes += _attention(f"{p}.self_attn", d) + _norm(f"{p}.self_attn_layer_norm", d)
        shapes += _attention(f"{p}.encoder_attn", d) + _norm(f"{p}.encoder_attn_layer_norm", d)
        shapes += [(f"{p}.fc1.weight", (ffn, d)), (f"{p}.fc1.bias", (ffn,))]
        shapes += [(f"{p}.fc2.weight", (d, ffn)), (f"{p}.fc2.bias", (d,))] + _norm(f"{p}.final_layer_norm", d)
    if not (share_all or share_dec_io):
        shapes.append(("decoder.output_projection.weight", (tgt_vocab, d)))
    return shapes
