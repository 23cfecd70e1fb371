"""qsink's own Llama-style model family, registered with transformers' Auto classes on import."""

from transformers import AutoConfig, AutoModelForCausalLM

from qsink.models.adapter import FamilyAdapter, register_adapter
from qsink.models.family.config import VARIANTS, QsinkConfig
from qsink.models.family.modeling import QsinkForCausalLM

AutoConfig.register("qsink", QsinkConfig, exist_ok=True)
AutoModelForCausalLM.register(QsinkConfig, QsinkForCausalLM, exist_ok=True)

_PATHS = dict(blocks_path="model.layers", embed_path="model.embed_tokens", final_norm_path="model.norm",
              attn="self_attn", input_norm="input_layernorm", post_attn_norm="post_attention_layernorm", mlp="mlp")


def _specialize(model) -> FamilyAdapter:
    """Parts live where Llama's do. What the function-preserving rewrites may do depends on the norm:

    * SmoothQuant divides a norm's per-channel scale (and bias) by s and multiplies the readers'
      columns by s. That needs a norm whose output is read only by linears: every variant except
      ``postnorm`` (whose norm output is the residual stream itself).
    * Folding a residual rotation into the weights (QuaRot) also needs norms that commute with
      rotations once their scale is fused away, and nothing but linears writing the residual:
      ``prenorm-rmsnorm`` and ``qknorm`` only. Sandwich norms sit on the residual writes, DyT is
      elementwise and LayerNorm subtracts the mean; for those Hadamard rotates each linear's input
      online instead (see :mod:`qsink.quant.handling.hadamard`).
    """
    cfg = model.config
    if cfg.norm == "postnorm":
        return FamilyAdapter("qsink", ("qsink",), **_PATHS)
    attn_readers = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    if cfg.gate in ("head", "channel"):
        attn_readers += ("self_attn.gate_proj",)
    writers = ("self_attn.o_proj", "mlp.o_proj" if cfg.ffn == "none" else "mlp.down_proj")
    if cfg.ffn == "none":
        ffn_readers, ffn_pair = ("mlp.q_proj", "mlp.k_proj", "mlp.v_proj"), None
    else:
        ffn_readers = ("mlp.gate_proj", "mlp.up_proj") if cfg.ffn == "swiglu" else ("mlp.up_proj",)
        ffn_pair = ("mlp.up_proj", "mlp.down_proj") if cfg.ffn in ("swiglu", "linear") else None  # gelu(up) is not linear
    return FamilyAdapter("qsink", ("qsink",), **_PATHS,
                         norm_groups=(("input_layernorm", attn_readers), ("post_attention_layernorm", ffn_readers)),
                         residual_writers=writers, value_pair=("self_attn.v_proj", "self_attn.o_proj"), ffn_pair=ffn_pair,
                         rotate_residual=cfg.norm in ("prenorm-rmsnorm", "qknorm"))


register_adapter(FamilyAdapter("qsink", ("qsink",), **_PATHS, specialize=_specialize))

__all__ = ["VARIANTS", "QsinkConfig", "QsinkForCausalLM"]
