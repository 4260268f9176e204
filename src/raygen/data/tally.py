"""Counting a Ray dataset's column values without a shuffle: per batch in the workers, summed on the
driver (a few rows per batch reach it). Used by the data job and the dataset card."""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray

_SUM = "\x00sum:"  # value-column prefix of the per-batch sums in _count_values' output


def _count_values(batch: pd.DataFrame, col: str, sums: list[str]) -> pd.DataFrame:
    vc = batch[col].astype(str).value_counts()
    values = list(vc.index.astype(str)) + [_SUM + c for c in sums]
    counts = list(vc.to_numpy(dtype=np.int64)) + [int(batch[c].sum()) for c in sums]
    return pd.DataFrame({"value": values, "n": np.array(counts, dtype=np.int64)})


def tally(ds: ray.data.Dataset, col: str, sums: list[str] | None = None):
    """value -> rows, counted per batch in the workers and summed here: a few rows per batch reach the
    driver, and no shuffle runs (a groupby would start a pool of aggregator actors for a handful of keys).
    With sums, also {column: total} from the same pass: returns (counts, totals)."""
    out: dict[str, int] = {}
    for b in ds.map_batches(_count_values, batch_format="pandas", fn_kwargs={"col": col, "sums": sums or []}) \
            .iter_batches(batch_format="pandas", batch_size=None):
        for v, n in zip(b["value"], b["n"], strict=True):
            out[v] = out.get(v, 0) + int(n)
    if sums is None:
        return out
    totals = {c: out.pop(_SUM + c, 0) for c in sums}
    return out, totals
