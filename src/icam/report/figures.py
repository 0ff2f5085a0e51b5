"""PNG figures of explanations: FA overlays, interpolation strips, the attribute t-SNE.

Colours: FA maps use a diverging map with red = intensity increase under the translation
and blue = decrease, on a symmetric range (± the 99.5th percentile of |FA| in the brain),
shown only inside the brain mask. Arrays are turned to RAS by their affine before drawing
(whatever orientation the run used): views show the subject's left on the left
(neurological convention), anterior or superior at the top; every slice carries its
orientation letters and 3D cuts their world coordinate in mm. Figures are written at DPI
dots per inch with text of 10 pt or more.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..methods import POSTHOC
from ..outputs import ExplanationFolder
from ..run import read_run_table

FA_CMAP = "RdBu_r"
DPI = 150
# the letters at the (left, right, bottom, top) edges of each view of a RAS volume, as drawn
# by overlay (the first array axis to the right, the second up)
ORIENTATION = {"axial": ("L", "R", "P", "A"), "coronal": ("L", "R", "I", "S"), "sagittal": ("P", "A", "I", "S"),
               "": ("L", "R", "P", "A")}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def symmetric_limit(fa: np.ndarray, mask: np.ndarray | None = None) -> float:
    values = np.abs(fa[mask > 0] if mask is not None and (mask > 0).any() else fa)
    return float(max(np.percentile(values, 99.5), 1e-6))


VIEWS = ("sagittal", "coronal", "axial")  # the plane across each RAS axis
WORLD_AXES = ("x", "y", "z")


def to_ras(arrays: list[np.ndarray | None], affine: np.ndarray | None) -> tuple[list, np.ndarray | None]:
    """Arrays on one grid (a 2D model's slice is an (A, B) plane of its item's affine, whose
    third column is the slice axis) as RAS volumes, with their affine: flips and transposes
    only, no resampling. Without an affine the arrays are taken to be RAS already."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    arrays = [a[:, :, None] if a is not None and a.ndim == 2 and affine is not None else a for a in arrays]
    if affine is None:
        return arrays, None
    transform = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    shape = next(a.shape for a in arrays if a is not None)
    ras_affine = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(transform, shape)
    return [apply_orientation(a, transform) if a is not None else None for a in arrays], ras_affine


def _views(volume: np.ndarray, centre: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """The planes of a RAS volume through ``centre``: sagittal, coronal and axial, or the one
    plane of a volume that is one voxel thick (a 2D model's slice). A bare 2D array: itself."""
    if volume.ndim == 2:
        return [("", volume)]
    thin = [axis for axis in range(3) if volume.shape[axis] == 1]
    return [(VIEWS[axis], np.take(volume, centre[axis] if not thin else 0, axis=axis))
            for axis in (thin or range(3))]


def plane_aspect(view: str, affine: np.ndarray | None) -> float:
    """Height / width of one voxel of a view as drawn (imshow of the plane transposed), so that
    anisotropic voxels (e.g. 4.8 × 4.0 mm) do not stretch the anatomy."""
    if not view or affine is None:
        return 1.0
    zooms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))
    across, down = [a for a in range(3) if a != VIEWS.index(view)]
    return float(zooms[down] / zooms[across])


def cut_label(view: str, affine: np.ndarray | None, centre: tuple[int, ...]) -> str:
    """A view with the world coordinate of its cut, as viewers show it: "axial z = 12 mm"."""
    if not view or affine is None:
        return view
    axis = VIEWS.index(view)
    world = np.asarray(affine, dtype=np.float64) @ np.array([*centre, 1.0])
    return f"{view} {WORLD_AXES[axis]} = {world[axis]:.0f} mm"


def peak(fa: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, ...]:
    """Where |FA| (smoothed a little, so one noisy voxel does not win) is largest inside the mask."""
    from scipy import ndimage

    smooth = ndimage.uniform_filter(np.abs(fa), size=3)
    if mask is not None:
        smooth = np.where(mask > 0, smooth, 0)
    return tuple(int(i) for i in np.unravel_index(np.argmax(smooth), smooth.shape))


OVERLAY_FLOOR = 0.2  # |FA| below this share of the colour range is left transparent: the scan shows through


def orientation_letters(ax, view: str = "axial") -> None:
    """The subject's directions at the edges of a slice (neurological convention: left on the left)."""
    left, right, bottom, top = ORIENTATION[view]
    style = {"transform": ax.transAxes, "fontsize": 10, "color": "#f5d742", "fontweight": "bold"}
    for text, x, y, ha, va in ((left, 0.02, 0.5, "left", "center"), (right, 0.98, 0.5, "right", "center"),
                               (bottom, 0.5, 0.02, "center", "bottom"), (top, 0.5, 0.98, "center", "top")):
        ax.text(x, y, text, ha=ha, va=va, **style)


RELEVANCE_CMAP = "inferno"  # post-hoc relevance (ReLU'd Grad-CAM, |gradients|) has no sign: a sequential map


def overlay(ax, image: np.ndarray, fa: np.ndarray | None, mask: np.ndarray | None, limit: float,
            view: str = "axial", relevance: bool = False, aspect: float = 1.0):
    """A grey scan with the FA map on top (inside the mask, where |FA| ≥ OVERLAY_FLOOR × range),
    with its orientation letters. ``relevance``: a map without sign, drawn from 0 in a sequential
    map. ``aspect``: a voxel's height / width (plane_aspect)."""
    ax.imshow(image.T, cmap="gray", origin="lower", vmin=-1, vmax=1, interpolation="nearest", aspect=aspect)
    if fa is not None:
        hidden = np.abs(fa) < OVERLAY_FLOOR * limit
        shown = np.ma.masked_where(hidden | ((mask <= 0) if mask is not None else False), fa)
        ax.imshow(shown.T, cmap=RELEVANCE_CMAP if relevance else FA_CMAP, origin="lower",
                  vmin=0 if relevance else -limit, vmax=limit, alpha=0.85, interpolation="nearest", aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])
    orientation_letters(ax, view)


def variance_panel(ax, plane: np.ndarray, mask: np.ndarray | None, view: str = "axial", aspect: float = 1.0,
                   vmax: float | None = None):
    """Where the samples disagree, in a sequential map from 0; outside the brain black, as dark
    as the other panels' background. Returns the image (for its colour bar)."""
    ax.set_facecolor("black")
    artist = ax.imshow((np.ma.masked_where(mask <= 0, plane) if mask is not None else plane).T, cmap="magma",
                       origin="lower", interpolation="nearest", vmin=0 if vmax is not None else None, vmax=vmax,
                       aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])
    orientation_letters(ax, view)
    return artist


def _wrapped(title: str, fig) -> str:
    """A title broken into lines that fit the figure's width (long BIDS names would be cut off)."""
    return "\n".join(textwrap.wrap(title, max(40, int(fig.get_figwidth() * 13))))


def explanation_figure(path: str | Path, image: np.ndarray, fa_mean: np.ndarray, fa_var: np.ndarray | None,
                       mask: np.ndarray | None, title: str, gt_map: np.ndarray | None = None,
                       map_title: str = "mean FA over input", affine: np.ndarray | None = None) -> Path:
    """One scan: the input, the mean FA map over it, the FA variance (and the ground truth if
    known), each with a labelled colour bar; the mean FA and the ground truth share one
    symmetric scale (both are intensity changes), and masked voxels are black in every panel.
    3D volumes: three orthogonal views (rows) through the largest mean effect, each row named
    with its cut in mm (``affine``: the arrays' voxel → mm matrix)."""
    plt = pyplot()
    (image, fa_mean, fa_var, mask, gt_map), affine = to_ras([image, fa_mean, fa_var, mask, gt_map], affine)
    centre = peak(fa_mean, mask) if image.ndim == 3 else ()
    panels = [("input", None, None), (map_title, fa_mean, "fa")]
    if fa_var is not None:
        panels.append(("FA variance", fa_var, "var"))
    if gt_map is not None:
        panels.append(("ground-truth change", gt_map, "fa"))
    views = _views(image, centre)
    fig, axes = plt.subplots(len(views), len(panels), figsize=(3.1 * len(panels), 3.0 * len(views) + 0.5),
                             squeeze=False, layout="constrained")
    masks = _views(mask, centre) if mask is not None else [(v, None) for v, _ in views]
    shared = max(symmetric_limit(v, mask) for v in (fa_mean, gt_map) if v is not None)  # one scale for changes
    for c, (name, volume, kind) in enumerate(panels):
        planes = _views(volume, centre) if volume is not None else views
        limit = shared if kind == "fa" else None
        for r, ((view, base), (_, plane), (_, m)) in enumerate(zip(views, planes, masks)):
            ax = axes[r, c]
            if kind == "var":
                artist = variance_panel(ax, plane, m, view, plane_aspect(view, affine))
            else:
                overlay(ax, base, plane if kind == "fa" else None, m, limit or 1.0, view,
                        aspect=plane_aspect(view, affine))
            if r == 0:
                ax.set_title(name, fontsize=10)
            if c == 0:
                ax.set_ylabel(cut_label(view, affine, centre), fontsize=10)
        if kind == "fa" and c == max(k for k, (_, _, other) in enumerate(panels) if other == "fa"):
            # one bar for the shared scale, beside the last panel drawn on it
            scalar = plt.cm.ScalarMappable(cmap=FA_CMAP, norm=plt.Normalize(-shared, shared))
            fig.colorbar(scalar, ax=axes[:, c], shrink=0.8, label="change (input in [-1, 1])"
                         + (", both maps" if gt_map is not None else ""))
        elif kind == "var":
            fig.colorbar(artist, ax=axes[:, c], shrink=0.8, label="variance over samples")
    fig.suptitle(_wrapped(title, fig), fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def interpolation_strip(path: str | Path, images: np.ndarray, fa_maps: np.ndarray, mask: np.ndarray | None,
                        probabilities: np.ndarray, targets: np.ndarray | None, title: str,
                        class_names: Sequence[str] = ("0", "1"), affine: np.ndarray | None = None) -> Path:
    """Top row: the images along the walk; bottom row: their change from the first step (the
    scan rebuilt with its own attribute), so only what the attribute walk changes shows. 3D:
    the axial plane through the largest final change."""
    plt = pyplot()
    k = len(images)
    volumes, affine = to_ras([*images, *fa_maps, mask], affine)
    images, fa_maps, mask = np.stack(volumes[:k]), np.stack(volumes[k:2 * k]), volumes[-1]
    centre = peak(fa_maps[-1], mask) if images[0].ndim == 3 else ()
    limit = symmetric_limit(fa_maps[-1], mask)
    fig, axes = plt.subplots(2, k, figsize=(1.9 * k, 4.2), squeeze=False, layout="constrained")
    for i in range(k):
        view, plane = _views(images[i], centre)[-1]
        fa_plane = _views(fa_maps[i], centre)[-1][1]
        m = _views(mask, centre)[-1][1] if mask is not None else None
        overlay(axes[0, i], plane, None, None, limit, view, aspect=plane_aspect(view, affine))
        overlay(axes[1, i], plane, fa_plane, m, limit, view, aspect=plane_aspect(view, affine))
        label = f"p({class_names[-1]}) {probabilities[i, -1]:.2f}"
        if targets is not None:
            label += f"\ntarget {targets[i]:.1f}"
        axes[0, i].set_title(label, fontsize=10)
    axes[0, 0].set_ylabel("translated")
    axes[1, 0].set_ylabel("change from step 0")
    cut = cut_label(view, affine, centre)
    fig.suptitle(_wrapped(title + (f" ({cut})" if cut else ""), fig), fontsize=10)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def _ras_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file as a RAS volume (X, Y, Z), whatever its stored orientation (LPS, …), and
    its affine."""
    import nibabel as nib

    image = nib.load(str(path))
    if len(image.shape) == 2:
        return np.asarray(image.dataobj, dtype=np.float32)[:, :, None], image.affine
    image = nib.as_closest_canonical(image)
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _ras_volume(path: Path) -> np.ndarray:
    return _ras_image(path)[0]


def _display_range(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A scan in the [−1, 1] the overlays draw: as is when it is already there (the model's
    scaling), else its 1st–99th percentiles inside the brain (a scan in scanner units)."""
    if image.min() >= -1.01 and image.max() <= 1.01:
        return image
    values = image[mask > 0] if mask is not None and (mask > 0).any() else image
    lo, hi = np.percentile(values, (1, 99))
    return np.clip(2 * (image - lo) / max(hi - lo, 1e-12) - 1, -1, 1)


class Panel(NamedTuple):
    title: str
    data: np.ndarray | None
    kind: str  # input, change (ground truth and mean FA: one shared scale), var, relevance (post-hoc), signed


@dataclass
class GalleryRow:
    """One subject of the gallery on its axial slice: the image, its mask and a panel per map."""

    stem: str
    image: np.ndarray
    mask: np.ndarray | None
    panels: list[Panel]
    cut: str  # where the slice lies (mm)
    aspect: float
    facts: str  # what is known of the subject (label, target)


def gallery_figure(csv_path: Path, methods: dict[str, Path], subjects: int = 4, run_dir: Path | None = None):
    """The same test subjects of a cohort table (classes alternating, one row each) under every
    method's map (``methods``: name → an `icam explain` folder), next to the ground truth. The
    table is read as the first method's run reads it (column names, classes, splits.csv). The
    ground truth and the first method's mean map share one symmetric colour range; the first
    method's variance follows when written; every other map has its own range. None without
    test rows. ``run_dir``: the run, when the explanations do not name theirs."""
    folders = {name: ExplanationFolder.at(folder) for name, folder in methods.items()}
    first_folder = next(iter(folders.values()))
    table = read_run_table(first_folder.run_dir() or run_dir, csv_path)
    explained = [r for r in table.rows if first_folder.map(r.id).is_file()]
    rows = [r for r in explained if r.split == "test"] or explained
    by_class = [[r for r in rows if r.label == k] for k in sorted({r.label for r in rows})]
    chosen = [r for group in zip(*by_class) for r in group][:subjects] or rows[:subjects]
    if not chosen:
        return None
    # the method each folder's summary.json names (post-hoc name, vagan), read once, not per row
    method_of = {name: folder.read_summary().get("method", "") for name, folder in folders.items()}
    return _draw_gallery([_gallery_row(row, folders, method_of) for row in chosen])


def _gallery_row(row, folders: dict[str, ExplanationFolder], method_of: dict[str, str]) -> GalleryRow:
    """One subject's panels on the axial slice (RAS, as the figures' convention) where the first
    method's map is largest."""
    names = list(folders)
    first_folder = folders[names[0]]
    written_mask = first_folder.map(row.id, "mask")
    mask_file = row.mask or (written_mask if written_mask.is_file() else None)
    volumes = {name: _ras_volume(folder.map(row.id)) if folder.map(row.id).is_file() else None
               for name, folder in folders.items()}
    mask_volume = _ras_volume(mask_file) if mask_file else None
    first = volumes[names[0]]
    assert first is not None  # the gallery shows subjects the first method explained
    energy = np.abs(first * (mask_volume > 0 if mask_volume is not None else 1)).sum((0, 1))
    k = int(np.argmax(energy))

    def axial(volume):
        return volume[:, :, k] if volume is not None else None
    mask = axial(mask_volume)
    image_volume, affine = _ras_image(row.image)
    maps = {name: axial(volume) for name, volume in volumes.items()}
    panels = [Panel("input", None, "input")]
    if row.gt_map:
        panels.append(Panel("ground truth", axial(_ras_volume(row.gt_map)), "change"))
    panels.append(Panel(f"{names[0]}: mean FA", maps[names[0]], "change"))
    variance = first_folder.map(row.id, "fa_var")
    if variance.is_file():
        panels.append(Panel(f"{names[0]}: variance", axial(_ras_volume(variance)), "var"))
    for name in names[1:]:  # post-hoc maps are relevance (scored by |map|); VA-GAN's is a signed change
        data = maps[name]
        posthoc = method_of[name] in POSTHOC or (data is not None and data.min() >= 0)
        panels.append(Panel(name, np.abs(data) if posthoc and data is not None else data,
                            "relevance" if posthoc else "signed"))
    facts = ([row.raw_label] if row.raw_label else []) + ([f"target {row.target:.1f}"] if not np.isnan(row.target)
                                                          else [])
    return GalleryRow(row.id, _display_range(axial(image_volume), mask), mask, panels,
                      cut_label("axial", affine, (image_volume.shape[0] // 2, image_volume.shape[1] // 2, k)),
                      plane_aspect("axial", affine), ", ".join(facts))


def _draw_gallery(rows: list[GalleryRow]):
    """The rows drawn: one scale for every intensity change (ground truth and the mean FA, all
    rows) and one for the variances; post-hoc maps are in other units, each shown relative to its
    own range; one colour bar per scale."""
    change = max([symmetric_limit(p.data, r.mask) for r in rows for p in r.panels
                  if p.kind == "change" and p.data is not None] or [1.0])
    spread = max([float(np.percentile(p.data[r.mask > 0] if r.mask is not None and (r.mask > 0).any() else p.data,
                                      99.5))
                  for r in rows for p in r.panels if p.kind == "var" and p.data is not None] or [1.0])
    plt = pyplot()
    columns = len(rows[0].panels)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns + 1.5, 2.6 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, row in enumerate(rows):
        for c, panel in enumerate(row.panels):
            ax = axes[r, c]
            if panel.kind == "var" and panel.data is not None:
                variance_panel(ax, panel.data, row.mask, aspect=row.aspect, vmax=spread)
            elif panel.kind in ("relevance", "signed") and panel.data is not None:
                overlay(ax, row.image, panel.data / symmetric_limit(panel.data, row.mask), row.mask, 1.0,
                        relevance=panel.kind == "relevance", aspect=row.aspect)
            else:
                overlay(ax, row.image, panel.data, row.mask, change, aspect=row.aspect)
            if r == 0:
                ax.set_title(panel.title, fontsize=10)
        axes[r, 0].set_ylabel("\n".join(filter(None, (row.stem, row.facts, row.cut))), fontsize=10)
    kinds = [p.kind for p in rows[0].panels]
    bars = {"change": (FA_CMAP, -change, change, "change (input in [-1, 1])"),
            "var": ("magma", 0, spread, "variance over samples"),
            "relevance": (RELEVANCE_CMAP, 0, 1, "relevance / its 99.5th percentile"),
            "signed": (FA_CMAP, -1, 1, "signed map / its 99.5th percentile")}
    for kind, (cmap, low, high, label) in bars.items():
        if kind in kinds:  # one bar per scale, beside the last column drawn on it
            column = len(kinds) - 1 - kinds[::-1].index(kind)
            scalar = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(low, high))
            bar = fig.colorbar(scalar, ax=axes[:, column], shrink=0.8, label=label, location="bottom", aspect=12)
            bar.set_ticks([low, (low + high) / 2, high], labels=[f"{t:.2g}" for t in (low, (low + high) / 2, high)])
    return fig


TSNE_MINIMUM = 30  # explained scans a t-SNE of attribute means needs: fewer make a picture of noise (perplexity ~ n/3)


def tsne_figure(path: str | Path, attributes: np.ndarray, labels: np.ndarray, targets: np.ndarray | None,
                seed: int = 0) -> Path:
    """t-SNE of attribute means, coloured by class and (when known) by target (paper Fig. 8)."""
    from sklearn.manifold import TSNE

    plt = pyplot()
    perplexity = float(min(30, max(2, (len(attributes) - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(attributes)
    show_target = targets is not None and np.isfinite(targets).any()
    fig, axes = plt.subplots(1, 1 + show_target, figsize=(4.8 * (1 + show_target), 4), squeeze=False,
                             layout="constrained")
    for k in np.unique(labels):
        chosen = labels == k
        axes[0, 0].scatter(xy[chosen, 0], xy[chosen, 1], s=14, label=str(k),
                           color=plt.cm.tab10(int(np.flatnonzero(np.unique(labels) == k)[0]) % 10))
    axes[0, 0].legend(fontsize=10)
    axes[0, 0].set_title("attribute means, by class", fontsize=10)
    if show_target:
        sc = axes[0, 1].scatter(xy[:, 0], xy[:, 1], c=targets, cmap="viridis", s=14)
        fig.colorbar(sc, ax=axes[0, 1], label="target")
        axes[0, 1].set_title("attribute means, by target", fontsize=10)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)
