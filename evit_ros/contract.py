"""The contract between exported graphs, engines and backends: tensor names, heads, metadata keys.

An exported graph takes camera pixels and returns task outputs, so hosts only copy bytes:

* input ``images``: uint8 ``[N, H, W, 3]`` RGB (``input_format='uint8-nhwc'``, the default) or float32
  ``[N, 3, H, W]`` already normalized (``input_format='float-nchw'``). Scaling to 0..1, ImageNet
  mean/std, the NHWC->NCHW change and (optionally) the resize to the model size are inside the graph.
* outputs, by head:

  ============================  =====================================================================
  head                          outputs
  ============================  =====================================================================
  ``logits``                    ``logits`` float32 ``[N, C, H/8, W/8]`` (model resolution / 8)
  ``labels``                    ``labels`` ``[N, H, W]`` class ids at the graph input size
  ``labels-lowres``             ``labels`` ``[N, H/8, W/8]`` class ids at 1/8 of the model size
  ``labels+confidence``         ``labels`` as ``labels`` plus ``confidence`` uint8 ``[N, H, W]``
                                (max softmax probability scaled to 0..255)
  ``labels+logits``             ``labels`` as ``labels`` plus ``logits`` as ``logits`` (the node's head:
                                exact labels in the engine; confidence only when subscribed, from
                                the 1/8 logits on the host, so the engine never computes it)
  ============================  =====================================================================

  Class ids are uint8 unless the graph was exported with ``labels_dtype='int32'`` (TensorRT versions
  without UINT8 outputs); consumers accept both.
"""
from __future__ import annotations

INPUT_NAME = 'images'
LOGITS_NAME = 'logits'
LABELS_NAME = 'labels'
CONFIDENCE_NAME = 'confidence'

HEADS: tuple[str, ...] = ('logits', 'labels', 'labels-lowres', 'labels+confidence', 'labels+logits')
HEAD_OUTPUTS: dict[str, tuple[str, ...]] = {
    'logits': (LOGITS_NAME,),
    'labels': (LABELS_NAME,),
    'labels-lowres': (LABELS_NAME,),
    'labels+confidence': (LABELS_NAME, CONFIDENCE_NAME),
    'labels+logits': (LABELS_NAME, LOGITS_NAME),
}
INPUT_FORMATS: tuple[str, ...] = ('uint8-nhwc', 'float-nchw')
# The one head every tool uses unless told otherwise: the node, the demo, `eval`, `export` and `build-engine`.
# Exact in-graph class ids plus the 1/8 logits, from which confidence is computed on the host only when
# someone asks for it (the engine never spends time on it).
NODE_HEAD = 'labels+logits'

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# ONNX metadata_props keys written by the exporter and read by the backends and the engine builder.
META_PREFIX = 'evit.'
META_MODEL = 'evit.model'                  # zoo name, e.g. efficientvit-seg-b0-cityscapes
META_DATASET = 'evit.dataset'              # cityscapes | ade20k
META_CLASSES = 'evit.class_names'          # JSON list of class names
META_COLORS = 'evit.class_colors'          # JSON list of [r, g, b]
META_INPUT_FORMAT = 'evit.input_format'    # one of INPUT_FORMATS
META_INPUT_SIZE = 'evit.input_size'        # "HxW" the graph takes
META_MODEL_SIZE = 'evit.model_size'        # "HxW" the network runs at (differs when resize is in-graph)
META_MEAN = 'evit.mean'                    # JSON list, 0..1 scale
META_STD = 'evit.std'                      # JSON list, 0..1 scale
META_HEAD = 'evit.head'                    # one of HEADS
META_LABELS_DTYPE = 'evit.labels_dtype'    # uint8 | int32
META_BATCH = 'evit.batch'                  # "N" static, or "dynamic:MAX"
META_CHECKPOINT_SHA256 = 'evit.checkpoint_sha256'  # '' for random/deterministic weights
META_EXPORTER = 'evit.exporter'            # JSON {evit_ros, torch, onnx, opset}
META_FP32_SCOPES = 'evit.fp32_scopes'      # JSON list of node-name prefixes that must stay FP32


def dynamic_max_batch(meta: dict[str, str]) -> int | None:
    """MAX of an exported graph's ``evit.batch = "dynamic:MAX"``; None for a static batch."""
    batch = meta.get(META_BATCH, '1')
    return int(batch.split(':', 1)[1]) if batch.startswith('dynamic:') else None
