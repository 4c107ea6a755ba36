"""Tiny, randomly initialised CLIP judges built in code (no downloads), for tests and demos.

* :func:`build_tiny_clip` saves a ``CLIPModel`` + ``CLIPProcessor`` folder (offline byte-level BPE tokenizer
  from :mod:`prefkit.models.tiny`, 32 px image processor) that loads with ``AutoModel`` /
  ``AutoProcessor.from_pretrained(folder)``: a stand-in for PickScore_v1 and for CLIP ViT-L/14.
* :func:`build_tiny_aesthetic_mlp` writes a LAION aesthetic head (``layers.{0,2,4,6,7}.{weight,bias}``)
  for a given embedding size as a plain state dict (``.pth``, or ``.safetensors`` by suffix).

Command line::

    python -m prefkit.models.tiny_clip DIR            # DIR/clip (model + processor), DIR/aesthetic.pth
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["build_tiny_aesthetic_mlp", "build_tiny_clip"]

IMAGE_SIZE = 32


class _Folder:
    """Model + processor saved together (what ``prefkit.models.parts.build_model_folder`` calls ``save_pretrained`` on)."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model, self.processor = model, processor

    def save_pretrained(self, path, safe_serialization: bool = True) -> None:
        self.model.save_pretrained(path, safe_serialization=safe_serialization)
        self.processor.save_pretrained(path)


def _make_clip(seed: int, projection_dim: int, hidden_size: int) -> _Folder:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    from prefkit.models.parts import clip_tokenizer
    from prefkit.models.tiny import clip_text_config

    tokenizer = clip_tokenizer()
    text_config = clip_text_config(tokenizer, hidden_size=hidden_size, projection_dim=projection_dim)
    vision_config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
    )
    config = CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _Folder(model, processor)


def build_tiny_clip(
    path: str | os.PathLike, seed: int = 0, projection_dim: int = 16, hidden_size: int = 32
) -> str:
    """Build a tiny ``CLIPModel`` + ``CLIPProcessor`` (32 px images, ``projection_dim``-d features) into ``path``.

    The folder is written to a temporary sibling and renamed into place (an existing folder is replaced).
    """
    from prefkit.models.parts import build_model_folder

    return build_model_folder(lambda s: _make_clip(s, projection_dim, hidden_size), path, seed)


def build_tiny_aesthetic_mlp(path: str | os.PathLike, in_dim: int, seed: int = 0) -> str:
    """Write a random LAION aesthetic MLP for ``in_dim``-d embeddings as a plain state dict.

    ``.safetensors`` paths are written with safetensors, anything else with ``torch.save`` (loadable with
    ``torch.load(..., weights_only=True)``). Keys as the published ``sac+logos+ava1-l14-linearMSE.pth``.
    """
    import torch

    from prefkit.judges.clip import aesthetic_mlp

    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = {k: v.detach().clone().contiguous() for k, v in aesthetic_mlp(in_dim).state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
    return str(path)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefkit.models.tiny_clip", description="Build a tiny CLIP judge and aesthetic head."
    )
    parser.add_argument("path", help="output folder: PATH/clip and PATH/aesthetic.pth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--projection-dim", type=int, default=16)
    args = parser.parse_args(argv)
    root = Path(args.path)
    print(build_tiny_clip(root / "clip", seed=args.seed, projection_dim=args.projection_dim))
    print(build_tiny_aesthetic_mlp(root / "aesthetic.pth", in_dim=args.projection_dim, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
