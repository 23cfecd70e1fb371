"""The configuration of qsink's own Llama-style model family, saved in every checkpoint.

One ``PretrainedConfig`` (``model_type="qsink"``) carries every switch the seed papers ablate, one
component at a time ("The Spike, the Sparse and the Sink", arXiv 2603.05498; "Attention Sinks
Induce Gradient Sinks", arXiv 2603.17771). Named presets live in :data:`VARIANTS`.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from qsink.errors import QsinkError
from qsink.validate import above, at_least, check_value

NORMS = ("prenorm-rmsnorm", "sandwich", "qknorm", "sandwich-qk", "dyt", "postnorm", "layernorm")
GATES = ("none", "head", "channel", "static-head")
FFNS = ("swiglu", "gelu", "linear", "none")
SOFTMAXES = ("standard", "softmax1", "clipped")
SWITCHES = ("norm", "gate", "vscale", "ffn", "softmax")  # the config fields a variant changes

# field -> (type, smallest allowed value or None); QsinkConfig.check reads it
FIELD_TYPES: dict[str, tuple[object, float | None]] = {
    "vocab_size": (int, 1), "hidden_size": (int, 1), "num_hidden_layers": (int, 1), "num_attention_heads": (int, 1),
    "num_key_value_heads": (int, 1), "head_dim": (int | None, 2), "intermediate_size": (int | None, 1),
    "max_position_embeddings": (int, 1), "rope_theta": (float, None), "vscale": (bool, None), "clip_gamma": (float, None),
    "clip_zeta": (float, None), "dyt_alpha_init": (float, None), "norm_eps": (float, 0), "initializer_range": (float, 0),
    "tie_word_embeddings": (bool, None),
}


def _head_counts(hidden_size: int) -> str:
    """Head counts up to 64 that split ``hidden_size`` into even head widths, for error messages."""
    counts = [h for h in range(1, min(hidden_size, 64) + 1) if hidden_size % h == 0 and hidden_size // h % 2 == 0]
    return "e.g. " + ", ".join(map(str, counts)) if counts else "none exists for an odd hidden_size; make it even"


class QsinkConfig(PretrainedConfig):
    model_type = "qsink"

    def __init__(
        self,
        vocab_size: int = 4096,
        hidden_size: int = 256,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 4,
        head_dim: int | None = None,  # set independently of n_heads; default hidden_size / n_heads
        intermediate_size: int | None = None,  # default: 8/3 hidden for swiglu, 4 hidden otherwise
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
        norm: str = "prenorm-rmsnorm",  # where and which normalizer (see NORMS)
        gate: str = "none",  # attention-output gating (Qiu et al. 2025, arXiv 2505.06708)
        vscale: bool = False,  # learned per-layer, per-head scale on the value path (arXiv 2603.17771)
        ffn: str = "swiglu",  # "none": the FFN is replaced by a second attention layer
        softmax: str = "standard",  # "softmax1": an extra zero logit; "clipped": Bondarenko et al. 2023
        clip_gamma: float = -0.03,  # clipped softmax: clip((zeta - gamma) * p + gamma, 0, 1)
        clip_zeta: float = 1.0,
        dyt_alpha_init: float = 0.5,  # DynamicTanh's scalar alpha at init (Zhu et al. 2025, arXiv 2503.10622)
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        for name, value, allowed in (("norm", norm, NORMS), ("gate", gate, GATES), ("ffn", ffn, FFNS),
                                     ("softmax", softmax, SOFTMAXES)):
            if value not in allowed:
                raise QsinkError(f"model config: unknown {name} {value!r}; choose from {', '.join(allowed)}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = kwargs.pop("num_key_value_heads", num_attention_heads)  # saved configs carry it
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.norm, self.gate, self.vscale, self.ffn, self.softmax = norm, gate, vscale, ffn, softmax
        self.clip_gamma, self.clip_zeta = clip_gamma, clip_zeta
        self.dyt_alpha_init = dyt_alpha_init
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self.check()
        if head_dim is None:
            self.head_dim = hidden_size // num_attention_heads
        if intermediate_size is None:
            self.intermediate_size = (8 * hidden_size // 3 + 63) // 64 * 64 if ffn == "swiglu" else 4 * hidden_size
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    def _check_values(self) -> None:
        """Each field's type and lower bound (:data:`FIELD_TYPES`)."""
        for name, (kind, low) in FIELD_TYPES.items():
            value = getattr(self, name)
            check_value(name, value, kind, "model config: ")
            if low is not None:
                at_least("model config: ", **{name: (value, low)})

    def check(self) -> None:
        """Raise :class:`QsinkError` unless the fields build a model.

        Beyond types and lower bounds (:data:`FIELD_TYPES`) the modeling code needs whole heads
        (``hidden_size`` divisible by ``num_attention_heads`` unless ``head_dim`` is set), an even
        head width (RoPE rotates channel pairs), one key/value head per query head (no grouped-query
        attention) and a positive ``rope_theta``.
        """
        self._check_values()
        D, H = self.hidden_size, self.num_attention_heads
        if self.head_dim is None and D % H:
            raise QsinkError(f"model config: hidden_size {D} is not divisible by num_attention_heads {H}; use a head "
                             f"count that divides it ({_head_counts(D)}) or set head_dim")
        d = D // H if self.head_dim is None else self.head_dim
        if d % 2:
            raise QsinkError(f"model config: head_dim {d} is odd, but RoPE rotates channel pairs; use a head count "
                             f"that leaves an even head_dim ({_head_counts(D)}) or set an even head_dim")
        if self.num_key_value_heads != H:
            raise QsinkError(f"model config: num_key_value_heads {self.num_key_value_heads} differs from "
                             f"num_attention_heads {H}; qsink models have no grouped-query attention, so leave "
                             f"num_key_value_heads out")
        above("model config: ", rope_theta=(self.rope_theta, 0))

    @property
    def sandwich(self) -> bool:
        return self.norm in ("sandwich", "sandwich-qk")

    @property
    def qk_norm(self) -> bool:
        return self.norm in ("qknorm", "sandwich-qk")


# one component changed at a time from the baseline
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "sandwich": {"norm": "sandwich"},
    "qknorm": {"norm": "qknorm"},
    "sandwich-qk": {"norm": "sandwich-qk"},
    "dyt": {"norm": "dyt"},
    "postnorm": {"norm": "postnorm"},
    "layernorm": {"norm": "layernorm"},
    "gate-head": {"gate": "head"},
    "gate-channel": {"gate": "channel"},
    "gate-static-head": {"gate": "static-head"},
    "vscale": {"vscale": True},
    "gelu": {"ffn": "gelu"},
    "linear-ffn": {"ffn": "linear"},
    "attn-only": {"ffn": "none"},
    "softmax1": {"softmax": "softmax1"},
    "clipped-softmax": {"softmax": "clipped"},
}
