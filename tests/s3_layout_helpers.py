"""Rewrite a graph from ``export_official`` into the layout earlier stok versions wrote, to test that
the importer still reads such files: rotary cos/sin tables as ``onnx::Slice_*`` initializers read by
top-level ``/Slice`` nodes (v2, v3), and the FSQ projection bias of v3 as a ``Constant`` node."""

from __future__ import annotations

from typing import List

import onnx
from onnx import helper, numpy_helper


def rotary_constants(proto: onnx.ModelProto) -> List[onnx.NodeProto]:
    """The ``Constant`` nodes holding the rotary tables: the ones read by a top-level ``/Slice``."""
    readers = {i for n in proto.graph.node if n.op_type == "Slice" and n.name.count("/") == 1 for i in n.input}
    return [n for n in proto.graph.node if n.op_type == "Constant" and n.output[0] in readers
            and len(numpy_helper.to_array(n.attribute[0].t).shape) == 2]


def _rename_input(proto: onnx.ModelProto, old: str, new: str) -> None:
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def legacy_rotary_initializers(proto: onnx.ModelProto, first_id: int = 9000) -> List[str]:
    """Move the rotary tables from ``Constant`` nodes into initializers; returns their new names."""
    names = []
    for k, node in enumerate(rotary_constants(proto)):
        name = f"onnx::Slice_{first_id + k}"
        proto.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), name))
        _rename_input(proto, node.output[0], name)
        proto.graph.node.remove(node)
        names.append(name)
    return names


def legacy_projection_bias_constant(proto: onnx.ModelProto) -> str:
    """Move the initializer ``quantizer.project_in.bias`` into a ``Constant`` node in the projection's
    scope, placed before its reader; returns the node's output name."""
    init = next(i for i in proto.graph.initializer if i.name == "quantizer.project_in.bias")
    out = "/quantizer/project_in/Constant_output_0"
    const = helper.make_node("Constant", [], [out], name="/quantizer/project_in/Constant", value=init)
    const.attribute[0].t.name = ""
    proto.graph.initializer.remove(init)
    _rename_input(proto, "quantizer.project_in.bias", out)
    first_reader = next(i for i, n in enumerate(proto.graph.node) if out in n.input)
    proto.graph.node.insert(first_reader, const)
    return out
