"""A restricted unpickler for checkpoints that pickle more than tensors (fairseq ``.pt`` files).

Why: a fairseq checkpoint such as ``hubert_base_ls960.pt`` is a pickle of ``{"cfg" or "args", "model",
"task_state", "optimizer_history", "extra_state", ...}``. Besides tensors it holds objects of fairseq's own
classes (``fairseq.data.dictionary.Dictionary`` in ``task_state``), sometimes an ``argparse.Namespace``
(older files keep their options in ``args``), OmegaConf containers (a few hydra-era files keep ``cfg`` as a
``DictConfig``) and numpy scalars. ``torch.load(weights_only=True)`` refuses such files; a full unpickle
(``weights_only=False``) would import fairseq and run whatever code the file names. We need neither: only
``model`` (tensors) and the architecture fields of ``cfg``/``args``.

How: :func:`load` runs ``torch.load`` (which handles the zip and legacy formats and tensor storages) with this
module as its ``pickle_module``. Every global the pickle names goes through :meth:`Unpickler.find_class`:

1. **Real objects, an exact allowlist** of what tensors and plain data need: torch's tensor/parameter rebuild
   functions, dtypes, layouts, ``torch.Size``/``torch.device``, ``collections.OrderedDict``/``defaultdict``,
   builtin container and scalar types, ``argparse.Namespace`` (its constructor only sets attributes), numpy's
   array/scalar reconstructors and ``_codecs.encode`` (used by protocol-2 numpy pickles).
2. **Everything else becomes an inert stub**: a fresh class named after the global, whose construction,
   ``__setstate__``, item and append calls only *record* their arguments. No code of the named module runs
   and nothing is imported, so a pickle naming ``os.system`` or ``fairseq.something`` yields a harmless record.
   Stubs of OmegaConf containers and nodes are turned back into plain dicts/lists/values by :func:`plain`.
3. Tensor rebuilding for tensor *subclasses* (``torch._tensor._rebuild_from_type_v2``) is allowed only
   when the wrapped function is itself on the allowlist and the type is ``torch.Tensor``/``Parameter``.

A full unpickle is never needed to extract HuBERT weights. If a file is damaged or uses a tensor type outside
the allowlist the load fails with the global's name; converting the file once with fairseq installed
(``torch.save({"cfg": ck["cfg"], "model": ck["model"]}, out)``) gives a file this loader (and
``torch.load(weights_only=True)``) reads. ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` in the environment makes torch
reject any custom unpickler; unset it for such files.
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import pickle
from typing import Any, Dict, List, Set, Tuple

import torch

log = logging.getLogger("stok.hubert")


class PickledObject:
    """Base of the inert stubs: records how the pickle built it; runs nothing."""

    _stub_module = ""
    _stub_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_kwargs"] = kwargs
        obj.__dict__["_state"] = None
        obj.__dict__["_items"] = {}
        obj.__dict__["_list"] = []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __setitem__(self, key, value):
        self._items[key] = value

    def append(self, value):
        self._list.append(value)

    def extend(self, values):
        self._list.extend(values)

    def __getattr__(self, name):  # only reached for names not in __dict__
        state = self.__dict__.get("_state")
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(f"{self._stub_module}.{self._stub_name} stub has no attribute {name!r}")

    def __repr__(self):
        return f"<unpickled {self._stub_module}.{self._stub_name} (not imported)>"


def _torch_globals() -> Dict[Tuple[str, str], Any]:
    allowed: Dict[Tuple[str, str], Any] = {}
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy", "_rebuild_meta_tensor_no_storage"):
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            allowed[("torch._utils", name)] = fn
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch", "device")] = torch.device
    allowed[("torch.nn.parameter", "Parameter")] = torch.nn.Parameter
    allowed[("torch", "Tensor")] = torch.Tensor
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("argparse", "Namespace")] = argparse.Namespace
    for t in (set, frozenset, dict, list, tuple, int, float, complex, bool, str, bytes, bytearray, slice):
        allowed[("builtins", t.__name__)] = t
        allowed[("__builtin__", t.__name__)] = t
    import codecs

    allowed[("_codecs", "encode")] = codecs.encode
    try:
        import numpy as np

        allowed[("numpy", "ndarray")] = np.ndarray
        allowed[("numpy", "dtype")] = np.dtype
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(mod, "_reconstruct")] = _np_reconstruct()
            allowed[(mod, "scalar")] = _np_scalar()
    except ImportError:  # pragma: no cover
        pass
    return allowed


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _np_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


_ALLOWED: Dict[Tuple[str, str], Any] = {}


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch's subclass wrapper, restricted to plain tensors and parameters and allowlisted rebuilders."""
    if func not in _ALLOWED.values() or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise pickle.UnpicklingError(f"refused tensor subclass rebuild {getattr(new_type, '__name__', new_type)}")
    ret = func(*args)
    if new_type is torch.nn.Parameter and not isinstance(ret, torch.nn.Parameter):
        ret = torch.nn.Parameter(ret, requires_grad=False)
    return ret


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` allows only the allowlist and stubs everything else."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stubbed: Set[str] = set()
        self._stubs: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        if not _ALLOWED:
            _ALLOWED.update(_torch_globals())
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if key == ("torch._tensor", "_rebuild_from_type_v2"):
            return _rebuild_from_type_v2
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        stub = self._stubs.get(key)
        if stub is None:
            stub = type(name if name.isidentifier() else "Stub", (PickledObject,),
                        {"_stub_module": module, "_stub_name": name, "__module__": "stok.unpickled." + module})
            self._stubs[key] = stub
            self.stubbed.add(f"{module}.{name}")
            _LAST_STUBBED.add(f"{module}.{name}")
        return stub


_LAST_STUBBED: Set[str] = set()


def load(file, **kwargs):
    """``pickle.load`` with :class:`Unpickler` (torch calls this for the legacy format's headers)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs):
    return Unpickler(io.BytesIO(data), **kwargs).load()


#: modules whose classes a real checkpoint pickles (fairseq's Dictionary, hydra/OmegaConf configs, enums, paths,
#: numpy dtypes): stubbing them is routine. Any other global (``os.system``, ``builtins.eval``, ``subprocess``...)
#: has no place in model weights: it is what a malicious pickle would call.
EXPECTED_MODULES = ("fairseq", "omegaconf", "hydra", "numpy", "torch", "enum", "pathlib", "datetime", "collections",
                    "typing", "argparse")


def unexpected_globals(stubbed: Set[str]) -> List[str]:
    """The stubbed globals that are not routine parts of a checkpoint (see :data:`EXPECTED_MODULES`)."""
    return sorted(n for n in stubbed if n.split(".", 1)[0] not in EXPECTED_MODULES)


def load_checkpoint(path: str) -> Tuple[Any, Set[str]]:
    """``torch.load`` of ``path`` on CPU through the restricted unpickler; returns (object, stubbed global names).

    A file that cannot be decoded is a one-line error naming it (:mod:`stok.models.hubert.file_checks`); a
    pickle naming code (``os.system`` ...) loads, with that code not run and a warning naming the file."""
    import sys

    from stok.models.hubert.file_checks import read_torch_file

    _LAST_STUBBED.clear()
    obj = read_torch_file(path, lambda p: torch.load(p, map_location="cpu", pickle_module=sys.modules[__name__],
                                                     weights_only=False))
    stubbed = set(_LAST_STUBBED)
    suspicious = unexpected_globals(stubbed)
    if suspicious:
        log.warning("%s: the pickle names code that model weights never need (%s); it was NOT run (kept as inert "
                    "records), and only the tensors are used. Check where this file came from.", path,
                    ", ".join(suspicious))
    routine = sorted(stubbed - set(suspicious))
    if routine:
        log.info("%s: kept as inert records (not imported): %s", path, ", ".join(routine))
    return obj, stubbed


def plain(obj: Any, _depth: int = 0) -> Any:
    """Config objects as plain Python data: Namespaces and OmegaConf stubs to dicts/lists, recursively."""
    if _depth > 50:
        return None
    d = _depth + 1
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v, d) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, d) for v in obj) if isinstance(obj, list) else tuple(plain(v, d) for v in obj)
    if isinstance(obj, PickledObject):
        state = obj.__dict__.get("_state")
        if isinstance(state, dict):
            if "_content" in state:  # OmegaConf DictConfig / ListConfig
                return plain(state["_content"], d)
            if "_val" in state:  # OmegaConf value node
                return plain(state["_val"], d)
            return {k: plain(v, d) for k, v in state.items() if not str(k).startswith("_")}
        if obj._items:
            return {k: plain(v, d) for k, v in obj._items.items()}
        if obj._list:
            return [plain(v, d) for v in obj._list]
        if len(obj._args) == 1 and isinstance(obj._args[0], (str, int, float, bool)):
            return obj._args[0]  # e.g. an Enum member rebuilt from its value
        return repr(obj)
    return obj
