"""Quantization schemes: one validated dataclass per named scheme, built from quantization formats.

A :class:`QuantFormat` says how one tensor is quantized (number format, bits, symmetry,
granularity); a :class:`Scheme` says which tensors are quantized with which format: the weights of
every linear layer in the blocks, their input activations (dynamic, or static per-tensor scales
from calibration), and optionally k and v after projection. Embeddings and ``lm_head`` stay in
high precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from qsink.errors import QsinkError
from qsink.quant import primitives as P
from qsink.registry import Registry


@dataclass(frozen=True)
class Granularity:
    """Where one scale applies: 'tensor', 'channel' (a weight's output row), 'token' (an activation
    row) or 'group' (``size`` consecutive input elements)."""

    kind: str
    size: int | None = None

    def __post_init__(self):
        if self.kind not in ("tensor", "channel", "token", "group"):
            raise ValueError(f"unknown granularity {self.kind!r}; use tensor, channel, token or group")
        if (self.kind == "group") != (self.size is not None):
            raise ValueError("a group granularity needs a size, and only it has one")
        if self.size is not None and self.size < 1:
            raise ValueError("group size must be positive")

    def __str__(self) -> str:
        return f"group{self.size}" if self.kind == "group" else f"per-{self.kind}"


PER_TENSOR, PER_CHANNEL, PER_TOKEN = Granularity("tensor"), Granularity("channel"), Granularity("token")


def per_group(size: int) -> Granularity:
    return Granularity("group", size)


FORMATS = ("int", "mxfp4", "nvfp4", "nf4", "fp4", "fp8", "gguf", "q8")  # gguf: llama.cpp weight types; q8: its CPU activation rounding
BLOCKED = {"mxfp4": 32, "nvfp4": 16}  # block sizes fixed by the format specs


@dataclass(frozen=True)
class QuantFormat:
    dtype: str  # one of FORMATS
    bits: int = 8  # integer width (int only)
    symmetric: bool = True
    granularity: Granularity = PER_CHANNEL
    gguf_type: str = ""  # gguf: Q4_K, Q8_0, ... (or F16, a fallback); q8: Q8_0 or Q8_K

    def __post_init__(self):
        if self.dtype not in FORMATS:
            raise ValueError(f"unknown number format {self.dtype!r}; known: {', '.join(FORMATS)}")
        if self.dtype in ("gguf", "q8"):
            from qsink.quant import gguf_formats as G

            known = (*G.TYPES, "F16") if self.dtype == "gguf" else ("Q8_0", "Q8_K")
            if self.gguf_type not in known:
                raise ValueError(f"{self.dtype} format needs gguf_type in {', '.join(known)}, not {self.gguf_type!r}")
        elif self.gguf_type:
            raise ValueError("only gguf and q8 formats take a gguf_type")
        if self.dtype == "int":
            P.int_range(self.bits, self.symmetric)  # validates 2..8
        if self.dtype in BLOCKED and self.granularity != per_group(BLOCKED[self.dtype]):
            raise ValueError(f"{self.dtype} uses blocks of {BLOCKED[self.dtype]}; use per_group({BLOCKED[self.dtype]})")
        if self.dtype in ("nf4", "fp4") and self.granularity.kind != "group":
            raise ValueError(f"{self.dtype} uses a blockwise absmax; give it a group granularity")

    @property
    def row_granularity(self) -> str:
        return {"tensor": "tensor", "channel": "row", "token": "row", "group": "group"}[self.granularity.kind]

    def fake(self, x: torch.Tensor, clip_ratio: float = 1.0, scale: torch.Tensor | None = None,
             importance: torch.Tensor | None = None) -> torch.Tensor:
        """``dequantize(quantize(x))``; ``scale`` is a static scale (int, symmetric only); ``importance``
        weights each input column in the search of llama.cpp's K-quants (its importance matrix)."""
        g = self.granularity
        if self.dtype in ("gguf", "q8"):
            from qsink.quant import gguf_formats as G

            if self.dtype == "q8":
                return G.fake_activation(x, self.gguf_type)
            if clip_ratio != 1.0:  # a clipping search shrinks each row's range before encoding
                lim = x.abs().amax(dim=-1, keepdim=True) * clip_ratio
                x = torch.maximum(torch.minimum(x, lim), -lim)
            return G.fake_weight(x, self.gguf_type, importance)
        if self.dtype == "int":
            return P.fake_int(x, self.bits, self.symmetric, self.row_granularity, g.size, clip_ratio, scale)
        if self.dtype == "mxfp4":
            return P.fake_mxfp4(x, g.size)
        if self.dtype == "nvfp4":
            return P.fake_nvfp4(x, g.size)
        if self.dtype == "nf4":
            return P.fake_nf4(x, g.size)
        if self.dtype == "fp4":
            return P.fake_fp4(x, g.size)
        return P.fake_fp8(x, "tensor" if g.kind == "tensor" else "row")

    def qmax(self) -> float:
        """Largest representable code magnitude (for static scales)."""
        if self.dtype != "int":
            raise ValueError("static scales are implemented for integer formats only")
        return float(2 ** (self.bits - 1) - 1)

    def __str__(self) -> str:
        if self.dtype in ("gguf", "q8"):
            return self.gguf_type
        name = f"int{self.bits}{'' if self.symmetric else '-asym'}" if self.dtype == "int" else self.dtype
        return f"{name} {self.granularity}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["granularity"] = str(self.granularity)
        if not self.gguf_type:
            del d["gguf_type"]  # the records of the other formats keep the identity they had
        return d


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    weight: QuantFormat | None = None
    act: QuantFormat | None = None
    act_static: bool = False  # per-tensor activation scales fixed from calibration data
    kv: QuantFormat | None = None  # k and v after projection (before RoPE), per token
    ftype: str | None = None  # a llama.cpp file type (Q4_K_M, ...): each linear's GGUF type by llama.cpp's rule
    cpu_acts: bool = False  # with ftype: inputs rounded as llama.cpp's CPU matmuls do (Q8_0 / Q8_K per weight type)
    # per-linear weight formats that differ from ``weight`` (``("11.mlp.down_proj", fmt)``): a mixture chosen
    # for one model (qsink advise); linears are named as QLinear names them, LAYER.NAME
    overrides: tuple[tuple[str, QuantFormat], ...] = ()

    def __post_init__(self):
        if self.overrides and self.ftype is not None:
            raise ValueError("a scheme takes per-linear overrides or a llama.cpp file type's rule, not both")
        if self.act_static and (self.act is None or self.act.dtype != "int" or not self.act.symmetric
                                or self.act.granularity != PER_TENSOR):
            raise ValueError("static activation scales need a symmetric per-tensor integer activation format")

    @property
    def quantizes_activations(self) -> bool:
        return self.act is not None

    def weight_format_for(self, name: str, layer: int, n_layers: int, in_features: int, n_gqa: int = 1,
                          has_imatrix: bool = False) -> QuantFormat | None:
        """The weight format of one block linear (``name`` as the adapter names it, e.g.
        ``self_attn.v_proj``; ``layer`` of ``n_layers``; rows of ``in_features``). One format for
        every linear here; mixtures (llama.cpp's Q4_K_M, say) choose per linear."""
        if self.ftype is None:
            fmt = dict(self.overrides).get(f"{layer}.{name}", self.weight) if self.overrides else self.weight
            if fmt is not None and fmt.dtype == "gguf" and fmt.gguf_type != "F16":  # rows that do not split into
                from qsink.quant import gguf_formats as G  # the type's blocks get llama.cpp's fallback type

                return gguf_format(G.usable_type(fmt.gguf_type, in_features)[0])
            return fmt
        return gguf_format(self.gguf_choice(name, layer, n_layers, in_features, n_gqa, has_imatrix)[0])

    def gguf_choice(self, name: str, layer: int, n_layers: int, in_features: int, n_gqa: int = 1,
                    has_imatrix: bool = False) -> tuple[str, str | None]:
        """(GGUF type, why it fell back or None) of one linear under this scheme's llama.cpp file type."""
        from qsink.quant import gguf_formats as G

        return G.tensor_type(self.ftype, G.role_of(name), layer, n_layers, in_features, n_gqa, has_imatrix)

    def kv_format(self, head_dim: int) -> QuantFormat | None:
        """The format of k and v after projection: the scheme's KV bits, one scale per head."""
        return None if self.kv is None else QuantFormat(self.kv.dtype, self.kv.bits, self.kv.symmetric, per_group(head_dim))

    def act_format_for(self, weight: QuantFormat | None) -> QuantFormat | None:
        """The input format of a linear whose weight format is ``weight``: the scheme's, or with
        ``cpu_acts`` the rounding llama.cpp's CPU backend applies for that weight type."""
        if not self.cpu_acts or weight is None or weight.dtype != "gguf" or weight.gguf_type == "F16":
            return self.act if not self.cpu_acts else None
        from qsink.quant import gguf_formats as G

        return QuantFormat("q8", granularity=per_group(256 if G.ACT_TYPE[weight.gguf_type] == "Q8_K" else 32),
                           gguf_type=G.ACT_TYPE[weight.gguf_type])

    def with_kv(self, bits: int | None) -> "Scheme":
        if not bits:
            return self
        return replace(self, name=f"{self.name}+kv{bits}", kv=QuantFormat("int", bits, True, PER_TOKEN))

    def to_dict(self) -> dict:
        d = {"name": self.name, "description": self.description,
             "weight": self.weight.to_dict() if self.weight else None,
             "act": self.act.to_dict() if self.act else None, "act_static": self.act_static,
             "kv": self.kv.to_dict() if self.kv else None}
        if self.ftype:
            d.update(ftype=self.ftype, cpu_acts=self.cpu_acts)
        if self.overrides:  # only mixtures carry the key: the other schemes keep the identity they had
            d["overrides"] = {name: fmt.to_dict() for name, fmt in self.overrides}
        return d


SCHEMES: Registry[Scheme] = Registry("scheme")


def _add(scheme: Scheme) -> None:
    SCHEMES.add(scheme.name, scheme)


INT8_W = QuantFormat("int", 8, True, PER_CHANNEL)
INT4_W = QuantFormat("int", 4, True, PER_CHANNEL)
INT8_A = QuantFormat("int", 8, True, PER_TOKEN)

_add(Scheme("fp", "no quantization: the model in its load dtype (the reference every delta is taken against)"))
_add(Scheme("w8a8", "int8 per-channel weights, dynamic per-token int8 activations", INT8_W, INT8_A))
_add(Scheme("w8a8-static", "int8 per-channel weights, static per-tensor int8 activation scales from calibration "
            "(the outlier-sensitive one)", INT8_W, QuantFormat("int", 8, True, PER_TENSOR), act_static=True))
_add(Scheme("w4a16", "int4 asymmetric group-128 weights, activations in high precision",
            QuantFormat("int", 4, False, per_group(128))))
_add(Scheme("w4a8", "int4 per-channel weights, dynamic per-token int8 activations", INT4_W, INT8_A))
_add(Scheme("w4a4", "int4 per-channel weights, dynamic per-token int4 activations", INT4_W,
            QuantFormat("int", 4, True, PER_TOKEN)))
_add(Scheme("mxfp4", "MXFP4 weights and activations (E2M1, blocks of 32, power-of-two scales; OCP MX v1.0)",
            QuantFormat("mxfp4", 4, True, per_group(32)), QuantFormat("mxfp4", 4, True, per_group(32))))
_add(Scheme("nvfp4", "NVFP4 weights and activations (E2M1, blocks of 16, FP8-E4M3 block scales x FP32 tensor scale)",
            QuantFormat("nvfp4", 4, True, per_group(16)), QuantFormat("nvfp4", 4, True, per_group(16))))
_add(Scheme("nf4", "NF4 weights (QLoRA normal-float levels, blocks of 64), activations in high precision",
            QuantFormat("nf4", 4, True, per_group(64))))
_add(Scheme("fp4", "bitsandbytes FP4 weights (blocks of 64), activations in high precision",
            QuantFormat("fp4", 4, True, per_group(64))))
_add(Scheme("fp8", "FP8-E4M3 per-channel weights and per-token activations (a reference point)",
            QuantFormat("fp8", 8, True, PER_CHANNEL), QuantFormat("fp8", 8, True, PER_TOKEN)))


def gguf_format(qtype: str) -> QuantFormat:
    """The weight format of one GGUF type (F16: llama.cpp's last fallback)."""
    from qsink.quant import gguf_formats as G

    return QuantFormat("gguf", granularity=PER_CHANNEL if qtype == "F16" else per_group(G.BLOCK[qtype]), gguf_type=qtype)


def _add_gguf() -> None:
    """llama.cpp's file types as schemes: ``gguf-q4_k_m`` keeps activations in high precision (as GPU
    backends that dequantize weights do), ``gguf-q4_k_m-cpu`` also rounds every matmul's input as
    llama.cpp's CPU backend does (Q8_0 blocks of 32 for legacy types, Q8_K blocks of 256 for K-quants)."""
    from qsink.quant import gguf_formats as G

    for ftype, default in G.FTYPES.items():
        mixture = ftype != default
        what = (f"llama.cpp {ftype}: {default} weights, some tensors raised by llama.cpp's per-tensor rule"
                if mixture else f"llama.cpp {ftype}: {default} weights")
        what += " (fallback types for rows that do not split into blocks)"
        _add(Scheme(f"gguf-{ftype.lower()}", what + "; activations in high precision", gguf_format(default),
                    ftype=ftype))
        act = G.ACT_TYPE[default]
        _add(Scheme(f"gguf-{ftype.lower()}-cpu", what + f"; inputs rounded as llama.cpp's CPU matmuls do ({act})",
                    gguf_format(default), QuantFormat("q8", granularity=per_group(256 if act == "Q8_K" else 32),
                                                      gguf_type=act), ftype=ftype, cpu_acts=True))


_add_gguf()


def get_scheme(name: str) -> Scheme:
    """A scheme by name; ``NAME+kvB`` adds B-bit k/v quantization (e.g. ``w4a4+kv4``)."""
    base, _, kv = name.partition("+kv")
    scheme = SCHEMES.get(base)
    if kv:
        if not kv.isdigit():
            raise QsinkError(f"bad KV suffix in {name!r}; write e.g. {base}+kv8")
        try:
            return scheme.with_kv(int(kv))
        except ValueError as e:
            raise QsinkError(f"{name}: {e}") from None
    return scheme
