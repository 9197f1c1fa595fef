"""Class-mix drift: has the share of each predicted class moved?

The reference needs no extra storage: its quantile sketch of ``pred_class`` holds evenly
spaced order statistics, so counting each class value in the sketch gives the reference's
class proportions. The current window's predicted classes are counted directly, and the two
are compared with the Jensen-Shannon divergence (base 2, 0 = same mix, 1 = disjoint).

>>> import numpy as np
>>> sketch = np.repeat([0.0, 1.0, 2.0], [50, 30, 20])
>>> round(class_mix(sketch, np.repeat([0.0, 1.0, 2.0], [50, 30, 20]))[0], 6)
0.0
>>> class_mix(sketch, np.full(100, 2.0))[0] > 0.3
True
>>> class_mix(np.zeros(64), np.zeros(10)) is None   # one class: nothing to compare
True
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from .categorical import js_divergence

Array = npt.NDArray[Any]

MAX_CLASSES = 4096
#: The feature name of the class-mix drift alert.
CLASS_MIX_FEATURE = "class_mix"


def class_mix(reference_sketch: Array, current: Array,
              max_classes: int = MAX_CLASSES) -> Optional[Tuple[float, Array, Array]]:
    """``(js, reference_fractions, current_fractions)``, or None when there is no mix to compare.

    None when the reference saw fewer than two classes or the window has no prediction.
    NaN (no prediction) and out-of-range class values are ignored.
    """
    ref = reference_sketch[np.isfinite(reference_sketch)]
    cur = current[np.isfinite(current)]
    ref = ref[(ref >= 0) & (ref < max_classes)].astype(np.int64)
    cur = cur[(cur >= 0) & (cur < max_classes)].astype(np.int64)
    if ref.size == 0 or cur.size == 0 or np.unique(ref).size < 2:
        return None
    k = int(max(ref.max(), cur.max())) + 1
    ref_counts = np.bincount(ref, minlength=k).astype(np.float64)
    cur_counts = np.bincount(cur, minlength=k).astype(np.float64)
    js = js_divergence(ref_counts, cur_counts)
    return js, ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
