"""Why a run scored nothing, in one line: an evaluation that scored no pixel is an error, never ``mIoU 0.00 %``."""
from __future__ import annotations

from typing import Any


def nothing_scored_reason(report: dict[str, Any], *, label_source: str = '') -> str | None:
    """One line saying why no ground-truth pixel was scored, or None when something was scored.

    ``report`` is :func:`evit_ros.eval.report.build_report`'s dict; ``label_source`` says where labels were
    expected (``--label-topic /x``, ``--labels-dir D``) for the message.
    """
    c = report.get('counters', {})
    failed = report.get('failed_sources', {})
    if report['metrics'].get('valid_pixels', 1) and report.get('frames_scored', 0):
        return None
    if report.get('interrupted') and not report.get('frames', 0):
        return 'interrupted before any frame was processed'
    if failed and not report.get('frames', 0):
        return f'no bag could be read ({len(failed)} failed: {"; ".join(failed.values())})'
    frames = report.get('frames', 0)
    if not frames:
        bad = sum(v for k, v in c.items() if k.startswith('bad_image'))
        return (f'no image could be decoded ({bad} bad image messages)' if bad
                else 'no image was processed: the image topics have no messages')
    if report.get('mode') == 'live' and not c.get('frames_received', 0):
        return f'the node published no mask for any of the {frames} frames played (all dropped)'
    if not label_source:   # a latency-only run: nothing to score was asked for
        return None
    if c.get('bad_label_size', 0):
        return (f'every label has another size than its image ({c["bad_label_size"]} labels); labels must be at '
                'the camera resolution')
    if c.get('frames_scored', 0):
        if c.get('bad_label_values', 0):
            return (f'every labelled pixel is outside the label format ({c["bad_label_values"]} labels with values '
                    'outside it); check --label-format (trainid: 0..18 and 255, labelid: 0..33)')
        return 'every ground-truth pixel is void/ignore (255): the labels hold no class of the model'
    bad_labels = {k: v for k, v in c.items() if k.startswith('bad_label') and k != 'bad_label_values' and v}
    if bad_labels:
        detail = ', '.join(f'{k} {v}' for k, v in sorted(bad_labels.items()))
        return (f'every label was bad data ({detail}); labels must be single-channel id images (mono8, or 16-bit '
                'instance-style ids) of the camera size')
    if c.get('duplicate_stamps', 0):
        return (f'every image repeats a header stamp of its camera ({c["duplicate_stamps"]} repeated stamps); '
                'labels are paired by stamp, so each frame needs its own')
    if c.get('labels_without_image', 0):
        return (f'no label matched an image stamp ({c.get("labels_without_image", 0)} labels without an image); '
                f'labels of {label_source} must carry the header stamp of their image')
    return f'no label found for any of the {frames} frames in {label_source}'


def partial_score_reason(report: dict[str, Any], *, label_source: str = '') -> str | None:
    """One line saying why a score that was computed cannot be trusted, or None.

    The frame counts do not add up (see ``report.frame_accounts``), or a camera repeats header stamps while
    ground truth is paired by stamp (which image a label belongs to is then unknown: those are not scored).
    """
    acc = report.get('accounting') or {}
    if acc and not acc.get('ok', True):
        return f'the frame counts do not add up: {acc.get("problem")}'
    dup = report.get('duplicate_stamps', 0)
    if dup and label_source:
        return (f'{dup} images or labels repeat a header stamp of their camera (zero stamps included), so their '
                'pairing is ambiguous; they were not scored. Each frame needs its own stamp')
    return None
