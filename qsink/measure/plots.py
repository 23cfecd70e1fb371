"""PNG plots of a profile, drawn from the profile document alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return [p for p in paths if p is not None]
