"""Built-in stages. Importing this package registers them (and their port types)."""

from rollgraph.stages import (  # noqa: F401
    load,
    loss,
    noise,
    optimize,
    predict,
    prior_preservation,
    probe,
    reflexflow,
    rollout,
    sampling,
    types,  # noqa: F401  (port types first)
)
