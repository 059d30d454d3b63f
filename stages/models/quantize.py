"""A low-memory frozen base (``base_model_precision``): the denoiser's frozen Linear weights stored in bf16,
int8 or fp8 while the LoRA adapter trains in float32.

- ``auto``: as before — frozen weights in bf16 under bf16 autocast (CUDA), float32 otherwise.
- ``bf16``: frozen weights in bf16; needs bf16 autocast (``mixed_precision`` auto/bf16 on CUDA), since without
  it a float32 input meets a bf16 weight.
- ``int8`` / ``fp8``: torchao weight-only quantisation (``Int8WeightOnlyConfig``: one int8 weight and one
  scale per output channel; ``Float8WeightOnlyConfig``: float8 e4m3 weights) of every frozen ``nn.Linear`` of
  the denoiser, including the base layers inside peft's LoRA / LoHa / LoKr wrappers; the adapter's own layers
  stay float32 and receive gradients through the quantised layers. Convolutions, norms and embeddings stay as
  they are. Weight memory of the quantised layers: ¼ (int8, fp8) of float32.

Whether a device can run a scheme is found by trying it on one small Linear there: a device that cannot
(torchao missing, a dtype or kernel the device lacks) is refused with the key named before training starts.
"""

from __future__ import annotations

import importlib.util

import torch
from rollgraph.graph import ConfigError, Issue

KEY = "base_model_precision"
SCHEMES = ("int8", "fp8")


def _config(scheme: str):
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if scheme == "int8" else Float8WeightOnlyConfig()


def check_device(scheme: str, device: torch.device, autocast_dtype) -> None:
    """Refuse (exit 2, naming the key) what this device cannot run."""
    if scheme == "bf16":
        if autocast_dtype != torch.bfloat16:
            raise ConfigError([Issue(KEY, f"bf16 stores the frozen weights in bf16 and needs bf16 autocast, which runs on CUDA "
                                          f"with mixed_precision auto or bf16; this run computes in float32 on {device.type}")])
        return
    if scheme not in SCHEMES:
        return
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError([Issue(KEY, f"{scheme} needs the 'torchao' package, which is not installed (pip install torchao)")])
    from torchao.quantization import quantize_

    probe = torch.nn.Linear(32, 32).to(device)
    try:
        quantize_(probe, _config(scheme))
        with torch.no_grad():
            probe(torch.randn(2, 32, device=device))
    except Exception as err:  # the device lacks a dtype or kernel torchao needs for this scheme
        raise ConfigError([Issue(KEY, f"{scheme} weight-only quantisation does not run on {device} here "
                                      f"({type(err).__name__}: {str(err).splitlines()[0][:160]})")]) from None


def quantize_frozen_linears(module: torch.nn.Module, scheme: str) -> int:
    """Quantise every frozen nn.Linear of the module in place (adapter layers excluded); returns how many."""
    from torchao.quantization import quantize_

    def frozen_linear(mod, fqn: str) -> bool:
        return isinstance(mod, torch.nn.Linear) and not mod.weight.requires_grad and "lora_" not in fqn

    count = sum(1 for name, mod in module.named_modules() if frozen_linear(mod, name))
    quantize_(module, _config(scheme), filter_fn=frozen_linear)
    return count
