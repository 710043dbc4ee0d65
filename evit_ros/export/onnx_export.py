"""Verified, deterministic, self-contained ONNX export of :class:`~evit_ros.export.graph.DeployGraph`.

An export is only written as done after it passed ``onnx.checker`` and an ONNX Runtime vs PyTorch
comparison on the same deterministic frames (logits within 1e-4 relative, labels agreeing on at least
99.9% of pixels). The file is written to a temporary name, verified, then atomically renamed, so a
failed export never leaves a usable-looking file behind.

The exporter records the scopes of every linear-attention module in the metadata (``evit.fp32_scopes``,
see :mod:`evit_ros.export.fp32_scopes`); the TensorRT builder pins those nodes to FP32.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_ros import contract
from evit_ros.errors import ExportError, ModelError
from evit_ros.export.fp32_scopes import (
    CAST_SCOPE,
    MODEL_SCOPE,
    attention_qualnames,
    attention_scopes,
    fp32_nodes,
    integer_tensors,
    to_mixed_precision,
)
from evit_ros.fileio import file_sha256, replace_atomically

if TYPE_CHECKING:
    import onnx
    import torch

log = logging.getLogger(__name__)

LOGITS_RTOL = 1e-4
LABELS_MIN_AGREEMENT = 0.999
# Mixed-precision graphs run the convolutions in fp16 and are compared with the fp32 reference.
FP16_LOGITS_RTOL = 2e-2
FP16_LABELS_MIN_AGREEMENT = 0.99
@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how well ONNX Runtime matched PyTorch."""

    path: Path
    seconds: float
    export_seconds: float
    verify_seconds: float
    max_rel_logits_error: float
    label_agreement: float
    confidence_max_abs_diff: int | None
    metadata: dict[str, str] = field(default_factory=dict)
    fp32_nodes: tuple[str, ...] = ()

    def summary(self) -> str:
        conf = '' if self.confidence_max_abs_diff is None else f', confidence max |diff| {self.confidence_max_abs_diff}'
        return (f'{self.path}: export {self.export_seconds:.1f} s, verify {self.verify_seconds:.1f} s; '
                f'ORT vs PyTorch: logits max rel error {self.max_rel_logits_error:.2e}, '
                f'labels agree {100 * self.label_agreement:.4f}%{conf}; '
                f'{len(self.fp32_nodes)} attention nodes marked FP32')


def load_onnx(path: str | Path) -> Any:
    """The ONNX model of a file (external weight files are not loaded); ExportError naming the fix otherwise."""
    import onnx
    p = Path(path)
    if not p.is_file():
        raise ExportError(f'ONNX file {p} does not exist; create it with `evit-ros export ... -o {p}`')
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / various protobuf errors
        raise ExportError(f'{p} is not a readable ONNX file ({exc}); re-export it with `evit-ros export`') from exc


def metadata_of(model: Any) -> dict[str, str]:
    """``metadata_props`` of a loaded ONNX model as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file (external weight files are not loaded)."""
    return metadata_of(load_onnx(path))


# ---------------------------------------------------------------------------------------------
# export

def _verification_input(input_format: str, batch: int, hw: tuple[int, int]) -> np.ndarray:
    """Deterministic frames: smooth gradients plus seeded noise (not all-noise, so argmax has structure)."""
    rng = np.random.default_rng(20240517)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for b in range(batch):
        base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), ((xx + yy + 7 * b) % 97) / 96.0], axis=-1) * 200
        noise = rng.normal(0.0, 25.0, size=(h, w, 3))
        frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    x = np.stack(frames)
    if input_format == 'uint8-nhwc':
        return x
    mean = np.array(contract.IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(contract.IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return ((x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def _logits_tensor(graph: onnx.GraphProto) -> str:
    """The tensor that crosses from the network (``/model/`` scope) into the head."""
    def in_network(n: onnx.NodeProto) -> bool:
        return n.name.startswith((MODEL_SCOPE, CAST_SCOPE))
    inside = {t for n in graph.node if in_network(n) and n.op_type != 'Constant' for t in n.output}
    crossing: list[str] = []
    for n in graph.node:
        if not in_network(n):
            crossing.extend(t for t in n.input if t in inside and t not in crossing)
    crossing.extend(o.name for o in graph.output if o.name in inside and o.name not in crossing)
    if len(crossing) != 1:
        raise ExportError(f'cannot identify the logits tensor: {len(crossing)} tensors leave the network scope '
                          f'({crossing[:5]}); was the model wrapped in DeployGraph?')
    return crossing[0]


def _verify(model_bytes: bytes, deploy: torch.nn.Module, head: str, x: np.ndarray,
            rtol: float, min_agreement: float) -> tuple[float, float, int | None]:
    import onnx
    import onnxruntime as ort
    import torch

    model = onnx.load_from_string(model_bytes)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f'onnx.checker rejected the export: {exc}') from exc
    outputs = list(contract.HEAD_OUTPUTS[head])
    logits_name = contract.LOGITS_NAME
    if head != 'logits':
        logits_name = _logits_tensor(model.graph)
        if model.graph.node and not any(o.name == logits_name for o in model.graph.output):
            model.graph.output.append(onnx.helper.make_tensor_value_info(logits_name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=['CPUExecutionProvider'])
        got = sess.run(outputs + ([logits_name] if head != 'logits' else []), {contract.INPUT_NAME: x})
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, NotImplemented)
        raise ExportError(f'ONNX Runtime cannot run the export: {exc}') from exc
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        ref_logits = deploy.logits(xt)
        ref = deploy.apply_head(ref_logits)
    ref_list = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    ort_logits = got[-1] if head != 'logits' else got[0]
    ref_l = ref_logits.numpy()
    if ort_logits.shape != ref_l.shape:
        raise ExportError(f'ORT logits shape {ort_logits.shape} != PyTorch {ref_l.shape}')
    if not np.isfinite(ort_logits).all():
        raise ExportError('ONNX Runtime produced non-finite logits; the export is broken')
    rel = float(np.abs(ort_logits.astype(np.float64) - ref_l).max() / max(float(np.abs(ref_l).max()), 1e-12))
    agreement = 1.0
    conf_diff: int | None = None
    for name, r, g in zip(outputs, ref_list, got[:len(outputs)], strict=True):
        rn = r.numpy()
        if g.shape != rn.shape or g.dtype != rn.dtype:
            raise ExportError(f'output {name}: ORT gives {g.dtype}{list(g.shape)}, PyTorch {rn.dtype}{list(rn.shape)}')
        if name == contract.LABELS_NAME:
            agreement = float((g == rn).mean())
        elif name == contract.CONFIDENCE_NAME:
            conf_diff = int(np.abs(g.astype(np.int32) - rn.astype(np.int32)).max())
    if head == 'logits':
        agreement = float((ort_logits.argmax(1) == ref_l.argmax(1)).mean())
    if rel > rtol:
        raise ExportError(f'ONNX Runtime logits differ from PyTorch by {rel:.3e} relative (limit {rtol:.0e}); '
                          'the export is not faithful. Try another --opset or report the model/torch versions')
    if agreement < min_agreement:
        raise ExportError(f'ONNX Runtime labels agree with PyTorch on only {100 * agreement:.3f}% of pixels '
                          f'(need {100 * min_agreement:.1f}%); the export is not faithful')
    if conf_diff is not None and conf_diff > 2:
        raise ExportError(f'ONNX Runtime confidence differs from PyTorch by {conf_diff}/255 (limit 2)')
    return rel, agreement, conf_diff


def _declare_output_shapes(model: onnx.ModelProto, head: str, logits_chw: tuple[int, ...],
                           input_hw: tuple[int, int]) -> None:
    """Write the static non-batch output dims into the graph outputs.

    With a dynamic batch the TorchScript exporter leaves the upsampled outputs' H and W symbolic
    (``Castlabels_dim_1``); runtimes that size buffers from the declared shapes need the numbers.
    """
    spatial_of_head = {'logits': logits_chw, 'labels-lowres': logits_chw[1:]}.get(head, input_hw)
    for out in model.graph.output:
        spatial = logits_chw if out.name == contract.LOGITS_NAME else spatial_of_head
        dims = out.type.tensor_type.shape.dim
        if len(dims) != 1 + len(spatial):
            raise ExportError(f'output {out.name} has rank {len(dims)}, expected {1 + len(spatial)} (internal error)')
        for d, v in zip(list(dims)[1:], spatial, strict=True):
            d.ClearField('dim_param')
            d.dim_value = int(v)


def _class_metadata(model_name: str, num_classes: int) -> tuple[list[str], list[list[int]], str]:
    from evit_ros.datasets import dataset_for_model
    try:
        ds = dataset_for_model(model_name)
    except ModelError:
        names = [f'class{i}' for i in range(num_classes)]
        colors = [[(37 * i) % 256, (97 * i) % 256, (173 * i) % 256] for i in range(num_classes)]
        return names, colors, ''
    if ds.num_classes != num_classes:
        raise ExportError(f'model {model_name!r} outputs {num_classes} classes but dataset {ds.name} has '
                          f'{ds.num_classes}; check the model name / checkpoint')
    return list(ds.class_names), [list(c) for c in ds.colors], ds.name


def _create_model(model_name: str, checkpoint: str | None) -> torch.nn.Module:
    try:
        from evit_ros.model import create_model
    except ImportError as exc:
        raise ExportError(f'cannot import the model zoo (evit_ros.model): {exc}') from exc
    return create_model(model_name, pretrained=False, checkpoint=checkpoint)


def export_onnx(model_name: str, output: str | Path, *, height: int, width: int, checkpoint: str | None = None,
                model: torch.nn.Module | None = None, input_size: tuple[int, int] | None = None, batch: int = 1,
                max_batch: int | None = None, head: str = contract.NODE_HEAD, input_format: str = 'uint8-nhwc',
                labels_dtype: str = 'uint8', opset: int = 17, verify: bool = True,
                mixed_precision_fp16: bool = False) -> ExportReport:
    """Export ``model_name`` (or ``model``) wrapped in :class:`DeployGraph` to a verified ONNX file.

    ``height``/``width`` are the network input size (multiples of 32); ``input_size`` the camera frame
    size the graph takes when it differs (resized in-graph). ``max_batch`` makes dim 0 dynamic (1..max).
    ``verify=False`` is for internal callers that verify themselves; the CLI always verifies.
    """
    import onnx
    import torch

    from evit_ros import __version__
    from evit_ros.export.graph import DeployGraph

    t0 = time.perf_counter()
    out_path = Path(output)
    if out_path.suffix != '.onnx':
        raise ExportError(f'output {out_path} must end in .onnx')
    for name, v in (('height', height), ('width', width)):
        if not isinstance(v, int) or v < 32 or v % 32:
            raise ExportError(f'{name}={v!r} must be a positive multiple of 32 (the network downsamples by 32)')
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise ExportError(f'max_batch={max_batch!r} must be an integer >= 1')
    if not isinstance(batch, int) or batch < 1:
        raise ExportError(f'batch={batch!r} must be an integer >= 1')
    if max_batch is not None and batch != 1:
        raise ExportError('give either batch (static) or max_batch (dynamic), not both')
    if not 13 <= opset <= 21:
        raise ExportError(f'opset={opset} is out of range; use 13..21 (17 for TensorRT 8.6 / JetPack 6)')
    if checkpoint and not Path(checkpoint).is_file():
        raise ExportError(f'checkpoint {checkpoint} does not exist; pass a downloaded .pt file')

    if model is None:
        model = _create_model(model_name, checkpoint)
    model = model.eval()
    model_hw = (height, width)
    deploy = DeployGraph(model, head=head, input_format=input_format, model_hw=model_hw, input_hw=input_size,
                         labels_dtype=labels_dtype).eval()
    in_h, in_w = deploy.input_hw
    export_batch = min(2, max_batch) if max_batch is not None else batch
    x = _verification_input(input_format, export_batch, (in_h, in_w))

    with torch.inference_mode():
        probe = deploy.logits(torch.from_numpy(x[:1]))
    num_classes = int(probe.shape[1])
    if labels_dtype == 'uint8' and num_classes > 256 and head != 'logits':
        raise ExportError(f'{num_classes} classes do not fit uint8 labels; export with labels_dtype=int32')

    outputs = list(contract.HEAD_OUTPUTS[head])
    dynamic_axes = None
    if max_batch is not None:
        dynamic_axes = {contract.INPUT_NAME: {0: 'batch'}, **{o: {0: 'batch'} for o in outputs}}
    buf = io.BytesIO()
    torch.manual_seed(0)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The graph branches on channel counts and sizes fixed at export (e.g. which upsampler applies);
            # the tracer warns that they become constants, which is exactly what the export wants. The
            # verification below runs the exported graph against PyTorch, so nothing is hidden by this.
            warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
            warnings.filterwarnings('ignore', message='You are using the legacy TorchScript',
                                    category=DeprecationWarning)
            warnings.filterwarnings('ignore', category=DeprecationWarning, module='torch')
            torch.onnx.export(deploy, (torch.from_numpy(x),), buf, dynamo=False, opset_version=opset,
                              input_names=[contract.INPUT_NAME], output_names=outputs, dynamic_axes=dynamic_axes,
                              do_constant_folding=True, export_params=True)
    except Exception as exc:  # the TorchScript exporter raises many error types
        raise ExportError(f'torch.onnx.export failed for {model_name} ({head}, opset {opset}): {exc}') from exc
    onnx_model = onnx.load_from_string(buf.getvalue())
    _declare_output_shapes(onnx_model, head, tuple(int(d) for d in probe.shape[1:]), (in_h, in_w))
    t_export = time.perf_counter() - t0

    scopes = attention_scopes(onnx_model.graph, attention_qualnames(deploy))
    pinned = fp32_nodes(onnx_model.graph, scopes, integer_tensors(onnx_model))
    if mixed_precision_fp16:
        n_casts = to_mixed_precision(onnx_model, scopes)
        log.info('mixed precision: fp16 network, %d attention nodes fp32, %d Casts inserted', len(pinned), n_casts)

    class_names, colors, dataset = _class_metadata(model_name, num_classes)
    meta = {
        contract.META_MODEL: model_name,
        contract.META_DATASET: dataset,
        contract.META_CLASSES: json.dumps(class_names),
        contract.META_COLORS: json.dumps(colors),
        contract.META_INPUT_FORMAT: input_format,
        contract.META_INPUT_SIZE: f'{in_h}x{in_w}',
        contract.META_MODEL_SIZE: f'{height}x{width}',
        contract.META_MEAN: json.dumps(list(contract.IMAGENET_MEAN)),
        contract.META_STD: json.dumps(list(contract.IMAGENET_STD)),
        contract.META_HEAD: head,
        contract.META_LABELS_DTYPE: labels_dtype,
        contract.META_BATCH: f'dynamic:{max_batch}' if max_batch is not None else str(batch),
        contract.META_CHECKPOINT_SHA256: file_sha256(checkpoint) if checkpoint else '',
        contract.META_EXPORTER: json.dumps({'evit_ros': __version__, 'torch': torch.__version__,
                                            'onnx': onnx.__version__, 'opset': opset,
                                            'mixed_precision_fp16': mixed_precision_fp16}, sort_keys=True),
        contract.META_FP32_SCOPES: json.dumps(scopes),
    }
    del onnx_model.metadata_props[:]
    for key in sorted(meta):
        onnx_model.metadata_props.add(key=key, value=meta[key])
    onnx_model.producer_name = 'evit_ros'
    onnx_model.producer_version = __version__
    data = onnx_model.SerializeToString()
    if len(data) >= 2 ** 31 - 1:
        raise ExportError(f'the graph is {len(data) / 2**30:.1f} GiB; ONNX single files are limited to 2 GiB')

    t1 = time.perf_counter()
    rel, agreement, conf_diff = float('nan'), float('nan'), None
    if verify:
        rtol = FP16_LOGITS_RTOL if mixed_precision_fp16 else LOGITS_RTOL
        min_agree = FP16_LABELS_MIN_AGREEMENT if mixed_precision_fp16 else LABELS_MIN_AGREEMENT
        rel, agreement, conf_diff = _verify(data, deploy, head, x, rtol, min_agree)
    t_verify = time.perf_counter() - t1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(out_path, data)
    report = ExportReport(path=out_path, seconds=time.perf_counter() - t0, export_seconds=t_export,
                          verify_seconds=t_verify, max_rel_logits_error=rel, label_agreement=agreement,
                          confidence_max_abs_diff=conf_diff, metadata=meta, fp32_nodes=tuple(pinned))
    log.info('%s', report.summary())
    return report

