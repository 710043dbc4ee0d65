"""Which ONNX nodes must stay FP32, and the mixed-precision rewrite that keeps them there.

The ONNX node names of the TorchScript exporter carry the module path
(``/model/backbone/stages.2/op_list.1/context_module/main/MatMul``). The exporter records the scopes of every
linear-attention module in the metadata (``evit.fp32_scopes``); the TensorRT builder pins the
MatMul/Div/Add/Pad/Relu nodes under those scopes to FP32, and ``--mixed-precision-fp16`` rewrites the graph
so that everything else under ``/model/`` runs in FP16 while those nodes see FP32 inputs.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from evit_ros import contract
from evit_ros.errors import ExportError

if TYPE_CHECKING:
    import onnx
    import torch

# Node types pinned to FP32 inside an attention scope (the linear-attention core and what feeds it).
# Pad or Concat appends the row of ones to v (the normalizer); Relu makes q, k non-negative.
FP32_OP_TYPES: tuple[str, ...] = ('MatMul', 'Div', 'Add', 'Pad', 'Concat', 'Relu', 'Einsum', 'Sum', 'ReduceSum')
# Class names of modules whose ONNX scope holds a linear-attention core.
ATTENTION_CLASS_NAMES: tuple[str, ...] = ('LiteMLA',)
MODEL_SCOPE = '/model/'
CAST_SCOPE = '/evit_cast_'   # Casts inserted by the mixed-precision rewrite


# ---------------------------------------------------------------------------------------------
# attention scopes

def _scope_qualname(scope: str) -> str:
    """TorchScript ONNX scope ``/model/stages.1/stages.1.0`` -> module qualname ``model.stages.1.0``.

    Each scope component names a called module relative to the previous one; children of containers
    (``nn.Sequential``) repeat the parent's component as a prefix, which is stripped.
    """
    parts: list[str] = []
    prev = ''
    for comp in scope.strip('/').split('/'):
        if not comp:
            continue
        rel = comp[len(prev) + 1:] if prev and comp.startswith(prev + '.') else comp
        parts.append(rel)
        prev = comp
    return '.'.join(parts)


def attention_qualnames(root: torch.nn.Module,
                        is_attention: Callable[[torch.nn.Module], bool] | None = None) -> list[str]:
    """Qualified names (relative to ``root``) of the modules holding a linear-attention core.

    Modules marked ``fp32_attention_core = True`` (the parameter-free core inside LiteMLA) are the
    narrowest choice and win; without markers, whole ``ATTENTION_CLASS_NAMES`` modules are used.
    """
    if is_attention is not None:
        return [name for name, m in root.named_modules() if name and is_attention(m)]
    marked = [name for name, m in root.named_modules() if name and bool(getattr(m, 'fp32_attention_core', False))]
    if marked:
        return marked
    return [name for name, m in root.named_modules() if name and type(m).__name__ in ATTENTION_CLASS_NAMES]


def attention_scopes(graph: onnx.GraphProto, qualnames: Iterable[str]) -> list[str]:
    """ONNX name-scope prefixes (``/.../``) of the given modules, sorted, as found in ``graph``."""
    wanted = set(qualnames)
    scopes = set()
    for node in graph.node:
        if '/' not in node.name.strip('/'):
            continue
        scope = node.name.rsplit('/', 1)[0]
        if _scope_qualname(scope) in wanted:
            scopes.add(scope + '/')
    return sorted(scopes)


def integer_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors that shape inference types as integers or bool (shape arithmetic of dynamic dims, ids)."""
    import onnx
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                   onnx.TensorProto.DOUBLE, onnx.TensorProto.UNDEFINED}
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    return {v.name for v in values if v.type.tensor_type.elem_type not in float_types}


def fp32_nodes(graph: onnx.GraphProto, scopes: Iterable[str], integer: set[str] | None = None) -> list[str]:
    """Names of the nodes to keep in FP32: the attention ops (``FP32_OP_TYPES``) under ``scopes``, graph order.

    ``integer`` (from :func:`integer_tensors`) excludes nodes computing integer shapes (a dynamic batch
    adds Concat/Div on shape values inside the attention scope); precision constraints are for float math.
    """
    prefixes = tuple(scopes)
    if not prefixes:
        return []
    skip = integer or set()
    return [n.name for n in graph.node if n.op_type in FP32_OP_TYPES and n.name.startswith(prefixes)
            and not (n.output and n.output[0] in skip)]


def fp32_scope_nodes(graph: onnx.GraphProto, scopes: Iterable[str], integer: set[str] | None = None) -> list[str]:
    """Every float node of the attention ``scopes`` except convolutions: what the TensorRT build keeps FP32.

    The whole scope, not only its MatMul/Div/Add: its Slices, Reshapes/Transposes and the eps constant
    (1e-15, zero in FP16) must stay FP32 too. The same rule as :func:`to_mixed_precision`, so the
    weakly typed (pinned) and strongly typed (Cast) builds keep the same layers in FP32.
    """
    prefixes = tuple(scopes)
    if not prefixes:
        return []
    skip = integer or set()
    excluded = ('Conv', 'Cast', 'QuantizeLinear', 'DequantizeLinear')   # Q/DQ: INT8 by definition
    return [n.name for n in graph.node if n.name.startswith(prefixes) and n.op_type not in excluded
            and not (n.output and all(o in skip for o in n.output))]


def scopes_from_metadata(meta: dict[str, str]) -> list[str]:
    """The FP32 scopes recorded by the exporter (empty if the file has none)."""
    raw = meta.get(contract.META_FP32_SCOPES, '')
    if not raw:
        return []
    try:
        scopes = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ExportError(f'metadata {contract.META_FP32_SCOPES}={raw[:80]!r} is not JSON; re-export the ONNX') from exc
    return [str(s) for s in scopes]


# ---------------------------------------------------------------------------------------------
# mixed precision (fp16 network, fp32 attention core, fp32 pre/post-processing)

_FLOAT = 1   # onnx.TensorProto.FLOAT
_FLOAT16 = 10


def to_mixed_precision(model: onnx.ModelProto, scopes: Iterable[str]) -> int:
    """Rewrite the network part (``/model/`` scope) of an fp32 graph to fp16 with explicit Casts.

    The attention nodes under ``scopes`` (except their convolutions), the preprocessing and the head
    stay fp32. This is what a strongly typed TensorRT network (TensorRT 11 / RTX) needs in place of the
    FP16 builder flag. Returns the number of Cast nodes inserted.
    """
    import onnx
    from onnx import helper, numpy_helper

    prefixes = tuple(scopes)
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    inits = {init.name: init for init in model.graph.initializer}
    for name, init in inits.items():
        types[name] = init.data_type

    def in_fp16(node: onnx.NodeProto) -> bool:
        if not node.name.startswith(MODEL_SCOPE) or node.op_type in ('Constant', 'Cast'):
            return False
        return not (node.name.startswith(prefixes) and node.op_type != 'Conv') if prefixes else True

    nodes = list(model.graph.node)
    half = {n.name for n in nodes if in_fp16(n)}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in nodes:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))

    def is_data_input(node: onnx.NodeProto, index: int) -> bool:
        return not (node.op_type == 'Resize' and index in (1, 2))

    produced_half: set[str] = set()
    for n in nodes:
        if n.name in half:
            for t in n.output:
                if types.get(t) == _FLOAT:
                    produced_half.add(t)
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    converted_inits: set[str] = set()

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            out = f'{tensor}__to_{"fp16" if to == _FLOAT16 else "fp32"}'
            tag = 'fp16' if to == _FLOAT16 else 'fp32'
            new_nodes.append(helper.make_node('Cast', [tensor], [out], to=to, name=f'{CAST_SCOPE}{tag}/{tensor}'))
            casts[key] = out
        return casts[key]

    for n in nodes:
        for i, t in enumerate(n.input):
            if not t:
                continue
            if n.name in half and is_data_input(n, i) and types.get(t) == _FLOAT and t not in produced_half:
                users = consumers.get(t, [])
                if t in inits and all(u.name in half and is_data_input(u, j) for u, j in users):
                    if t not in converted_inits:
                        arr = numpy_helper.to_array(inits[t]).astype(np.float16)
                        inits[t].CopyFrom(numpy_helper.from_array(arr, t))
                        converted_inits.add(t)
                else:
                    n.input[i] = cast(t, _FLOAT16)
            elif n.name not in half and t in produced_half:
                n.input[i] = cast(t, _FLOAT)
        new_nodes.append(n)
    graph_outputs = {o.name for o in model.graph.output}
    for out in graph_outputs & produced_half:
        raise ExportError(f'graph output {out!r} would be fp16; the head must stay fp32 (internal error)')
    del model.graph.node[:]
    model.graph.node.extend(_toposort(new_nodes, model.graph))
    del model.graph.value_info[:]
    return len(casts)


def _toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {''}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(t in available for t in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError(f'mixed-precision rewrite left {len(rest)} unreachable nodes (internal error)')
        pending = rest
    return ordered
