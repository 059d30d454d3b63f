"""Model-family adapters: how to build, call and save each kind of diffusers denoiser."""

from rollgraph.stages.models import unet2d  # noqa: F401  (registers the family)
from rollgraph.stages.models.base import FAMILIES, ModelAdapter, ModelParams, get_family

__all__ = ["FAMILIES", "ModelAdapter", "ModelParams", "get_family"]
