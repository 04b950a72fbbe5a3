"""The restricted unpickler admits numpy arrays and containers only."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from itmflow.errors import UnsafeCheckpointError
from itmflow.safe_pickle import restricted_load


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_state_dict_round_trips(tmp_path, protocol):
    state = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3)},
             "names": ["a", "b"], "shape": (1, 2)}
    path = tmp_path / "ckpt.pkl"
    path.write_bytes(pickle.dumps(state, protocol=protocol))
    loaded = restricted_load(path)
    np.testing.assert_array_equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["model"]["n"] == 3 and loaded["names"] == ["a", "b"] and loaded["shape"] == (1, 2)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_code_execution_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": _Evil()}))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        restricted_load(path)
