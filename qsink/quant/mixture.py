"""Mixtures: one weight format for the model, other formats for named linears, and what each costs in bits.

A mixture is written down as a spec (what an eval recipe's ``mixtures:`` holds and what ``qsink
advise`` writes)::

    advised-smollm2:
      weight: q4_k            # the format of every linear not named below
      act: null               # or int8, int4, mxfp4, nvfp4, fp8 (per token / per block)
      overrides: {1.mlp.down_proj: q8_0, 0.self_attn.v_proj: q6_k}
      description: ...

and becomes a :class:`~qsink.quant.schemes.Scheme` with ``overrides``, registered under its name so
that cells, records and recipes name it like any scheme. Format names are those of
:data:`WEIGHT_FORMATS` and :data:`ACT_FORMATS`; a GGUF type on rows that do not split into its blocks
gets llama.cpp's fallback type, as in a GGUF file.

Bits per weight count the scales as deployed formats store them: a per-group int format an fp16
scale and an fp16 zero per group (asymmetric), a per-channel one an fp16 scale per row, MXFP4 an
8-bit scale per 32, NVFP4 an FP8 scale per 16, FP8 an fp16 scale per row, GGUF types llama.cpp's
bits per weight (:data:`qsink.quant.gguf_formats.BITS`).
"""

from __future__ import annotations

from qsink.errors import QsinkError
from qsink.quant.schemes import PER_CHANNEL, PER_TOKEN, SCHEMES, QuantFormat, Scheme, gguf_format, per_group

WEIGHT_FORMATS: dict[str, QuantFormat] = {
    "int3-g128": QuantFormat("int", 3, False, per_group(128)),
    "int4-g128": QuantFormat("int", 4, False, per_group(128)),
    "int5-g128": QuantFormat("int", 5, False, per_group(128)),
    "int6-g128": QuantFormat("int", 6, False, per_group(128)),
    "int8": QuantFormat("int", 8, True, PER_CHANNEL),
    **{t.lower(): gguf_format(t) for t in ("Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")},
    "mxfp4": QuantFormat("mxfp4", 4, True, per_group(32)),
    "nvfp4": QuantFormat("nvfp4", 4, True, per_group(16)),
    "fp8": QuantFormat("fp8", 8, True, PER_CHANNEL),
}
ACT_FORMATS: dict[str, QuantFormat] = {
    "int8": QuantFormat("int", 8, True, PER_TOKEN),
    "int4": QuantFormat("int", 4, True, PER_TOKEN),
    "mxfp4": QuantFormat("mxfp4", 4, True, per_group(32)),
    "nvfp4": QuantFormat("nvfp4", 4, True, per_group(16)),
    "fp8": QuantFormat("fp8", 8, True, PER_TOKEN),
}
ACT_BITS = {"int4": 4.0, "mxfp4": 4.25, "nvfp4": 4.5, "int8": 8.0, "fp8": 8.0}  # bits per activation value, scales included
REGISTERED: set[str] = set()  # the mixtures registered in this process (not built-in schemes)
# the weight formats of each family, cheapest first: what --formats chooses among
FAMILIES: dict[str, tuple[str, ...]] = {
    "int": ("int3-g128", "int4-g128", "int6-g128", "int8"),
    "gguf": ("q2_k", "q3_k", "q4_0", "q4_1", "q4_k", "q5_0", "q5_1", "q5_k", "q6_k", "q8_0"),  # every type qsink encodes
    "mx": ("mxfp4", "fp8"),
    "nv": ("nvfp4", "fp8"),
}


def format_name(fmt: QuantFormat) -> str:
    """The catalog name of a weight format (``q4_k``, ``int4-g128``)."""
    for name, f in WEIGHT_FORMATS.items():
        if f == fmt:
            return name
    if fmt.dtype == "gguf":
        return fmt.gguf_type.lower()
    raise QsinkError(f"weight format {fmt} has no name in the mixture catalog")


def weight_format(name: str) -> QuantFormat:
    try:
        return WEIGHT_FORMATS[name.lower()]
    except KeyError:
        raise QsinkError(f"unknown weight format {name!r}; known: {', '.join(WEIGHT_FORMATS)}") from None


def act_format(name: str | None) -> QuantFormat | None:
    if name in (None, "", "none", "fp16", "a16"):
        return None
    try:
        return ACT_FORMATS[name.lower()]
    except KeyError:
        raise QsinkError(f"unknown activation format {name!r}; known: none, {', '.join(ACT_FORMATS)}") from None


def ladder(families: list[str]) -> list[str]:
    """The weight formats of ``families`` (``int``, ``gguf``, ``mx``, ``nv``), without repeats, in catalog order."""
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise QsinkError(f"unknown format famil{'ies' if len(bad) > 1 else 'y'} {', '.join(bad) or '(none)'}; "
                         f"--formats takes {', '.join(FAMILIES)}")
    names = {n for f in families for n in FAMILIES[f]}
    return [n for n in WEIGHT_FORMATS if n in names]


def bits_per_weight(fmt: QuantFormat | None, in_features: int) -> float:
    """Stored bits per weight of a row of ``in_features`` weights in ``fmt`` (None: fp16), scales included."""
    if fmt is None:
        return 16.0
    if fmt.dtype == "gguf":
        from qsink.quant import gguf_formats as G

        qtype = fmt.gguf_type if fmt.gguf_type == "F16" else G.usable_type(fmt.gguf_type, in_features)[0]
        return 16.0 if qtype == "F16" else G.BITS[qtype]
    g = fmt.granularity
    if fmt.dtype == "int":
        extra = 16 if fmt.symmetric else 32  # an fp16 scale (and an fp16 zero) per group or row
        return fmt.bits + extra / (g.size if g.kind == "group" else in_features)
    if fmt.dtype == "mxfp4":
        return 4 + 8 / g.size
    if fmt.dtype == "nvfp4":
        return 4 + 8 / g.size
    if fmt.dtype == "fp8":
        return 8 + 16 / in_features
    if fmt.dtype in ("nf4", "fp4"):
        return 4 + 32 / g.size  # bitsandbytes: an fp32 absmax per block
    raise QsinkError(f"no bit count for weight format {fmt}")


def mixture_scheme(name: str, spec: dict) -> Scheme:
    """The scheme a mixture spec describes (see the module docstring); refuses unknown keys and formats."""
    if not isinstance(spec, dict):
        raise QsinkError(f"mixture {name}: give a mapping with weight, act and overrides")
    unknown = sorted(set(spec) - {"weight", "act", "overrides", "description"})
    if unknown:
        raise QsinkError(f"mixture {name}: unknown key(s) {', '.join(unknown)}; valid: weight, act, overrides, description")
    if "weight" not in spec:
        raise QsinkError(f"mixture {name}: 'weight' (the format of every linear not overridden) is missing")
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise QsinkError(f"mixture {name}: overrides must map linear names (LAYER.NAME, e.g. 11.mlp.down_proj) to formats")
    for linear in overrides:
        layer, _, rest = str(linear).partition(".")
        if not layer.isdigit() or not rest:
            raise QsinkError(f"mixture {name}: {linear!r} is not a linear name; write LAYER.NAME, e.g. 11.mlp.down_proj")
    return Scheme(name, spec.get("description") or f"mixture {name}", weight_format(spec["weight"]), act_format(spec.get("act")),
                  overrides=tuple(sorted((str(k), weight_format(v)) for k, v in overrides.items())))


def register_mixtures(mixtures: dict | None) -> list[str]:
    """Register each mixture spec as a scheme (again is fine when it is the same; another under the same
    name is refused); returns their names."""
    if not mixtures:
        return []
    if not isinstance(mixtures, dict):
        raise QsinkError("mixtures must map scheme names to mixture specs (weight, act, overrides)")
    names = []
    for name, spec in mixtures.items():
        scheme = mixture_scheme(str(name), spec)
        if str(name) in SCHEMES.names():
            if SCHEMES.get(str(name)).to_dict() != scheme.to_dict():
                raise QsinkError(f"scheme {name!r} exists already with another definition; give the mixture another name")
        else:
            SCHEMES.add(str(name), scheme)
            REGISTERED.add(str(name))
        names.append(str(name))
    return names


def mixture_spec(scheme: Scheme) -> dict:
    """The spec that :func:`mixture_scheme` turns back into ``scheme`` (what a recipe file holds)."""
    act = None if scheme.act is None else next(n for n, f in ACT_FORMATS.items() if f == scheme.act)
    return {"description": scheme.description, "weight": format_name(scheme.weight), "act": act,
            "overrides": {k: format_name(f) for k, f in scheme.overrides}}
