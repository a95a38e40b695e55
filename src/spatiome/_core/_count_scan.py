"""One compiled pass over stored values: are they all finite, non-negative integers?

Kept apart from :mod:`spatiome._core.validate` so that importing spatiome does not import
numba; :func:`~spatiome._core.validate.check_counts` loads it on its first float input.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Values per block: the scan has no branch inside a block (so it vectorizes) and stops
#: at the end of the first block that holds a bad value.
BLOCK = 4096


def all_counts(values: np.ndarray) -> bool:
    """True when every entry of the 1-D float array is a finite, non-negative integer.

    Reads the array once, at memory bandwidth, without temporaries; stops early at the
    first block holding a bad value.

    Examples
    --------
    >>> all_counts(np.array([0.0, 3.0, 12.0]))
    True
    >>> [all_counts(np.array(bad)) for bad in ([1.0, np.nan], [np.inf], [2.5], [-1.0])]
    [False, False, False, False]
    """
    return bool(_all_counts(np.ascontiguousarray(values).ravel()))


@numba.njit(cache=True, nogil=True)
def _all_counts(values):  # pragma: no cover - compiled
    n = values.size
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        bad = 0
        for i in range(start, stop):
            v = values[i]
            # NaN fails every comparison; +inf is the only value equal to its floor that
            # is not below inf.
            bad |= not ((v >= 0.0) & (v < math.inf) & (np.floor(v) == v))
        if bad:
            return False
    return True
