"""EfficientViT-Seg in PyTorch, state_dict-compatible with the official checkpoints.

``create_model(name, pretrained=False, checkpoint=None)`` returns an eval-mode model whose ``forward``
maps a normalized float NCHW batch (H, W multiples of 32) to logits ``[N, C, H/8, W/8]``.
"""
from __future__ import annotations

from evit_ros.model.checkpoint import (
    CHECKPOINT_ENV,
    checkpoint_search_path,
    checkpoint_sha256,
    create_model,
    download_url,
    find_checkpoint,
    identify_variant,
    load_checkpoint,
    read_state_dict,
)
from evit_ros.model.ops import LITEMLA_EPS, LiteMLA
from evit_ros.model.seg import INPUT_MULTIPLE, EfficientViTSeg, check_input_size
from evit_ros.model.zoo import (
    MODEL_SPECS,
    ModelSpec,
    build_model,
    checkpoint_filename,
    list_models,
    model_spec,
)

# ONNX node-name patterns (regular expressions) of the linear-attention core in a TorchScript export
# (torch.onnx.export(..., dynamo=False)): every node of LiteMLA's parameter-free ``attention`` child,
# e.g. '/backbone/stages.2/op_list.1/context_module/main/attention/MatMul_1'. Any prefix from a wrapping
# module (e.g. '/model') is allowed before it.
ATTENTION_SCOPE_PATTERNS: tuple[str, ...] = (r'/context_module/main/attention/',)


def attention_scope_patterns() -> list[str]:
    """Regexes matching the ONNX node names of the attention core (MatMul, Div, Add eps, Pad, Relu q/k)."""
    return list(ATTENTION_SCOPE_PATTERNS)


__all__ = [
    'ATTENTION_SCOPE_PATTERNS', 'CHECKPOINT_ENV', 'INPUT_MULTIPLE', 'LITEMLA_EPS', 'MODEL_SPECS', 'EfficientViTSeg',
    'LiteMLA', 'ModelSpec', 'attention_scope_patterns', 'build_model', 'check_input_size', 'checkpoint_filename',
    'checkpoint_search_path', 'checkpoint_sha256', 'create_model', 'download_url', 'find_checkpoint',
    'identify_variant', 'list_models', 'load_checkpoint', 'model_spec', 'read_state_dict',
]
