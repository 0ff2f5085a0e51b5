"""PNG figures of explanations: FA overlays, interpolation strips, the attribute t-SNE.

Colours: FA maps use a diverging map with red = intensity increase under the translation
and blue = decrease, on a symmetric range (± the 99.5th percentile of |FA| in the brain),
shown only inside the brain mask. Arrays are RAS: axial views show the subject's right on
the right (neurological convention), anterior at the top.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FA_CMAP = "RdBu_r"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def symmetric_limit(fa: np.ndarray, mask: np.ndarray | None = None) -> float:
    values = np.abs(fa[mask > 0] if mask is not None and (mask > 0).any() else fa)
    return float(max(np.percentile(values, 99.5), 1e-6))


def _views(volume: np.ndarray, centre: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """2D: the image itself. 3D: sagittal, coronal and axial planes through ``centre``."""
    if volume.ndim == 2:
        return [("", volume)]
    x, y, z = centre
    return [("sagittal", volume[x, :, :]), ("coronal", volume[:, y, :]), ("axial", volume[:, :, z])]


def peak(fa: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, ...]:
    """Where |FA| (smoothed a little, so one noisy voxel does not win) is largest inside the mask."""
    from scipy import ndimage

    smooth = ndimage.uniform_filter(np.abs(fa), size=3)
    if mask is not None:
        smooth = np.where(mask > 0, smooth, 0)
    return tuple(int(i) for i in np.unravel_index(np.argmax(smooth), smooth.shape))


OVERLAY_FLOOR = 0.2  # |FA| below this share of the colour range is left transparent: the scan shows through


def overlay(ax, image: np.ndarray, fa: np.ndarray | None, mask: np.ndarray | None, limit: float):
    """A grey scan with the FA map on top (inside the mask, where |FA| ≥ OVERLAY_FLOOR × range)."""
    ax.imshow(image.T, cmap="gray", origin="lower", vmin=-1, vmax=1, interpolation="nearest")
    if fa is not None:
        hidden = np.abs(fa) < OVERLAY_FLOOR * limit
        shown = np.ma.masked_where(hidden | ((mask <= 0) if mask is not None else False), fa)
        ax.imshow(shown.T, cmap=FA_CMAP, origin="lower", vmin=-limit, vmax=limit, alpha=0.85,
                  interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def explanation_figure(path: str | Path, image: np.ndarray, fa_mean: np.ndarray, fa_var: np.ndarray | None,
                       mask: np.ndarray | None, title: str, gt_map: np.ndarray | None = None) -> Path:
    """One scan: the input, the mean FA map over it, the FA variance (and the ground truth if
    known), each map with its own colour bar. 3D volumes: three orthogonal views (rows) through
    the largest mean effect."""
    plt = _pyplot()
    centre = peak(fa_mean, mask) if image.ndim == 3 else ()
    panels = [("input", None, None), ("mean FA over input", fa_mean, "fa")]
    if fa_var is not None:
        panels.append(("FA variance", fa_var, "var"))
    if gt_map is not None:
        panels.append(("ground-truth change", gt_map, "fa"))
    views = _views(image, centre)
    fig, axes = plt.subplots(len(views), len(panels), figsize=(3.1 * len(panels), 3.0 * len(views) + 0.5),
                             squeeze=False, layout="constrained")
    masks = _views(mask, centre) if mask is not None else [(v, None) for v, _ in views]
    for c, (name, volume, kind) in enumerate(panels):
        planes = _views(volume, centre) if volume is not None else views
        limit = symmetric_limit(volume, mask) if kind == "fa" else None
        for r, ((view, base), (_, plane), (_, m)) in enumerate(zip(views, planes, masks)):
            ax = axes[r, c]
            if kind == "var":
                shown = np.ma.masked_where(m <= 0, plane) if m is not None else plane
                artist = ax.imshow(shown.T, cmap="magma", origin="lower", interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                overlay(ax, base, plane if kind == "fa" else None, m, limit or 1.0)
            ax.set_title(name + (f" ({view})" if view else ""), fontsize=9)
        if kind == "fa":
            scalar = plt.cm.ScalarMappable(cmap=FA_CMAP, norm=plt.Normalize(-limit, limit))
            fig.colorbar(scalar, ax=axes[:, c], shrink=0.8, label="red: brighter, blue: darker")
        elif kind == "var":
            fig.colorbar(artist, ax=axes[:, c], shrink=0.8, label="variance over samples")
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def interpolation_strip(path: str | Path, images: np.ndarray, fa_maps: np.ndarray, mask: np.ndarray | None,
                        probabilities: np.ndarray, targets: np.ndarray | None, title: str) -> Path:
    """Top row: the images along the walk; bottom row: their change from the first step (the
    scan rebuilt with its own attribute), so only what the attribute walk changes shows."""
    plt = _pyplot()
    k = len(images)
    centre = peak(fa_maps[-1], mask) if images.ndim == 4 else ()
    limit = symmetric_limit(fa_maps[-1], mask)
    fig, axes = plt.subplots(2, k, figsize=(1.9 * k, 4.2), squeeze=False, layout="constrained")
    for i in range(k):
        plane = _views(images[i], centre)[-1][1]
        fa_plane = _views(fa_maps[i], centre)[-1][1]
        m = _views(mask, centre)[-1][1] if mask is not None else None
        overlay(axes[0, i], plane, None, None, limit)
        overlay(axes[1, i], plane, fa_plane, m, limit)
        label = f"p(class 1) {probabilities[i, 1]:.2f}"
        if targets is not None:
            label += f"\ntarget {targets[i]:.1f}"
        axes[0, i].set_title(label, fontsize=8)
    axes[0, 0].set_ylabel("translated")
    axes[1, 0].set_ylabel("change from step 0")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _middle_slice(path: Path) -> np.ndarray:
    """A NIfTI file as a 2D array: the image itself, or a volume's middle axial slice."""
    from ..data.nifti import load_array

    volume = load_array(path)[0].squeeze()
    return volume if volume.ndim == 2 else volume[:, :, volume.shape[2] // 2]


def gallery_figure(csv_path: Path, methods: dict[str, Path], subjects: int = 4):
    """The same test subjects of a cohort table (classes alternating, one row each) under every
    method's map (``methods``: name → an `icam explain` folder), next to the ground truth. The
    ground truth and the first method's mean map share one symmetric colour range; the first
    method's variance follows when written; every other map has its own range. None without
    test rows."""
    import csv

    from ..data.nifti import nifti_stem

    rows = [r for r in csv.DictReader(csv_path.open()) if r.get("split") == "test"]
    by_class = [[r for r in rows if r.get("label") == k] for k in sorted({r.get("label") for r in rows})]
    chosen = [r for group in zip(*by_class) for r in group][:subjects] or rows[:subjects]
    if not chosen:
        return None
    names = list(methods)

    def panels_for(row):
        """(image, mask, [(title, data, colour limit, kind)]) of one subject."""
        stem = nifti_stem(row["image"])
        image = _middle_slice(csv_path.parent / row["image"])
        mask = _middle_slice(csv_path.parent / row["mask"]) if row.get("mask") else None
        gt = _middle_slice(csv_path.parent / row["gt_map"]) if row.get("gt_map") else None
        maps = {name: folder / "maps" / f"{stem}_fa_mean.nii.gz" for name, folder in methods.items()}
        maps = {name: _middle_slice(path) if path.is_file() else None for name, path in maps.items()}
        first = maps[names[0]]
        shared = max([symmetric_limit(m, mask) for m in (first, gt) if m is not None] or [1.0])
        panels = [("input", None, 1.0, "fa")]
        if gt is not None:
            panels.append(("ground truth", gt, shared, "fa"))
        panels.append((f"{names[0]}: mean FA", first, shared, "fa"))
        variance = methods[names[0]] / "maps" / f"{stem}_fa_var.nii.gz"
        if variance.is_file():
            panels.append((f"{names[0]}: variance", _middle_slice(variance), None, "var"))
        panels += [(name, maps[name], symmetric_limit(maps[name], mask) if maps[name] is not None else 1.0, "fa")
                   for name in names[1:]]
        return stem, image, mask, panels

    built = [panels_for(row) for row in chosen]
    plt = _pyplot()
    columns = len(built[0][3])
    fig, axes = plt.subplots(len(built), columns, figsize=(2.3 * columns, 2.4 * len(built)), squeeze=False,
                             layout="constrained")
    for r, (stem, image, mask, panels) in enumerate(built):
        for c, (title, data, limit, kind) in enumerate(panels):
            ax = axes[r, c]
            if kind == "var":
                ax.imshow((np.ma.masked_where(mask <= 0, data) if mask is not None else data).T, cmap="magma",
                          origin="lower")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                overlay(ax, image, data, mask, limit)
            if r == 0:
                ax.set_title(title, fontsize=8)
        facts = [f"class {chosen[r]['label']}"] if chosen[r].get("label") else []
        facts += [f"target {float(chosen[r]['target']):.1f}"] if chosen[r].get("target") else []
        axes[r, 0].set_ylabel(f"{stem}\n{', '.join(facts)}", fontsize=8)
    scalar = plt.cm.ScalarMappable(cmap=FA_CMAP, norm=plt.Normalize(-1, 1))
    fig.colorbar(scalar, ax=axes[:, -1], shrink=0.6, label="change, relative to each colour range")
    return fig


def tsne_figure(path: str | Path, attributes: np.ndarray, labels: np.ndarray, targets: np.ndarray | None,
                seed: int = 0) -> Path:
    """t-SNE of attribute means, coloured by class and (when known) by target (paper Fig. 8)."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    perplexity = float(min(30, max(2, (len(attributes) - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(attributes)
    show_target = targets is not None and np.isfinite(targets).any()
    fig, axes = plt.subplots(1, 1 + show_target, figsize=(4.8 * (1 + show_target), 4), squeeze=False,
                             layout="constrained")
    for k in np.unique(labels):
        chosen = labels == k
        axes[0, 0].scatter(xy[chosen, 0], xy[chosen, 1], s=14, label=f"class {k}", color=plt.cm.tab10(int(k) % 10))
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title("attribute means, by class", fontsize=10)
    if show_target:
        sc = axes[0, 1].scatter(xy[:, 0], xy[:, 1], c=targets, cmap="viridis", s=14)
        fig.colorbar(sc, ax=axes[0, 1], label="target")
        axes[0, 1].set_title("attribute means, by target", fontsize=10)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
