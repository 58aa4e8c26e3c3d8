"""The restricted unpickler: tensors and plain data come back; other pickled classes are inert records."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types

import numpy as np
import torch

from stok.models.hubert.safe_unpickle import PickledObject, load_checkpoint, loads, plain


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_code_named_by_a_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "x": Evil(str(marker)), "y": EvilEval()}, path)
    obj, stubbed = load_checkpoint(str(path))
    assert not marker.exists()
    assert "posix.system" in stubbed or "os.system" in stubbed or "nt.system" in stubbed
    assert {"builtins.eval", "__builtin__.eval"} & stubbed
    assert isinstance(obj["x"], PickledObject) and isinstance(obj["y"], PickledObject)
    assert torch.equal(obj["model"]["w"], torch.ones(2))


def test_plain_data_tensors_numpy_and_namespace(tmp_path):
    path = tmp_path / "ok.pt"
    ns = argparse.Namespace(encoder_layers=12, normalize=False, conv_feature_layers="[(512,10,5)]")
    data = {"args": ns, "t": torch.arange(6, dtype=torch.float16).reshape(2, 3), "p": torch.nn.Parameter(torch.ones(3)),
            "np": np.float64(2.5), "arr": np.arange(4, dtype=np.int32), "s": {1, 2}, "od": torch.nn.Linear(2, 2).state_dict()}
    torch.save(data, path)
    obj, stubbed = load_checkpoint(str(path))
    assert not stubbed
    assert isinstance(obj["args"], argparse.Namespace) and obj["args"].encoder_layers == 12
    assert obj["t"].dtype == torch.float16 and obj["t"].shape == (2, 3)
    assert float(obj["np"]) == 2.5 and obj["arr"].tolist() == [0, 1, 2, 3] and obj["s"] == {1, 2}
    assert set(obj["od"]) == {"weight", "bias"}


def test_omegaconf_like_containers_become_plain_dicts():
    """A stand-in for OmegaConf's pickled DictConfig/AnyNode (state with _content / _val): read as plain data."""
    mod = types.ModuleType("omegaconf_fake_dictconfig")

    class DictConfig:
        def __init__(self, content):
            self.__dict__.update({"_metadata": None, "_parent": None, "_content": content})

    class AnyNode:
        def __init__(self, val):
            self.__dict__.update({"_val": val, "_metadata": None, "_parent": None})

    for c in (DictConfig, AnyNode):
        c.__module__, c.__qualname__ = mod.__name__, c.__name__
        setattr(mod, c.__name__, c)
    sys.modules[mod.__name__] = mod
    try:
        blob = pickle.dumps({"cfg": DictConfig({"model": DictConfig({"encoder_layers": AnyNode(12),
                                                                      "_name": AnyNode("hubert")})})}, protocol=2)
    finally:
        del sys.modules[mod.__name__]
    obj = loads(blob)
    assert plain(obj["cfg"]) == {"model": {"encoder_layers": 12, "_name": "hubert"}}


def test_legacy_torch_format(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"model": {"w": torch.full((2, 2), 3.0)}, "args": argparse.Namespace(a=1)}, path,
               _use_new_zipfile_serialization=False)
    obj, _ = load_checkpoint(str(path))
    assert obj["model"]["w"].sum().item() == 12.0 and obj["args"].a == 1
