"""Every stage carries only the params its code reads (issue 12: the data node once took ~45 flat keys it never used).

A param counts as read when its name occurs in the code that gets the stage's params: an attribute (``p.name``),
a ``getattr(p, "name")`` string or a keyword, in the stage's own module (and its base stages') or in a module the
stage hands its params to (``DELEGATES``, each with the call that hands them over). A param nobody reads fails here, naming it.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from pathlib import Path

import pytest
from rollgraph.graph.cli import main
from rollgraph.graph.registry import registered_stages
from rollgraph.graph.stage import Stage

# stage type -> modules its params are passed to
DELEGATES = {
    "load.dataset": ("rollgraph.stages.latent_data",  # load_latent_dataset(ctx, p, family)
                     "rollgraph.stages.dreambooth",  # collect_items(params), validation_prompts(params, ...)
                     "rollgraph.stages.models.latent",  # family.preflight(params, resolution)
                     "rollgraph.stages.models.lora"),  # lora.lora_rank(params, ...) inside preflight
    "load.class_images": ("rollgraph.stages.latent_data",  # load_latent_dataset(ctx, p, family, items=class_items(p))
                          "rollgraph.stages.dreambooth",
                          "rollgraph.stages.models.latent"),  # family.check_folder(params)
    "model.load": ("rollgraph.stages.models.latent", "rollgraph.stages.models.unet2d",  # family.build(self.params, data)
                   "rollgraph.stages.models.flux", "rollgraph.stages.models.sd", "rollgraph.stages.models.lora",
                   "rollgraph.stages.models.text_lora"),
}


def names_in(module_name: str) -> set[str]:
    """Attribute names, keyword names and string constants in a module's source."""
    tree = ast.parse(Path(inspect.getsourcefile(sys.modules[module_name])).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    return names


@pytest.mark.parametrize("tag", [t for t in registered_stages() if not t.startswith("test.")])
def test_every_param_of_a_stage_is_read_by_its_code(tag):
    cls = registered_stages()[tag]
    for module in DELEGATES.get(tag, ()):
        __import__(module)
    own = {c.__module__ for c in cls.__mro__ if issubclass(c, Stage) and c is not Stage}  # a subclass runs its base's code
    read = set().union(*(names_in(m) for m in (*own, *DELEGATES.get(tag, ()))))
    unread = [name for name in cls.Params.model_fields if name not in read]
    assert not unread, f"{tag} ({cls.__name__}) carries params its code never reads: {unread}"


def test_the_check_names_an_unread_param():
    from pydantic import BaseModel
    from rollgraph.stages.loss import MSELoss

    class Padded(BaseModel):
        snr_gamma: float | None = None
        validation_num_images: int = 4  # a key loss.mse has no use for

    read = names_in(MSELoss.__module__)
    assert [n for n in Padded.model_fields if n not in read] == ["validation_num_images"]


def test_the_data_node_shows_only_what_it_reads(tiny, capsys):
    assert main(["graph", str(tiny()), "--format", "json"]) == 0
    nodes = {n["id"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    data = set(nodes["data"]["params"])
    assert "resolution" in data and "instance_data_dir" in data and len(data) <= 24
    assert not data & {"validation_num_images", "validation_sampler", "lora_alpha", "num_train_timesteps", "learning_rate",
                       "caption_dropout_probability", "gradient_checkpointing"}
    assert set(nodes["batch"]["params"]) == {"train_batch_size", "random_flip", "caption_dropout_probability"}
    assert "gradient_accumulation_steps" not in nodes["optimizer"]["params"]
