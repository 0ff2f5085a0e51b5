"""Image grids of translations, for TensorBoard (2D images; the middle slice of 3D volumes)."""

from __future__ import annotations

import torch

from ..model import ICAM, fa_map, next_class


def middle_slice(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) unchanged; (N, C, D, H, W) → its middle slice along D."""
    return x[:, :, x.shape[2] // 2] if x.dim() == 5 else x


@torch.no_grad()
def translation_grid(model: ICAM, dataset, seed: int = 0, per_class: int = 2,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """A (1, H·rows, W·4) grid in [0, 1]: per row an input, its translation to the next class,
    the FA map (grey = no change, white = brighter, black = darker; scaled to the grid's
    largest change) and its translation to its own attribute mean (its reconstruction)."""
    picks = [int(i) for k in range(model.num_classes)
             for i in torch.nonzero(dataset.labels == k).flatten()[:per_class]]
    images = torch.stack([dataset[i]["image"] for i in picks]).to(device)
    labels = dataset.labels[picks].to(device)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    translated = model.translate(images, next_class(labels, model.num_classes), generator=generator).float()
    reconstructed = model.reconstruct(images).float()  # translated to its own attribute mean
    model.train(was_training)
    fa = fa_map(translated, images)
    columns = [(images + 1) / 2, (translated + 1) / 2, 0.5 + fa / (2 * fa.abs().max().clamp(min=1e-6)),
               (reconstructed + 1) / 2]
    rows = [torch.cat([middle_slice(c)[i, :1] for c in columns], dim=-1) for i in range(len(picks))]
    return torch.cat(rows, dim=-2).clamp(0, 1).cpu()
