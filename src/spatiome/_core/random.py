"""One way to turn ``random_state`` into a generator."""

from __future__ import annotations

import numpy as np


def check_random_state(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """Return a numpy Generator; ``None`` means seed 0 so runs are reproducible by default."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(0 if random_state is None else random_state)
