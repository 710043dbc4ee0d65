"""Eval reports that cannot mislead: real bags and files written here, the real ONNX Runtime pipeline, the real CLI.

Nothing scored is an error (exit 1, one line, the report says why); bad bags are one line and the others are
still evaluated; a JPEG header claiming 65500x65500 is counted bad data; outputs are checked before the model
loads, written under temporary names and moved into place; ``--out-bag X.mcap`` is one MCAP file; SIGINT keeps
the partial report; ``--save-predictions`` writes what others' tools read.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from eval_support import export_tiny_onnx, write_bag

from evit_ros.cli.main import main
from evit_ros.eval.bags import COMPRESSED, MessageFactory, open_reader

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 128
T0 = 1_700_000_000_000_000_000
IMG, LAB = '/front/image_raw', '/front/labels'


@pytest.fixture(scope='module')
def onnx_path(tmp_path_factory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp('onnx') / 'b0.onnx', H, W)


def _common(onnx: Path) -> list[str]:
    return ['--image-topic', IMG, '--backend', 'onnxruntime', '--onnx', str(onnx), '--height', str(H), '--width',
            str(W), '--no-progress']


def _frame(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _bag(path: Path, n: int = 3, label=None, storage: str = 'mcap', h: int = 48, w: int = 64) -> Path:
    msgs = []
    for i in range(n):
        st = T0 + i * 100_000_000
        msgs.append({'topic': IMG, 'stamp': st, 'rgb': _frame(i, h, w)})
        if label is not None:
            lab = label(i)
            if lab is not None:
                msgs.append({'topic': LAB, 'stamp': st, 'label': lab})
    return write_bag(path, msgs, storage)


def _report(d: Path) -> dict:
    return json.loads((d / 'report.json').read_text())


def _zeros(i: int) -> np.ndarray:
    return np.zeros((48, 64), np.uint8)


@pytest.mark.parametrize(('case', 'needle'), [
    ('missing-label-topic', 'has no label topic'),
    ('labels-dir-no-match', 'no label found'),
    ('wrong-size', 'another size'),
    ('out-of-range', 'outside the label format'),
    ('all-void', 'void'),
    ('unreadable-label-files', 'bad_label_channels'),
])
def test_nothing_scored_is_an_error_with_one_line(tmp_path, onnx_path, capsys, case, needle) -> None:
    extra: list[str] = ['--label-topic', LAB]
    if case == 'missing-label-topic':
        bag = _bag(tmp_path / 'bag')
    elif case == 'labels-dir-no-match':
        bag = _bag(tmp_path / 'bag')
        (tmp_path / 'labels' / 'front').mkdir(parents=True)
        cv2.imwrite(str(tmp_path / 'labels' / 'front' / '123.png'), np.zeros((48, 64), np.uint8))
        extra = ['--labels-dir', str(tmp_path / 'labels')]
    elif case == 'unreadable-label-files':
        bag = _bag(tmp_path / 'bag')
        (tmp_path / 'labels').mkdir()
        for i in range(3):
            color = np.zeros((48, 64, 3), np.uint8)   # colour-coded (channels differ): refused by name
            color[..., 2] = 128
            cv2.imwrite(str(tmp_path / 'labels' / f'{T0 + i * 100_000_000}.png'), color)
        extra = ['--labels-dir', str(tmp_path / 'labels')]
    elif case == 'wrong-size':
        bag = _bag(tmp_path / 'bag', label=lambda i: np.zeros((10, 10), np.uint8))
    elif case == 'out-of-range':
        bag = _bag(tmp_path / 'bag', label=lambda i: np.full((48, 64), 100, np.uint8))
    else:
        bag = _bag(tmp_path / 'bag', label=lambda i: np.full((48, 64), 255, np.uint8))
    rep = tmp_path / 'rep'
    rc = main(['eval', '--bag', str(bag), '--report', str(rep), *_common(onnx_path), *extra])
    out, err = capsys.readouterr()
    assert rc == 1, out + err
    lines = [ln for ln in err.splitlines() if 'nothing was scored' in ln]
    assert len(lines) == 1 and needle in lines[0], err
    assert 'Traceback' not in err
    r = _report(rep)
    assert r['error'] and needle in r['error']
    assert r['metrics']['miou_19'] is None and r['metrics']['miou_present'] is None   # no score, not a 0 score
    assert '0.00%' not in out and 'mIoU(19) n/a' in out
    md = (rep / 'report.md').read_text()
    assert 'Nothing was scored' in md and needle in md


def test_partly_bad_labels_are_counted_in_the_summary_and_report_md(tmp_path, onnx_path, capsys) -> None:
    def label(i: int) -> np.ndarray:
        if i == 0:
            return np.zeros((10, 10), np.uint8)                    # wrong size
        lab = np.zeros((48, 64), np.uint8)
        if i == 1:
            lab[:4] = 77                                           # values outside trainIds
        return lab
    bag = _bag(tmp_path / 'bag', n=4, label=label)
    rep = tmp_path / 'rep'
    assert main(['eval', '--bag', str(bag), '--report', str(rep), '--label-topic', LAB, *_common(onnx_path)]) == 0
    out = capsys.readouterr().out
    assert 'data problems:' in out and 'bad_label_size 1' in out and 'bad_label_values 1' in out
    md = (rep / 'report.md').read_text()
    assert '| bad_label_size | 1 |' in md and '| bad_label_values | 1 |' in md
    r = _report(rep)
    assert r['frames_scored'] == 3 and r['error'] is None
    assert 'ground_truth' not in r['meta']
    # no ground truth at all: a latency-only run (exit 0), said in the report's header
    latency = tmp_path / 'latency'
    assert main(['eval', '--bag', str(bag), '--report', str(latency), *_common(onnx_path)]) == 0
    r = _report(latency)
    assert r['error'] is None and r['meta']['ground_truth'] == 'none given: latency only'
    assert 'ground_truth: `none given: latency only`' in (latency / 'report.md').read_text()


def _bad_bags(tmp_path: Path, good: Path) -> dict[str, Path]:
    bags = {}
    empty = tmp_path / 'empty.mcap'
    empty.write_bytes(b'')
    bags['empty'] = empty
    rnd = tmp_path / 'random.mcap'
    rnd.write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    bags['random'] = rnd
    db3 = tmp_path / 'random.db3'
    db3.write_bytes(np.random.default_rng(1).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    bags['random-db3'] = db3
    mcap = next(good.glob('*.mcap'))
    data = mcap.read_bytes()
    trunc = tmp_path / 'truncated.mcap'
    trunc.write_bytes(data[:len(data) * 2 // 3])
    bags['truncated'] = trunc
    return bags


def test_bad_bags_are_one_line_each_and_the_others_are_evaluated(tmp_path, onnx_path, capsys, caplog) -> None:
    good = _bag(tmp_path / 'good', n=6, label=lambda i: np.zeros((96, 128), np.uint8), h=96, w=128)
    bad = _bad_bags(tmp_path, good)
    rep = tmp_path / 'rep'
    bags = [bad['random'], good, bad['empty'], bad['random-db3'], bad['truncated']]
    args = ['eval', *[a for b in bags for a in ('--bag', str(b))], '--label-topic', LAB, '--report', str(rep),
            *_common(onnx_path)]
    assert main(args) == 1                  # raised nothing: no traceback
    out = capsys.readouterr().out
    r = _report(rep)
    assert set(r['failed_sources']) == {str(p) for p in bad.values()}
    assert r['frames_scored'] >= 6          # the good bag (and the part of the truncated one before its cut)
    md = (rep / 'report.md').read_text()
    for name, path in bad.items():
        lines = [rec.getMessage() for rec in caplog.records if rec.levelname == 'ERROR' and str(path) in
                 rec.getMessage()]
        assert len(lines) == 1 and '\n' not in lines[0] and len(lines[0]) < 400, (name, lines)
        assert f'not evaluated: {path}' in out and str(path) in md


def test_a_jpeg_claiming_65500x65500_is_counted_bad_data(tmp_path, onnx_path) -> None:
    f = MessageFactory()
    ok, buf = cv2.imencode('.jpg', np.zeros((16, 16, 3), np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.find(b'\xff\xc0')
    data[sof + 5:sof + 9] = (65500).to_bytes(2, 'big') * 2
    bomb = f.ts.types[COMPRESSED](header=f.header(T0), format='jpeg', data=np.frombuffer(bytes(data), np.uint8))
    topic = '/front/image_raw/compressed'
    msgs = [{'topic': topic, 'type': COMPRESSED, 'msg': bomb}]
    for i in range(1, 3):
        msgs.append({'topic': topic, 'stamp': T0 + i, 'rgb': _frame(i), 'compressed': 'jpeg'})
        msgs.append({'topic': LAB, 'stamp': T0 + i, 'label': _zeros(i)})
    bag = write_bag(tmp_path / 'bag', msgs)
    rep = tmp_path / 'rep'
    common = _common(onnx_path)
    common[1] = topic
    assert main(['eval', '--bag', str(bag), '--label-topic', LAB, '--report', str(rep), *common]) == 0
    r = _report(rep)
    # refused by the decoder's header check (size) or by OpenCV (corrupt): either way one bad frame, counted
    assert list(r['bad_data'].values()) == [1] and next(iter(r['bad_data'])) in ('bad_image_size', 'bad_image_corrupt')
    assert r['frames_scored'] == 2 and r['frames'] == 2


def test_outputs_are_checked_before_the_model_loads(tmp_path, capsys) -> None:
    bag = _bag(tmp_path / 'bag', label=_zeros)
    missing_onnx = ['--image-topic', IMG, '--label-topic', LAB, '--backend', 'onnxruntime', '--onnx',
                    str(tmp_path / 'no.onnx'), '--height', str(H), '--width', str(W), '--no-progress']
    (tmp_path / 'file').write_text('mine')
    t0 = time.monotonic()
    assert main(['eval', '--bag', str(bag), '--report', str(tmp_path / 'file'), *missing_onnx]) == 1
    assert '--report' in capsys.readouterr().err and (tmp_path / 'file').read_text() == 'mine'
    (tmp_path / 'old.mcap').write_bytes(b'x')
    assert main(['eval', '--bag', str(bag), '--out-bag', str(tmp_path / 'old.mcap'), '--report',
                 str(tmp_path / 'r'), *missing_onnx]) == 1
    assert 'already exists' in capsys.readouterr().err
    (tmp_path / 'preds').mkdir()
    (tmp_path / 'preds' / 'keep.png').write_bytes(b'x')
    assert main(['eval', '--bag', str(bag), '--save-predictions', str(tmp_path / 'preds'), '--report',
                 str(tmp_path / 'r'), *missing_onnx]) == 1
    assert 'not empty' in capsys.readouterr().err
    assert main(['eval', '--cityscapes', str(tmp_path / 'nope'), '--report', str(tmp_path / 'r'),
                 *missing_onnx[4:]]) == 1
    assert 'Cityscapes folder' in capsys.readouterr().err
    for labels in (tmp_path / 'no_labels', tmp_path / 'file'):   # a missing --labels-dir, or a file
        assert main(['eval', '--bag', str(bag), '--labels-dir', str(labels), '--report', str(tmp_path / 'r'),
                     *missing_onnx[:2], *missing_onnx[4:]]) == 1
        assert '--labels-dir' in capsys.readouterr().err
    assert time.monotonic() - t0 < 10            # no model was loaded or exported
    assert not (tmp_path / 'r').exists()


def test_out_bag_mcap_is_one_file_and_a_failed_run_leaves_nothing(tmp_path, onnx_path) -> None:
    bag = _bag(tmp_path / 'bag', label=_zeros)
    one = tmp_path / 'masks.mcap'
    assert main(['eval', '--bag', str(bag), '--label-topic', LAB, '--out-bag', str(one), '--report',
                 str(tmp_path / 'r1'), *_common(onnx_path)]) == 0
    assert one.is_file()
    with open_reader(one) as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
    assert topics['/segmentation/front/mask'] == 3 and topics['/segmentation/front/color_mask'] == 3
    folder = tmp_path / 'masks_dir'
    assert main(['eval', '--bag', str(bag), '--label-topic', LAB, '--out-bag', str(folder), '--report',
                 str(tmp_path / 'r2'), *_common(onnx_path)]) == 0
    assert (folder / 'metadata.yaml').is_file() and list(folder.glob('*.mcap'))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.')) == []

    good = _bag(tmp_path / 'big', n=8, label=lambda i: np.zeros((96, 128), np.uint8), h=96, w=128)
    data = next(good.glob('*.mcap')).read_bytes()
    trunc = tmp_path / 'trunc.mcap'
    trunc.write_bytes(data[:len(data) * 2 // 3])
    out = tmp_path / 'never.mcap'
    assert main(['eval', '--bag', str(trunc), '--label-topic', LAB, '--out-bag', str(out), '--report',
                 str(tmp_path / 'r3'), *_common(onnx_path)]) == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_a_stop_signal_keeps_the_partial_report_and_a_finished_out_bag(tmp_path, onnx_path, sig) -> None:
    n = 400
    bag = _bag(tmp_path / 'bag', n=n, label=lambda i: np.zeros((240, 320), np.uint8), h=240, w=320)
    out = tmp_path / 'masks.mcap'
    rep = tmp_path / 'rep'
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen([sys.executable, '-m', 'evit_ros', 'eval', '--bag', str(bag), '--label-topic', LAB,
                             '--out-bag', str(out), '--report', str(rep), *_common(onnx_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    tmp_bag = tmp_path / f'.masks.mcap.partial-{proc.pid}'

    def written() -> int:   # bytes of masks on disk: frames were scored (the partial bag exists before the model loads)
        try:
            if tmp_bag.is_file():
                return tmp_bag.stat().st_size
            return sum(f.stat().st_size for f in tmp_bag.rglob('*') if f.is_file()) if tmp_bag.is_dir() else 0
        except FileNotFoundError:   # renamed into place meanwhile (the run finished)
            return 0

    # wait for the state the test needs (masks on disk), however loaded the machine: the suite's per-test
    # timeout bounds the wait, and a run that ended first is a failure that says so
    while written() < 256 * 1024 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f'eval ended (rc {proc.returncode}) before any masks were written: ' + \
        proc.communicate()[1][-3000:]
    print(f'signal after {written()} bytes of masks')
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    r = _report(rep)
    assert r['interrupted'] and 0 < r['frames'] < n, r['frames']
    assert 'Interrupted' in (rep / 'report.md').read_text()
    with open_reader(out) as reader:
        masks = {c.topic: c.msgcount for c in reader.connections}['/segmentation/front/mask']
    assert masks == r['frames']
    assert not tmp_bag.exists()


def test_save_predictions_for_bags_in_the_label_format(tmp_path, onnx_path) -> None:
    from evit_ros.eval.predictions import train_to_label_lut
    for fmt in ('trainid', 'labelid'):
        road = 0 if fmt == 'trainid' else 7
        bag = _bag(tmp_path / f'bag-{fmt}', label=lambda i, road=road: np.full((48, 64), road, np.uint8))
        preds = tmp_path / f'preds-{fmt}'
        masks = tmp_path / f'masks-{fmt}.mcap'
        assert main(['eval', '--bag', str(bag), '--label-topic', LAB, '--label-format', fmt, '--save-predictions',
                     str(preds), '--out-bag', str(masks), '--report', str(tmp_path / f'r-{fmt}'),
                     *_common(onnx_path)]) == 0
        files = sorted((preds / 'front').glob('*.png'))
        assert [p.stem for p in files] == [str(T0 + i * 100_000_000) for i in range(3)]
        from evit_ros.eval.bags import decode_label_msg, typestore
        ts = typestore()
        with open_reader(masks) as reader:
            conns = [c for c in reader.connections if c.topic == '/segmentation/front/mask']
            want = [decode_label_msg(ts.deserialize_cdr(raw, c.msgtype)) for c, _, raw in reader.messages(conns)]
        got = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files]
        for g, m in zip(got, want, strict=True):
            expect = train_to_label_lut()[m] if fmt == 'labelid' else m
            assert g.dtype == np.uint8 and np.array_equal(g, expect)


def _cityscapes(root: Path, split: str = 'val', zipped: bool = False, void: bool = False) -> None:
    img_root = root / ('leftImg8bit_trainvaltest/leftImg8bit' if zipped else 'leftImg8bit') / split / 'aachen'
    gt_root = root / ('gtFine_trainvaltest/gtFine' if zipped else 'gtFine') / split / 'aachen'
    img_root.mkdir(parents=True)
    gt_root.mkdir(parents=True)
    for i in range(2):
        stem = f'aachen_{i:06d}_000019'
        cv2.imwrite(str(img_root / f'{stem}_leftImg8bit.png'), _frame(i))
        lab = np.zeros((48, 64), np.uint8) if void else np.full((48, 64), 7, np.uint8)   # 7 = road
        cv2.imwrite(str(gt_root / f'{stem}_gtFine_labelIds.png'), lab)


def test_cityscapes_env_unzipped_layout_and_predictions(tmp_path, onnx_path, monkeypatch) -> None:
    root = tmp_path / 'cs'
    _cityscapes(root, zipped=True)
    monkeypatch.setenv('CITYSCAPES_DATASET', str(root))
    preds = tmp_path / 'preds'
    common = _common(onnx_path)[2:]
    assert main(['eval', '--cityscapes', '--save-predictions', str(preds), '--report', str(tmp_path / 'r'),
                 *common]) == 0
    r = _report(tmp_path / 'r')
    assert r['frames_scored'] == 2 and r['meta']['input'] == f'{H}x{W}' and r['meta']['backend'] == 'onnxruntime'
    names = sorted(p.name for p in preds.iterdir())
    assert names == ['aachen_000000_000019_pred_labelIds.png', 'aachen_000001_000019_pred_labelIds.png']
    ids = np.unique(np.concatenate([cv2.imread(str(preds / n), cv2.IMREAD_UNCHANGED).ravel() for n in names]))
    from evit_ros.datasets import CITYSCAPES_LABEL_TO_TRAIN
    assert set(ids.tolist()) <= set(CITYSCAPES_LABEL_TO_TRAIN)   # labelIds, not trainIds


def test_cityscapes_test_split_warns_and_scores_nothing(tmp_path, onnx_path, capsys, caplog) -> None:
    root = tmp_path / 'cs'
    _cityscapes(root, split='test', void=True)
    rc = main(['eval', '--cityscapes', str(root), '--split', 'test', '--report', str(tmp_path / 'r'),
               *_common(onnx_path)[2:]])
    assert rc == 1
    assert 'no public labels' in caplog.text
    assert 'void' in capsys.readouterr().err


def test_samples_png_shows_image_ground_truth_and_prediction(tmp_path, onnx_path) -> None:
    from evit_ros.datasets import CITYSCAPES_COLORS
    bag = _bag(tmp_path / 'bag', n=2, label=lambda i: np.full((48, 64), 10, np.uint8))   # sky everywhere
    auto = [a for a in _common(onnx_path) if a not in ('--backend', 'onnxruntime')]   # backend auto
    assert main(['eval', '--bag', str(bag), '--label-topic', LAB, '--report', str(tmp_path / 'r'), *auto]) == 0
    assert _report(tmp_path / 'r')['meta']['backend'] == 'onnxruntime'      # what auto chose, not 'auto'
    img = cv2.imread(str(tmp_path / 'r' / 'samples.png'))[..., ::-1]
    assert img.shape[1] >= 600
    sky = np.all(img == np.asarray(CITYSCAPES_COLORS[10], np.uint8), axis=-1)
    assert sky.sum() > 500                                  # the ground-truth panel is drawn
    assert img.reshape(-1, 3).std(axis=0).max() > 40        # the camera image (random pixels) is drawn


def test_a_bad_bag_in_parallel_jobs_is_listed_and_the_others_are_merged(tmp_path) -> None:
    from eval_support import red_factory

    from evit_ros.eval.runner import evaluate_bags
    from evit_ros.eval.scoring import EvalSpec
    good = _bag(tmp_path / 'good', n=4, label=lambda i: np.minimum(_frame(i)[..., 0] // 10, 18).astype(np.uint8))
    bad = tmp_path / 'random.mcap'
    bad.write_bytes(np.random.default_rng(2).integers(0, 255, 2048, dtype=np.uint8).tobytes())
    spec = EvalSpec((IMG,), (LAB,), progress=False)
    st = evaluate_bags([str(bad), str(good)], spec, red_factory, 19, jobs=2)
    assert list(st.failed_sources) == [str(bad)] and 'cannot be opened' in st.failed_sources[str(bad)]
    assert st.counters['frames_scored'] == 4 and st.cm.pixel_accuracy() == 1.0


def test_repeated_stamps_are_reported_and_exit_1(tmp_path, onnx_path, capsys) -> None:
    msgs = []
    for i in range(4):   # every stamp zero: which label belongs to which image cannot be known
        msgs += [{'topic': IMG, 'stamp': 0, 'rgb': _frame(i)}, {'topic': LAB, 'stamp': 0, 'label': _zeros(i)}]
    bag = write_bag(tmp_path / 'bag', msgs)
    rep = tmp_path / 'rep'
    assert main(['eval', '--bag', str(bag), '--label-topic', LAB, '--report', str(rep), *_common(onnx_path)]) == 1
    out, err = capsys.readouterr()
    assert 'duplicate_stamps 6' in out and 'not trustworthy' in err and 'repeat a header stamp' in err
    r = _report(rep)
    assert r['duplicate_stamps'] == 6 and r['frames_scored'] == 1 and r['accounting']['ok']
    assert r['partial'] and 'not trustworthy' in (rep / 'report.md').read_text()
    assert main(['eval', '--bag', str(bag), '--report', str(tmp_path / 'lat'), *_common(onnx_path)]) == 0
    assert 'duplicate_stamps 3' in capsys.readouterr().out   # latency only: said, nothing to pair
