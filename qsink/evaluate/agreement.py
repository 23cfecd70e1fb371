"""Agreement of a quantized model with its fp original, token by token: KL divergence, the same top
token, the change in the probability of the correct token, the perplexity ratio; summarised over
the evaluation text and split by the kind of position (massive activation, attention sink,
delimiter, other).

Definitions (P: the fp model's next-token distribution at a scored position, Q: the quantized
model's; ``y``: the correct next token; the summary statistics follow llama.cpp's
``llama-perplexity --kl-divergence``):

* ``KLD(P || Q) = sum_i P_i (ln P_i - ln Q_i)`` per position. With ``--kld-topk K > 0`` (default 32)
  the sum runs over P's top-K tokens plus one "rest" bucket holding the remaining mass of each
  distribution (``P_rest = 1 - sum_topK P_i``, ``Q_rest`` likewise over the same tokens). Merging
  tokens never increases a KL divergence, so this is a lower bound of the exact value, equal to it
  when P has no mass outside its top K; the gap is ``P_rest * KLD(P | rest || Q | rest)``, the
  divergence of the two distributions restricted to the rest, weighted by P's rest mass.
  ``--kld-topk 0`` computes the exact full-vocabulary value (the fp model runs beside the quantized
  one in every cell instead of reading a stored reference). The reverse ``KLD(Q || P)`` is computed
  on the same buckets.
* same top: the share of positions where argmax Q equals argmax P, with standard error
  ``sqrt(p (1 - p) / (n - 1))``.
* ``dp = Q(y) - P(y)``: mean, RMS and percentiles.
* ``ln(PPL_q / PPL_fp)`` = the mean over positions of ``NLL_q - NLL_fp``; its standard error is
  ``sqrt((var NLL_q + var NLL_fp - 2 cov) / n)``, the covariance of the two per-token NLLs taken into
  account (they are strongly correlated, so the ratio is far better determined than either PPL).
* means carry the standard error ``std / sqrt(n)`` (std with ``n - 1``); percentiles are numpy's
  linear interpolation.
* precision: log-probabilities are the fp32 logits minus their fp32 logsumexp, taken to float64; each
  position's KLD carries about 1e-7 nats of rounding (either sign), so values below ~1e-6 mean "equal
  to rounding". Identical logits give exactly 0. llama.cpp keeps its reference as 16-bit codes, which
  is coarser.

Kinds of position (a position predicts the token after it; its kind is that of its own token and
hidden state): **massive** if its residual stream carries a massive activation in any block of the
fp model on these very windows (``|h| > 100`` and ``> 1000 x`` that window's median ``|h|`` in that
block, the profile's thresholds: Sun et al. 2024, arXiv 2402.17762); **sink**, position 0 of each
window, the key the attention-sink heads attend to (Gu et al. 2024, arXiv 2410.10781);
**delimiter** if its token is only punctuation and/or whitespace; **other**: none of these. The
first three can overlap (position 0 usually carries the spike too); each is reported on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qsink.errors import QsinkError
from qsink.files import atomic_write_bytes
from qsink.evaluate.perplexity import LOGIT_BYTES, Observer, base_hidden, head_logits
from qsink.measure.stats import massive_mask
from qsink.models.adapter import adapter_for

DEFAULT_TOPK = 32
REST_FLOOR = 1e-6  # a rest mass below this is fp32 rounding of 1 - sum(top-K): both sides count it as this
PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
MASSIVE, SINK, DELIMITER = 1, 2, 4  # bits of a position's kind
KINDS = {"massive": MASSIVE, "sink": SINK, "delimiter": DELIMITER}
MASSIVE_ABS, MASSIVE_RATIO = 100.0, 1000.0
HIST_EDGES = np.arange(-8.0, 2.01, 0.25)  # log10 KLD bins of the per-token distribution (1e-8 .. 100 nats)
REFERENCE_FORMAT = "qsink.kld-reference/1"
DEFINITIONS = {
    "kld": "sum_i P_i (ln P_i - ln Q_i) per scored position, P = fp, Q = quantized; top-K of P plus one rest "
           "bucket (a lower bound of the exact value, exact when K = 0 or P has no mass outside its top K)",
    "kld_reverse": "sum_i Q_i (ln Q_i - ln P_i) on the same buckets",
    "same_top": "share of positions where argmax Q = argmax P; error sqrt(p(1-p)/(n-1))",
    "delta_p": "Q(correct token) - P(correct token)",
    "ln_ppl_ratio": "mean(NLL_q - NLL_fp); error sqrt((var NLL_q + var NLL_fp - 2 cov(NLL_q, NLL_fp)) / n)",
    "kinds": "massive: the position's residual stream holds |h| > 100 and > 1000 x its window's median |h| in some "
             "block of the fp model; sink: position 0 of each window; delimiter: a token of punctuation and/or "
             "whitespace only; other: none of them (the first three may overlap)",
}


# ----------------------------------------------------------------------------------- per position


def _lse64(logits: torch.Tensor) -> torch.Tensor:
    m = logits.max(dim=-1, keepdim=True).values
    return m.squeeze(-1).double() + torch.log(torch.exp(logits - m).sum(dim=-1, dtype=torch.float64))


def log_top_and_rest(logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 log-probabilities of the tokens ``ids`` (n, k) and of the mass outside them (n,), from the
    logits and their logsumexp: ``x - lse``, and ``ln(1 - sum)`` of the top probabilities, floored at
    :data:`REST_FLOOR` (below it, ``1 - sum`` is fp32's rounding; :func:`_rest_term` gives such a bucket
    no weight and uses the floor inside the logarithm). The fp reference and every quantized cell
    compute them the same way, so identical logits give a KLD of exactly 0; fp32's rounding of the
    logsumexp leaves about 1e-7 nats on each position."""
    top = logits.gather(-1, ids).double() - lse.double()[:, None]
    return top, torch.log((1.0 - top.exp().sum(-1)).clamp_min(REST_FLOOR))


def topk_reference(logits: torch.Tensor, k: int, lse: torch.Tensor | None = None):
    """P's top-k log-probabilities (n, k) float64, their token ids (n, k) and the log of the rest mass (n,)."""
    lse = torch.logsumexp(logits, dim=-1) if lse is None else lse
    ids = logits.topk(k, dim=-1).indices
    top, rest = log_top_and_rest(logits, ids, lse)
    return top, ids, rest


def _xlogy_diff(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """exp(p_log) * (p_log - q_log), 0 where p has no mass (0 * log 0 = 0)."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))


def _rest_term(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """The rest bucket's share of the KLD: no weight where P's rest is at the floor (rounding, not mass)."""
    p = p_log.exp()
    above = p_log > math.log(REST_FLOOR) + 1e-9  # compared as logs: exp(log(floor)) may round above the floor
    return torch.where(above, p * (p_log - q_log), torch.zeros_like(p))


def topk_stats(q_logits: torch.Tensor, p_top: torch.Tensor, p_ids: torch.Tensor, p_rest: torch.Tensor,
               q_lse: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Forward and reverse KLD over P's top-k tokens plus the rest bucket, per row, float64.

    Both sides as :func:`log_top_and_rest` computes them; Q's costs one gather per row, with ``q_lse``
    the logsumexp the perplexity pass computes anyway (computed here if not given), which keeps the
    statistics at a few per cent of the pass's time.
    """
    if q_lse is None:
        q_lse = torch.logsumexp(q_logits, dim=-1)
    q_top, q_rest = log_top_and_rest(q_logits, p_ids, q_lse)
    p_top, p_rest = p_top.double(), p_rest.double()
    kld = _xlogy_diff(p_top, q_top).sum(-1) + _rest_term(p_rest, q_rest)
    rkld = _xlogy_diff(q_top, p_top).sum(-1) + _rest_term(q_rest, p_rest)
    return {"kld": kld, "kld_reverse": rkld, "argmax": q_logits.argmax(-1)}


def exact_stats(q_logits: torch.Tensor, p_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward and reverse KLD over the whole vocabulary, per row, float64 sums of fp32 terms; the
    difference of log-probabilities is taken as ``(x_p - x_q) - (lse_p - lse_q)``, so that two close
    models' KLD is not drowned by the rounding of each log-softmax."""
    lse_p, lse_q = _lse64(p_logits), _lse64(q_logits)
    diff = (p_logits - q_logits) - (lse_p - lse_q).float()[:, None]  # ln P - ln Q
    kld = (torch.exp(p_logits - lse_p.float()[:, None]) * diff).sum(-1, dtype=torch.float64)
    rkld = (torch.exp(q_logits - lse_q.float()[:, None]) * -diff).sum(-1, dtype=torch.float64)
    return {"kld": kld, "kld_reverse": rkld}


# ------------------------------------------------------------------------------------ kinds


def delimiter_ids(tokenizer, ids) -> set[int]:
    """The token ids among ``ids`` whose text is only punctuation and/or whitespace (not empty)."""
    out = set()
    for i in set(int(x) for x in ids):
        text = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text and all(ch.isspace() or unicodedata.category(ch).startswith("P") for ch in text):
            out.add(i)
    return out


class MassiveTracker:
    """Hooks on the blocks of a model: which positions of the current batch hold a massive
    activation in some block's output (against that window's median |h| in that block)."""

    def __init__(self, model, abs_threshold: float = MASSIVE_ABS, ratio_threshold: float = MASSIVE_RATIO):
        self.model, self.abs, self.ratio = model, abs_threshold, ratio_threshold
        self.mask: torch.Tensor | None = None
        self.own_s = 0.0

    def reset(self) -> None:
        self.mask = None

    def _block_out(self, h: torch.Tensor) -> None:
        t0 = time.perf_counter()
        a = h.detach().abs().float()  # (B, T, D)
        med = a.flatten(1).median(dim=1).values  # each window's (lower) median
        hit = massive_mask(a, med[:, None, None], self.abs, self.ratio).any(dim=-1)  # (B, T)
        self.mask = hit if self.mask is None else self.mask | hit
        self.own_s += time.perf_counter() - t0

    @contextlib.contextmanager
    def attached(self):
        ad = adapter_for(self.model)
        handles = [b.register_forward_hook(lambda m, i, o: self._block_out(o[0] if isinstance(o, tuple) else o))
                   for b in ad.blocks(self.model)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def position_kinds(input_ids: torch.Tensor, massive: torch.Tensor, delimiters: set[int]) -> torch.Tensor:
    """The kind bits of positions 0..T-2 of each window (the scored ones), flattened: uint8 (B * (T - 1),)."""
    B, T = input_ids.shape
    ids = input_ids[:, :-1]
    kinds = torch.zeros(B, T - 1, dtype=torch.uint8)
    kinds[massive[:, :-1].cpu()] |= MASSIVE
    kinds[:, 0] |= SINK
    if delimiters:
        delim = torch.isin(ids.cpu(), torch.tensor(sorted(delimiters), dtype=ids.dtype))
        kinds[delim] |= DELIMITER
    return kinds.reshape(-1)


# ------------------------------------------------------------------------------------ reference


@dataclass
class Reference:
    """What the fp model said at every scored position, enough to score any quantized cell against it."""

    key: str  # the reference's identity hash (model, text, windows, K, kind thresholds)
    identity: dict
    top_logp: np.ndarray  # (n, K) float64: P's top-K log-probabilities
    top_ids: np.ndarray  # (n, K) int32
    rest_logp: np.ndarray  # (n,) float64: ln of P's mass outside the top K
    nll: np.ndarray  # (n,) float64: the fp NLL of the correct token
    argmax: np.ndarray  # (n,) int32: P's argmax
    kinds: np.ndarray  # (n,) uint8: kind bits
    build_s: float = 0.0

    @property
    def n(self) -> int:
        return int(self.nll.shape[0])

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays().values())

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"top_logp": self.top_logp, "top_ids": self.top_ids, "rest_logp": self.rest_logp, "nll": self.nll,
                "argmax": self.argmax, "kinds": self.kinds}

    def save(self, path: Path) -> Path:
        """Atomically: a temporary file in the same directory, renamed over ``path``."""
        arrays = self._arrays()
        header = {"format": REFERENCE_FORMAT, "key": self.key, "identity": self.identity, "build_s": self.build_s,
                  "sha256": {k: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for k, a in arrays.items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path, key: str) -> "Reference":
        """The reference in ``path``, checked: a file made for another key, or one whose arrays do not
        hash to what its header says (corrupt, truncated, edited), is an error naming the file."""
        fix = "delete it (or rerun with --force) and the fp model rebuilds it"
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                arrays = {k: z[k] for k in ("top_logp", "top_ids", "rest_logp", "nll", "argmax", "kinds")}
        except Exception as e:  # zipfile, numpy and json all raise their own kinds on a damaged file
            raise QsinkError(f"fp reference {path} cannot be read ({type(e).__name__}: {str(e)[:80]}); {fix}") from None
        if header.get("format") != REFERENCE_FORMAT or header.get("key") != key:
            raise QsinkError(f"fp reference {path} was made for other settings (key {header.get('key')!r}); {fix}")
        for k, a in arrays.items():
            if hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() != header["sha256"].get(k):
                raise QsinkError(f"fp reference {path}: its {k} does not match its checksum (corrupt or edited); {fix}")
        return cls(key=key, identity=header["identity"], build_s=float(header.get("build_s", 0.0)), **arrays)


def reference_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def reference_identity(model_sha256: str, windows, topk: int, dtype: str, model_commit: str | None = None) -> dict:
    """What makes two references interchangeable: the model (and its hub commit, for a hub model), the
    very token windows, K, the precision the fp model ran at, and the kind thresholds."""
    ids_sha = hashlib.sha256(windows.input_ids.numpy().astype(np.int64).tobytes()).hexdigest()
    return {"format": REFERENCE_FORMAT, "model_sha256": model_sha256, "data_sha256": windows.data_sha256,
            "ctx": windows.ctx, "n_windows": windows.n_windows, "windows_sha256": ids_sha, "topk": topk, "dtype": dtype,
            "massive_abs": MASSIVE_ABS, "massive_ratio": MASSIVE_RATIO, **({"model_commit": model_commit} if model_commit else {})}


class ReferenceBuilder(Observer):
    """Observes the fp model's perplexity pass and keeps its top-K, rest mass, NLL, argmax and kinds."""

    def __init__(self, model, tokenizer, windows, topk: int, identity: dict):
        if topk < 1:
            raise QsinkError("a stored fp reference needs --kld-topk of at least 1 (0 computes the exact KLD live)")
        self.model, self.topk, self.identity = model, topk, identity
        self.delimiters = delimiter_ids(tokenizer, windows.input_ids.flatten().tolist())
        n = windows.n_scored
        self.top_logp = np.zeros((n, topk), np.float64)
        self.top_ids = np.zeros((n, topk), np.int32)
        self.rest = np.zeros(n, np.float64)
        self.nll = np.zeros(n, np.float64)
        self.argmax = np.zeros(n, np.int32)
        self.kinds = np.zeros(n, np.uint8)
        self.tracker = MassiveTracker(model)
        self._batch = None
        self.own_s = 0.0  # time spent here and in the tracker's hooks: what the reference adds to the fp pass

    def attach(self, model):
        return self.tracker.attached()

    def begin_batch(self, row0, input_ids):
        self.tracker.reset()
        self._batch = (row0, input_ids)

    def chunk(self, row, logits, targets, nll, lse):
        t0 = time.perf_counter()
        self._chunk(row, logits, nll, lse)
        self.own_s += time.perf_counter() - t0

    def _chunk(self, row, logits, nll, lse):
        if self._batch is not None:  # the forward has run: every block's output was seen
            row0, ids = self._batch
            k = position_kinds(ids, self.tracker.mask, self.delimiters).numpy()
            self.kinds[row0 : row0 + k.shape[0]] = k
            self._batch = None
        top, ids, rest = topk_reference(logits, min(self.topk, logits.shape[-1]), lse)
        sl = slice(row, row + logits.shape[0])
        self.top_logp[sl, : top.shape[1]] = top.cpu().numpy()
        self.top_ids[sl, : ids.shape[1]] = ids.cpu().numpy()
        self.rest[sl] = rest.cpu().numpy()
        self.nll[sl] = nll.double().cpu().numpy()
        self.argmax[sl] = logits.argmax(-1).cpu().numpy()

    def reference(self) -> Reference:
        return Reference(reference_key(self.identity), self.identity, self.top_logp, self.top_ids, self.rest, self.nll,
                         self.argmax, self.kinds, build_s=self.own_s + self.tracker.own_s)


# ------------------------------------------------------------------------------------ a cell


class Agreement(Observer):
    """Observes a quantized model's perplexity pass and scores each position against the fp model:
    from a stored :class:`Reference` (top-K), or exactly against ``fp_model`` run on the same batch."""

    def __init__(self, n: int, reference: Reference | None = None, fp_model=None, tokenizer=None, windows=None):
        if (reference is None) == (fp_model is None):
            raise ValueError("score against a reference or an fp model, not both")
        self.ref, self.fp = reference, fp_model
        if reference is not None and reference.n != n:
            raise QsinkError(f"the fp reference has {reference.n} positions and this cell scores {n}; it was made for "
                             "other windows")
        self.kld, self.rkld, self.nll_q = (np.zeros(n) for _ in range(3))
        self.same = np.zeros(n, bool)
        if reference is not None:
            self.nll_fp, self.kinds = reference.nll, reference.kinds
        else:
            self.nll_fp, self.kinds = np.zeros(n), np.zeros(n, np.uint8)
            self.delimiters = delimiter_ids(tokenizer, windows.input_ids.flatten().tolist())
            self.tracker = MassiveTracker(fp_model)
        self.topk = 0 if reference is None else int(reference.top_ids.shape[1])

    def begin_batch(self, row0, input_ids):
        if self.fp is None:
            return
        self.tracker.reset()
        with self.tracker.attached():
            hidden = base_hidden(self.fp, input_ids)
        B, T = input_ids.shape
        self._fp_flat = hidden[:, :-1].reshape(B * (T - 1), -1)
        self._row0 = row0
        # the fp logits of the whole batch where they fit, as the quantized model's come (one product per batch)
        V = self.fp.get_output_embeddings().weight.shape[0]
        self._fp_logits = head_logits(self.fp, self._fp_flat) if B * (T - 1) * V * 4 <= LOGIT_BYTES else None
        k = position_kinds(input_ids, self.tracker.mask, self.delimiters).numpy()
        self.kinds[row0 : row0 + k.shape[0]] = k

    def chunk(self, row, logits, targets, nll, lse):
        sl = slice(row, row + logits.shape[0])
        self.nll_q[sl] = nll.double().cpu().numpy()
        if self.ref is not None:
            r = self.ref
            ref = [torch.from_numpy(a[sl]).to(logits.device) for a in (r.top_logp, r.top_ids, r.rest_logp)]
            st = topk_stats(logits, ref[0], ref[1].long(), ref[2], lse)
            self.same[sl] = st["argmax"].cpu().numpy() == r.argmax[sl]
        else:
            local = row - self._row0
            p_logits = self._fp_logits[local : local + logits.shape[0]] if self._fp_logits is not None else \
                head_logits(self.fp, self._fp_flat[local : local + logits.shape[0]])
            st = exact_stats(logits, p_logits)
            p_nll = torch.logsumexp(p_logits, -1) - p_logits.gather(-1, targets[:, None]).squeeze(-1)
            self.nll_fp[sl] = p_nll.double().cpu().numpy()
            self.same[sl] = (logits.argmax(-1) == p_logits.argmax(-1)).cpu().numpy()
        self.kld[sl] = st["kld"].cpu().numpy()
        self.rkld[sl] = st["kld_reverse"].cpu().numpy()

    def summary(self) -> dict:
        return summarize(self.kld, self.rkld, self.same, self.nll_q, self.nll_fp, self.kinds) | {"topk": self.topk}


# ------------------------------------------------------------------------------------ summaries


def _dist(x: np.ndarray) -> dict:
    n = x.shape[0]
    return {"mean": float(x.mean()), "sem": float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
            "median": float(np.median(x)), "min": float(x.min()), "max": float(x.max()),
            "percentiles": {f"p{q:g}": float(v) for q, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))}}


def _share(b: np.ndarray) -> dict:
    n, p = b.shape[0], float(b.mean()) if b.shape[0] else float("nan")
    return {"p": p, "sem": float(np.sqrt(p * (1 - p) / (n - 1))) if n > 1 else None}


def summarize(kld: np.ndarray, rkld: np.ndarray, same: np.ndarray, nll_q: np.ndarray, nll_fp: np.ndarray,
              kinds: np.ndarray) -> dict:
    """Every statistic of a cell from its per-position arrays (definitions: this module's docstring)."""
    n = kld.shape[0]
    if n < 2:
        raise QsinkError("agreement statistics need at least 2 scored positions")
    dp = np.exp(-nll_q) - np.exp(-nll_fp)
    d = nll_q - nll_fp
    cov = np.cov(nll_q, nll_fp)  # ddof 1
    ln_ratio_sem = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0) / n))
    corr = float(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])) if cov[0, 0] > 0 and cov[1, 1] > 0 else None
    by_kind = {}
    other = kinds == 0
    for name, mask in [*((k, (kinds & bit) > 0) for k, bit in KINDS.items()), ("other", other)]:
        m = int(mask.sum())
        by_kind[name] = {"n": m, "kld_mean": float(kld[mask].mean()) if m else None,
                         "kld_sem": float(kld[mask].std(ddof=1) / np.sqrt(m)) if m > 1 else None,
                         "same_top": float(same[mask].mean()) if m else None}
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 and rounding-negative values fall below the bins
        logk = np.log10(kld)
    counts, _ = np.histogram(logk[np.isfinite(logk)], bins=HIST_EDGES)
    return {
        "n": n, "kld": _dist(kld), "kld_reverse": _dist(rkld), "same_top": _share(same),
        "delta_p": _dist(dp) | {"rms": float(np.sqrt(np.mean(dp**2)))},
        "ln_ppl_ratio": float(d.mean()), "ln_ppl_ratio_sem": ln_ratio_sem, "ppl_ratio": float(np.exp(d.mean())),
        "nll_correlation": corr, "by_kind": by_kind,
        "kld_histogram": {"log10_edges": HIST_EDGES.tolist(), "counts": counts.tolist(),
                          "below": int((kld < 10 ** HIST_EDGES[0]).sum()), "above": int((kld > 10 ** HIST_EDGES[-1]).sum())},
    }


def flat_metrics(summary: dict) -> dict:
    """The headline numbers of a cell's agreement, for the record's top-level metrics and the leaderboard."""
    return {"kld_mean": summary["kld"]["mean"], "kld_sem": summary["kld"]["sem"], "kld_p99": summary["kld"]["percentiles"]["p99"],
            "kld_reverse_mean": summary["kld_reverse"]["mean"], "same_top": summary["same_top"]["p"],
            "same_top_sem": summary["same_top"]["sem"], "dp_mean": summary["delta_p"]["mean"],
            "dp_rms": summary["delta_p"]["rms"], "ln_ppl_ratio": summary["ln_ppl_ratio"],
            "ln_ppl_ratio_sem": summary["ln_ppl_ratio_sem"]}
