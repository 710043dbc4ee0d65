"""Which precision path a TensorRT release takes, and whether the built engine kept it.

Chosen by TensorRT feature, never by version string (:func:`plan_precision`; the policy is versioned as
``engine_cache.PRECISION_POLICY``): strongly typed networks where the release has them, the FP16 flag with
the attention scope pinned FP32 where it does not (TensorRT 8.6), explicit INT8 from Q/DQ graphs, implicit
calibration only on 8.6. A Q/DQ graph is checked for the form TensorRT builds before parsing, and a built
engine's layer information is read back to confirm the pinned layers run FP32.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evit_ros.errors import EngineError

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)


def trt_version(trt_mod: Any) -> str:
    return str(getattr(trt_mod, '__version__', 'unknown'))


def is_strongly_typed_only(trt_mod: Any) -> bool:
    """True for TensorRT flavours without the FP16 builder flag (precision comes from the graph)."""
    return not hasattr(trt_mod.BuilderFlag, 'FP16')


def strong_typing(trt_mod: Any) -> str:
    """How this TensorRT types a network: ``'always'``, ``'flag'`` or ``'never'``.

    ``'always'``: no weakly typed path is left (no FP16 builder flag: TensorRT >= 11, TensorRT-RTX); every
    network is strongly typed and ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, if still there, is
    ignored (11.0 keeps it "for API compatibility", value 0). ``'flag'``: ``STRONGLY_TYPED`` opts in
    (TensorRT 9/10). ``'never'``: TensorRT 8.6.
    """
    if is_strongly_typed_only(trt_mod):
        return 'always'
    return 'flag' if hasattr(trt_mod.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED') else 'never'


def network_creation_flags(trt_mod: Any, strongly_typed: bool) -> int:
    """The ``create_network`` flags: STRONGLY_TYPED where it opts in, EXPLICIT_BATCH on 8.6, nothing on 11."""
    mode = strong_typing(trt_mod)
    creation = trt_mod.NetworkDefinitionCreationFlag
    if mode == 'always':
        return 0
    if strongly_typed:
        if mode == 'never':
            raise EngineError(f'TensorRT {trt_version(trt_mod)} cannot build strongly typed networks; use '
                              '--precision fp16 with an fp32 ONNX instead')
        return 1 << int(creation.STRONGLY_TYPED)
    if mode == 'never' and hasattr(creation, 'EXPLICIT_BATCH'):
        return 1 << int(creation.EXPLICIT_BATCH)   # TensorRT 8.x needs it; 10.x deprecates it
    return 0


def is_qdq(model: Any) -> bool:
    """True for an explicitly quantized graph (QuantizeLinear/DequantizeLinear nodes)."""
    return any(n.op_type in ('QuantizeLinear', 'DequantizeLinear') for n in model.graph.node)


def check_qdq_for_tensorrt(model: Any) -> None:
    """EngineError unless every Q/DQ pair is what TensorRT builds: signed INT8, an explicit zero point 0, float biases.

    ONNX Runtime's defaults (uint8 activations with a zero point, INT32-quantized Conv biases) give a
    graph the CPU runs but TensorRT's parser rejects or mis-handles.
    """
    from onnx import TensorProto, numpy_helper
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == 'Constant'}
    int32_dq, asymmetric, unsigned, implicit = 0, 0, 0, 0
    for n in model.graph.node:
        if n.op_type not in ('QuantizeLinear', 'DequantizeLinear'):
            continue
        if n.op_type == 'DequantizeLinear' and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT32:
            int32_dq += 1
            continue
        if len(n.input) < 3 or not n.input[2]:
            # ONNX types a QuantizeLinear without a zero point as uint8 ([0, 255]) unless its output_dtype
            # (opset 21) says INT8: ONNX Runtime runs it so, TensorRT as INT8; a DequantizeLinear takes its
            # input's type
            out_dtype = next((a.i for a in n.attribute if a.name == 'output_dtype'), 0)
            implicit += n.op_type == 'QuantizeLinear' and out_dtype != TensorProto.INT8
            continue
        zp = inits.get(n.input[2])
        if zp is None and n.input[2] in consts:
            zp = next((a.t for a in consts[n.input[2]].attribute if a.name == 'value'), None)
        if zp is None:
            continue
        if zp.data_type != TensorProto.INT8:
            unsigned += 1
        elif numpy_helper.to_array(zp).any():
            asymmetric += 1
    problems = []
    if int32_dq:
        problems.append(f'{int32_dq} INT32-quantized biases (quantize without bias quantization)')
    if unsigned:
        problems.append(f'{unsigned} Q/DQ nodes with a non-INT8 zero point (use signed INT8, QuantType.QInt8)')
    if asymmetric:
        problems.append(f'{asymmetric} Q/DQ nodes with a non-zero zero point (use symmetric quantization)')
    if implicit:
        problems.append(f'{implicit} QuantizeLinear nodes without a zero point (ONNX makes them uint8, so ONNX '
                        'Runtime and TensorRT would compute different graphs; give an explicit INT8 zero point 0)')
    if problems:
        raise EngineError('this Q/DQ ONNX is not buildable by TensorRT: ' + '; '.join(problems) + '. Re-quantize '
                          'with `evit-ros quantize` (symmetric signed INT8 activations, per-channel symmetric '
                          'weights, float biases)')


@dataclass(frozen=True)
class PrecisionPlan:
    """How one build realizes the requested precision (decided before anything is built)."""

    strongly_typed: bool
    flags: tuple[str, ...]          # builder flags to set (FP16, INT8, OBEY_PRECISION_CONSTRAINTS)
    pin_layers: bool                # weakly typed: constrain the attention scope to FP32
    rewrite_mixed: bool             # fp32 ONNX -> mixed-precision ONNX in memory before parsing
    implicit_int8: bool             # TensorRT 8.6 calibration
    how: str


def plan_precision(trt_mod: Any, precision: str, *, mixed: bool, qdq: bool) -> PrecisionPlan:
    """The precision policy (``engine_cache.PRECISION_POLICY``), by TensorRT feature, never version string.

    * fp16, TensorRT >= 10 / RTX (:func:`strong_typing` not 'never'): strongly typed from the mixed-precision graph
      (the exporter's, or the fp32 ONNX rewritten in memory): the whole attention scope FP32 by its types.
    * fp16, TensorRT 8.6: FP16 flag, the whole attention scope pinned with OBEY_PRECISION_CONSTRAINTS.
    * int8 from a Q/DQ ONNX: explicit quantization; strongly typed where possible, else (8.6) INT8+FP16
      flags with the attention scope pinned FP32 and no calibrator.
    * int8 from a float ONNX: implicit calibration, only where TensorRT still has it and cannot build
      strongly typed (8.6); TensorRT 10 deprecates it (10.1) and 11/RTX removed it.
    * fp32: strongly typed wherever possible (TensorRT >= 10), weakly typed only on 8.6.
    """
    can_strong = strong_typing(trt_mod) != 'never'
    version = trt_version(trt_mod)
    quantize_fix = ('quantize the fp32 ONNX explicitly: `evit-ros quantize --onnx MODEL.onnx --calib-dir FRAMES '
                    '-o MODEL_int8.onnx`, then `evit-ros build-engine --onnx MODEL_int8.onnx --precision int8`')
    if qdq and precision != 'int8':
        raise EngineError(f'the ONNX is explicitly quantized (Q/DQ INT8); build it with --precision int8, or build '
                          f'{precision} from the float ONNX it was quantized from')
    if precision == 'int8':
        if mixed:
            raise EngineError('the ONNX is a mixed-precision (strongly typed fp16) export; INT8 cannot be added to '
                              'a strongly typed network (TensorRT forbids the INT8 flag there). Export fp32 '
                              '(without --mixed-precision-fp16) and ' + quantize_fix)
        if qdq:
            if can_strong:
                return PrecisionPlan(True, (), False, False, False, 'explicit INT8 (Q/DQ), strongly typed')
            return PrecisionPlan(False, ('FP16', 'INT8', 'OBEY_PRECISION_CONSTRAINTS'), True, False, False,
                                 'explicit INT8 (Q/DQ) with FP16, attention scope pinned FP32')
        if can_strong or not hasattr(trt_mod, 'IInt8EntropyCalibrator2'):
            raise EngineError(f'TensorRT {version} has no (or deprecated) implicit INT8 calibration; '
                              + quantize_fix)
        return PrecisionPlan(False, ('FP16', 'INT8', 'OBEY_PRECISION_CONSTRAINTS'), True, False, True,
                             'implicit INT8 calibration (TensorRT 8.6), attention scope pinned FP32')
    if precision == 'fp16':
        if can_strong:
            return PrecisionPlan(True, (), False, not mixed, False,
                                 'strongly typed mixed precision: attention scope FP32 by its types')
        return PrecisionPlan(False, ('FP16', 'OBEY_PRECISION_CONSTRAINTS'), True, False, False,
                             'FP16 flag, attention scope pinned FP32 (OBEY_PRECISION_CONSTRAINTS)')
    if mixed:
        log.warning('a mixed-precision (fp16) export built at fp32 still runs its fp16 parts in fp16')
    # strongly typed wherever the release can (weak typing is deprecated since 10.12): an fp32 graph's types
    # are all FP32, a mixed export keeps its own
    return PrecisionPlan(can_strong, (), False, False, False,
                         'whole network FP32' + (', strongly typed' if can_strong else ''))


_LOW_PRECISION = re.compile(r'\b(fp16|half|int8|fp8|bf16|int4)\b', re.IGNORECASE)
_FP32 = re.compile(r'\b(fp32|float)\b', re.IGNORECASE)
_PATHLIKE = re.compile(r'/[\w./-]+')


def _name_pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name) + r'(?![\w])')


def check_layer_precisions(info: dict[str, Any], pinned: list[str]) -> dict[str, Any]:
    """Judge an engine's layer information (IEngineInspector JSON, DETAILED) against the pinned layers.

    A violation is an engine layer made only of pinned network layers whose outputs are not FP32.
    Pinned layers fused with other layers (e.g. a following Cast) or hidden inside a Myelin
    ``ForeignNode`` cannot be judged from the engine and are counted as ``unobserved``.
    """
    patterns = {n: _name_pattern(n) for n in pinned}
    seen: set[str] = set()
    fp32: set[str] = set()
    violations: list[str] = []
    unknown = 0
    for layer in info.get('Layers', []):
        if isinstance(layer, str):        # LAYER_NAMES_ONLY verbosity: names without types
            layer = {'Name': layer}
        name = str(layer.get('Name', ''))
        text = name + ' ' + str(layer.get('Metadata', ''))
        hits = [n for n, pat in patterns.items() if pat.search(text)]
        if not hits:
            continue
        if 'ForeignNode' in name or 'Myelin' in name:
            continue
        rest = name
        for n in hits:
            rest = patterns[n].sub('', rest)
        if _PATHLIKE.search(rest):
            continue                      # fused with a non-pinned layer: not judged
        formats = [str(t.get('Format/Datatype', '')) for t in layer.get('Outputs', []) if isinstance(t, dict)]
        seen.update(hits)
        if any(_LOW_PRECISION.search(f) for f in formats):
            violations.append(f'{name} ({", ".join(formats)})')
        elif formats and all(_FP32.search(f) for f in formats):
            fp32.update(hits)
        else:
            unknown += 1
    return {'inspected': True, 'pinned': len(pinned), 'checked_fp32': len(fp32), 'violations': violations,
            'unobserved': len(set(pinned) - seen), 'unknown_format_layers': unknown}


def inspect_engine(trt_mod: Any, engine: bytes, pinned: list[str], logger: trt.ILogger,
                   input_name: str, opt_shape: tuple[int, ...] | None) -> dict[str, Any]:
    """Deserialize the new engine and check its pinned layers run FP32 (needs a GPU to deserialize)."""
    if not pinned:
        return {'inspected': False, 'reason': 'no pinned layers'}
    runtime = trt_mod.Runtime(logger)
    cuda_engine = runtime.deserialize_cuda_engine(engine) if runtime is not None else None
    if cuda_engine is None:
        return {'inspected': False, 'reason': 'the engine cannot be deserialized on this machine (no CUDA GPU); '
                'the layer precisions are checked when it is built on the device'}
    inspector = cuda_engine.create_engine_inspector()
    if inspector is None:
        return {'inspected': False, 'reason': 'this TensorRT has no engine inspector'}
    context = None
    if opt_shape is not None:   # dynamic shapes: formats are "N/A" until a context fixes the shape
        context = cuda_engine.create_execution_context()
        if context is not None and context.set_input_shape(input_name, opt_shape):
            inspector.execution_context = context
    raw = inspector.get_engine_information(trt_mod.LayerInformationFormat.JSON)
    try:
        info = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        return {'inspected': False, 'reason': f'engine information is not JSON ({exc})'}
    return check_layer_precisions(info, pinned)
