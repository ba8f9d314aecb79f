"""Contrastive head: image and caption features projected into one space, learnable temperature."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from capalign.errors import InputError
from capalign.models import guard

HEAD_WEIGHTS = "contrastive_head.safetensors"
HEAD_CONFIG = "contrastive_head.json"
MAX_DIM = 1 << 16  # widths beyond this are refused before anything is allocated


class ContrastiveHead(nn.Module):
    """CLIP-style projections; `logit_scale` starts at log(1/0.07) as in CLIP."""

    def __init__(self, image_dim: int, text_dim: int, projection_dim: int):
        super().__init__()
        self.dims = {"image_dim": image_dim, "text_dim": text_dim, "projection_dim": projection_dim}
        self.image_proj = nn.Linear(image_dim, projection_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_image(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(pooled), dim=-1)

    def embed_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)

    def save(self, run_dir: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(Path(run_dir) / HEAD_WEIGHTS))
        (Path(run_dir) / HEAD_CONFIG).write_text(json.dumps(self.dims))

    @classmethod
    def load(cls, run_dir: Path) -> "ContrastiveHead | None":
        """The run's head, or None when the run has none."""
        run_dir = Path(run_dir)
        if not (run_dir / HEAD_CONFIG).is_file():
            return None
        with guard.loading(run_dir, what=HEAD_CONFIG):
            dims = json.loads((run_dir / HEAD_CONFIG).read_bytes().decode("utf-8"))
        keys = ("image_dim", "text_dim", "projection_dim")
        if not isinstance(dims, dict) or set(dims) != set(keys) or \
                not all(type(dims[k]) is int and 1 <= dims[k] <= MAX_DIM for k in keys):
            raise InputError(f"cannot load model from {run_dir}: {HEAD_CONFIG} must give {', '.join(keys)} as whole "
                             f"numbers from 1 to {MAX_DIM}; {guard.HINT}")
        wanted = {"image_proj.weight": (dims["projection_dim"], dims["image_dim"]),
                  "text_proj.weight": (dims["projection_dim"], dims["text_dim"]), "logit_scale": ()}
        if guard.safetensors_shapes(run_dir / HEAD_WEIGHTS, run_dir) != wanted:
            raise InputError(f"cannot load model from {run_dir}: {HEAD_WEIGHTS} does not match {HEAD_CONFIG}; {guard.HINT}")
        head = cls(**dims)
        with guard.loading(run_dir, what=HEAD_WEIGHTS):
            head.load_state_dict(load_file(str(run_dir / HEAD_WEIGHTS)))
        return head


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at each sequence's last real token (the EOS the caption ends with)."""
    last = attention_mask.long().sum(dim=1) - 1
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
