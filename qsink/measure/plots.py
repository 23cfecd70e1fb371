"""PNG plots of a profile, drawn from the profile document alone."""

from __future__ import annotations

from pathlib import Path

from qsink.plotting import plt, save_figure


def plot_rise_plateau_fall(profile: dict, path: Path, title: str = "") -> Path:
    """Top-1 and median |h_l| per layer on a log scale."""
    layers = profile["layers"]
    x = [d["layer"] for d in layers]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(x, [d["top1"] for d in layers], "o-", label="top-1 |h|")
    ax.semilogy(x, [d["median"] for d in layers], "s-", label="median |h|")
    plateau = profile["massive"]["plateau_layers"]
    if plateau:
        ax.axvspan(min(plateau) - 0.5, max(plateau) + 0.5, color="tab:red", alpha=0.08, label="massive activations")
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("|h| (residual stream)")
    ax.set_title(title or "residual-stream magnitude per layer")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_sink_heatmap(profile: dict, path: Path, title: str = "") -> Path | None:
    """Layer x head heatmap of alpha (attention on key 0)."""
    att = profile.get("attention")
    if not att:
        return None
    alpha = att["alpha"]
    fig, ax = plt.subplots(figsize=(max(4, len(alpha[0]) * 0.5 + 2), max(3, len(alpha) * 0.22 + 1.5)))
    im = ax.imshow(alpha, aspect="auto", vmin=0, vmax=1, cmap="viridis", origin="lower")
    fig.colorbar(im, ax=ax, label="alpha (mean weight on key 0)")
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    ax.set_title(title or f"attention sinks (sink ratio {att['sink_ratio']:.2f})")
    return save_figure(fig, path)


def plot_channel_absmax(profile: dict, path: Path, title: str = "") -> Path:
    """Per-channel absmax of the residual stream at the plateau layer, spike channels labelled."""
    values = profile["plot_layer_channel_absmax"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(values)), values, width=1.0, color="tab:blue")
    ax.set_yscale("log")
    for ch in profile["summary"]["spike_channels"][:4]:
        if ch < len(values):
            ax.annotate(f"ch {ch}", (ch, values[ch]), textcoords="offset points", xytext=(4, 2), color="tab:red")
    ax.set_xlabel("channel")
    ax.set_ylabel("max |h| over tokens")
    ax.set_title(title or f"per-channel absmax, layer {profile['plot_layer']}")
    return save_figure(fig, path)


def plot_profile(profile: dict, out_dir: Path, stem: str, name: str) -> list[Path]:
    """The three profile plots as ``OUT/<stem>-{layers,sinks,channels}.png``."""
    att = profile.get("attention")
    paths = [
        plot_rise_plateau_fall(profile, Path(out_dir) / f"{stem}-layers.png", f"{name}: rise, plateau, fall"),
        plot_sink_heatmap(profile, Path(out_dir) / f"{stem}-sinks.png",
                          f"{name}: attention on key 0 (sink ratio {att['sink_ratio']:.2f})" if att else ""),
        plot_channel_absmax(profile, Path(out_dir) / f"{stem}-channels.png",
                            f"{name}: per-channel absmax at layer {profile['plot_layer']}"),
    ]
    for key, fn, suffix in (("gradient_sinks", plot_gradient_sinks, "gradients"),
                            ("attribution", plot_attribution, "attribution"),
                            ("vocab_scan", plot_vocab_scan, "vocab")):
        if profile.get(key):
            paths.append(fn(profile, Path(out_dir) / f"{stem}-{suffix}.png", name))
    return [p for p in paths if p is not None]


def plot_gradient_sinks(profile: dict, path: Path, name: str = "") -> Path:
    """R_GS per layer (attention input, k, v) beside the forward top-1 |h| per layer."""
    g = profile["gradient_sinks"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind in ("attn_in", "k", "v"):
        if kind in g:
            r = g[kind]["r_gs"]
            ax.semilogy(range(1, len(r) + 1), r, "o-", ms=3, label=f"R_GS {kind}")
    ax.set_xlabel("block (layer l reads h_(l-1))")
    ax.set_ylabel(f"gradient-sink ratio at position {g['position']}")
    ax2 = ax.twinx()
    ax2.semilogy([d["layer"] for d in profile["layers"]], [d["top1"] for d in profile["layers"]], "k--", alpha=0.4,
                 label="forward top-1 |h|")
    ax2.set_ylabel("forward top-1 |h| (dashed)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"{name}: gradient sinks ({g['n_windows']} windows)")
    return save_figure(fig, path)


def plot_attribution(profile: dict, path: Path, name: str = "") -> Path:
    """The top spike channel's change on the spike token, sub-layer by sub-layer."""
    a = profile["attribution"]
    c = a["channels"][0]
    steps = c["steps"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = [f"{s['block']}{'a' if s['sublayer'] == 'attention' else 'f'}" for s in steps]
    colors = ["tab:blue" if s["sublayer"] == "attention" else "tab:orange" for s in steps]
    ax.bar(range(len(steps)), [s["delta"] for s in steps], color=colors)
    ax.set_xticks(range(len(steps)), labels, fontsize=6, rotation=90)
    ax.set_ylabel(f"change of h[{c['channel']}]")
    ax.set_xlabel("sub-layer (block + a = attention, f = FFN)")
    ax.set_title(f"{name}: who writes channel {c['channel']} at position {a['position']}")
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def plot_vocab_scan(profile: dict, path: Path, name: str = "") -> Path | None:
    """Histogram of the largest |h| at position 0 over the scanned vocabulary."""
    v = profile["vocab_scan"]
    hist = v.get("peak_histogram")
    if hist is None:  # a scan stored before the histogram was recorded
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    edges = hist["edges"]
    ax.stairs(hist["counts"], edges, fill=True, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("symlog")
    ax.set_xlabel(f"largest |h| at position 0, layers {v['layers']}")
    ax.set_ylabel("vocabulary items")
    ax.set_title(f"{name}: {100 * v['fraction_spike']:.2f} % of {v['n_scanned']:,} items spike at position 0")
    return save_figure(fig, path)
