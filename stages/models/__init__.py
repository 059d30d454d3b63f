"""Model-family adapters: how to build, call and save each kind of diffusers denoiser."""

from rollgraph.stages.models import flux, sd, sd3, unet2d  # noqa: F401  (registers the families)
from rollgraph.stages.models.base import FAMILIES, ModelAdapter, ModelParams, get_family
from rollgraph.stages.models.latent import LatentAdapter

__all__ = ["FAMILIES", "LatentAdapter", "ModelAdapter", "ModelParams", "get_family"]
