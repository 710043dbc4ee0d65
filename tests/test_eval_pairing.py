"""Pairing that cannot cross cameras or frames, exact frame counts, one ground-truth reader, leftovers removed.

Bags and label files are written here; the segmenter is the counted stand-in from eval_support (class =
red // 10), so every expected number is known exactly.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from eval_support import POISON_GREEN, FaultyFactory, red_factory, write_bag, write_drive
from eval_support import red_labels as truth
from test_eval_shards import run

from evit_ros.errors import ConfigError
from evit_ros.eval.cityscapes import TOPIC, LabelFileError, iter_cityscapes, read_label_file
from evit_ros.eval.executors import ExecutionOptions, local_cpus, make_executor, ray_temp_dir, unique_bags
from evit_ros.eval.predictions import remove_stale_partials
from evit_ros.eval.report import build_report, frame_accounts
from evit_ros.eval.runner import run_events
from evit_ros.eval.scoring import EvalSpec, EvalState, camera_names

CLASSES = tuple(f'c{i}' for i in range(19))
T0 = 1_700_000_000_000_000_000
LOG0 = 1_000_000_000_000


def frame(i: int, shift: int = 0, green: int = 40, h: int = 24, w: int = 32) -> np.ndarray:
    """Vertical stripes of classes (red = 10 * class + 5); ``shift`` makes another camera's view differ."""
    img = np.zeros((h, w, 3), np.uint8)
    classes = np.array([0, 1, 2, 8, 10, 13])
    img[..., 0] = (classes[(np.arange(w) // 4 + i + shift) % len(classes)] * 10 + 5)[None, :]
    img[..., 1] = green
    return img


def counts_add_up(st: EvalState) -> dict:
    acc = frame_accounts(dict(st.counters))
    assert acc['ok'], acc['problem']
    return acc


# -- cameras -----------------------------------------------------------------------------------------------

def test_camera_names_are_readable_and_never_collide() -> None:
    assert camera_names(('/stereo/left/image_raw', '/stereo/right/image_raw')) == {
        '/stereo/left/image_raw': 'stereo_left', '/stereo/right/image_raw': 'stereo_right'}
    assert camera_names(('/front/image_raw', '/image_raw', '/rear/image_raw/compressed')) == {
        '/front/image_raw': 'front', '/image_raw': 'image', '/rear/image_raw/compressed': 'rear'}
    assert camera_names(('/cam/image_raw', '/cam/image_rect')) == {
        '/cam/image_raw': 'cam_image_raw', '/cam/image_rect': 'cam_image_rect'}
    names = camera_names(('/a/b_c', '/a_b/c', '/a/b/c'))
    assert len(set(names.values())) == 3 and names['/a/b_c'] == 'a_b_c' and names['/a_b/c'] == 'a_b_c_2'
    with pytest.raises(ConfigError, match='twice'):
        EvalSpec(('/x/image', '/x/image'))
    with pytest.raises(ConfigError, match='own topic'):
        EvalSpec(('/x/image', '/y/image'), ('/y/image', '/x/labels'))


def test_stereo_cameras_pair_their_own_labels_and_keep_their_own_predictions(tmp_path) -> None:
    left, right = '/stereo/left/image_raw', '/stereo/right/image_raw'
    msgs = []
    n = 4
    for i in range(n):   # synchronised stamps, different views: crossing cameras would score them wrongly
        st, log = T0 + i * 100_000_000, LOG0 + i * 100_000_000
        for k, (img_t, lab_t) in enumerate(((left, '/stereo/left/labels'), (right, '/stereo/right/labels'))):
            rgb = frame(i, shift=3 * k)
            msgs += [{'topic': img_t, 'stamp': st, 'rgb': rgb, 'log': log + k},
                     {'topic': lab_t, 'stamp': st, 'label': truth(rgb), 'log': log + 10 + k}]
    bag = write_bag(tmp_path / 'bag', msgs)
    preds = tmp_path / 'preds'
    st = run([bag], EvalSpec((left, right), ('/stereo/left/labels', '/stereo/right/labels'), progress=False,
                             save_predictions=str(preds)))
    r = build_report(st, CLASSES, [])
    assert r['frames'] == 2 * n and r['frames_scored'] == 2 * n and r['labels_without_image'] == 0
    assert r['metrics']['pixel_accuracy'] == 1.0
    assert set(r['per_camera']) == {'stereo_left', 'stereo_right'}
    assert all(c['pixel_accuracy'] == 1.0 for c in r['per_camera'].values())
    assert sorted(p.name for p in preds.iterdir()) == ['stereo_left', 'stereo_right']
    for cam, k in (('stereo_left', 0), ('stereo_right', 1)):
        files = sorted((preds / cam).iterdir())
        assert len(files) == n
        assert np.array_equal(cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED), truth(frame(0, shift=3 * k)))
    counts_add_up(st)


# -- repeated stamps and exact counts ----------------------------------------------------------------------

def test_duplicate_stamps_are_counted_never_paired_twice_and_counts_add_up(tmp_path) -> None:
    img, lab = '/front/image_raw', '/front/labels'
    msgs = []
    for i in range(6):   # stamps s0 s0 s1 s1 s2 s2: each image followed by its own label
        st, log = T0 + (i // 2) * 100_000_000, LOG0 + i * 100_000_000
        rgb = frame(i)
        msgs += [{'topic': img, 'stamp': st, 'rgb': rgb, 'log': log},
                 {'topic': lab, 'stamp': st, 'label': truth(rgb), 'log': log + 10}]
    st = run([write_bag(tmp_path / 'dup', msgs)], EvalSpec((img,), (lab,), progress=False))
    c = st.counters
    assert c['frames'] == 6 and c['frames_scored'] == 3
    assert c['duplicate_image_stamps'] == 3 and c['duplicate_label_stamps'] == 3 and c['duplicate_stamps'] == 6
    assert st.cm.pixel_accuracy() == 1.0      # each scored image met its own label, not a later one's
    acc = counts_add_up(st)
    assert acc['labels']['labels'] == 6
    assert build_report(st, CLASSES, [])['duplicate_stamps'] == 6

    zeros = []
    for i in range(5):   # every stamp zero (a driver that never sets header.stamp)
        rgb = frame(i)
        zeros += [{'topic': img, 'stamp': 0, 'rgb': rgb, 'log': LOG0 + i * 10**8},
                  {'topic': lab, 'stamp': 0, 'label': truth(rgb), 'log': LOG0 + i * 10**8 + 10}]
    st = run([write_bag(tmp_path / 'zero', zeros)], EvalSpec((img,), (lab,), progress=False))
    assert st.counters['frames_scored'] == 1 and st.counters['duplicate_stamps'] == 8
    assert st.cm.pixel_accuracy() == 1.0      # the first image with the first label, never the last with the first
    counts_add_up(st)


def test_sliced_drives_count_every_image_and_label_exactly(tmp_path) -> None:
    drive = write_drive(tmp_path / 'drive', 40.0, seed=4)
    sp = EvalSpec(('/front/image_raw',), ('/front/labels',), progress=False, window=8)
    whole, sliced = run([drive], sp), run([drive], sp, shard_seconds=10.0)
    for st in (whole, sliced):
        acc = counts_add_up(st)
        assert acc['images']['frames'] == 160 and acc['labels']['labels_paired_twice'] == 0
    assert dict(whole.counters) == dict(sliced.counters)


# -- --max-frames ------------------------------------------------------------------------------------------

def test_max_frames_n_scores_n_frames_also_in_every_slice(tmp_path) -> None:
    img, lab = '/front/image_raw', '/front/labels'
    msgs = []
    for i in range(160):   # 40 s at 4 Hz, each label 50 ms after its image (the README drive's order)
        st, log = T0 + i * 250_000_000, LOG0 + i * 250_000_000
        rgb = frame(i)
        msgs += [{'topic': img, 'stamp': st, 'rgb': rgb, 'log': log},
                 {'topic': lab, 'stamp': st, 'label': truth(rgb), 'log': log + 50_000_000}]
    bag = write_bag(tmp_path / 'bag', msgs)
    st = run([bag], EvalSpec((img,), (lab,), progress=False, max_frames=1))
    assert st.counters['frames'] == 1 and st.counters['frames_scored'] == 1
    assert st.counters['labels_without_image'] == 0 and st.counters['frames_without_gt'] == 0
    counts_add_up(st)
    st = run([bag], EvalSpec((img,), (lab,), progress=False, max_frames=3), shard_seconds=10.0)
    assert st.shards['done'] == 4
    assert st.counters['frames'] == 12 and st.counters['frames_scored'] == 12   # no slice loses its last frame
    counts_add_up(st)


# -- the same bag twice ------------------------------------------------------------------------------------

def test_the_same_bag_named_twice_is_evaluated_once(tmp_path, monkeypatch) -> None:
    img = '/front/image_raw'
    bag = write_bag(tmp_path / 'bag.mcap', [{'topic': img, 'stamp': T0 + i, 'rgb': frame(i)} for i in range(3)])
    (tmp_path / 'link.mcap').symlink_to(bag)
    monkeypatch.chdir(tmp_path)
    bags = ['bag.mcap', './bag.mcap', str(bag), 'link.mcap']
    unique, repeats = unique_bags(bags)
    assert unique == ['bag.mcap'] and len(repeats) == 3 and 'evaluated once' in repeats[0]
    st = run(bags, EvalSpec((img,), progress=False))
    assert st.counters['frames'] == 3 and st.shards['total'] == 1
    assert len(st.shards['same_bag_given_twice']) == 3
    from evit_ros.eval.report import render_markdown
    assert 'link.mcap is the same bag as bag.mcap; evaluated once' in render_markdown(build_report(st, CLASSES, []))


# -- one ground-truth reader -------------------------------------------------------------------------------

def _cityscapes(root: Path, label: np.ndarray, rgb: np.ndarray) -> None:
    for sub in ('leftImg8bit', 'gtFine'):
        (root / sub / 'val' / 'bonn').mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / 'leftImg8bit' / 'val' / 'bonn' / 'bonn_000001_000019_leftImg8bit.png'), rgb[..., ::-1])
    cv2.imwrite(str(root / 'gtFine' / 'val' / 'bonn' / 'bonn_000001_000019_gtFine_labelIds.png'), label)


def _labelids(h: int = 16, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An image whose stand-in prediction is road | car and its labelIds (some car pixels labelled road)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = 5
    rgb[:, w // 2:, 0] = 135
    lab = np.full((h, w), 7, np.uint8)     # road
    lab[:, w // 2:] = 26                   # car
    lab[:4, w // 2:w // 2 + 4] = 7
    return rgb, lab


def _score_cityscapes(root: Path) -> EvalState:
    return run_events(iter_cityscapes(root), EvalState(19), EvalSpec((TOPIC,), progress=False), red_factory(),
                      source='cs', label_format='labelid')


def test_16bit_and_3channel_ground_truth_is_read_per_cityscapes_conventions(tmp_path) -> None:
    rgb, lab = _labelids()
    _cityscapes(tmp_path / 'u8', lab, rgb)
    want = _score_cityscapes(tmp_path / 'u8')
    assert want.counters['frames_scored'] == 1 and 0 < want.cm.pixel_accuracy() < 1
    inst = lab.astype(np.uint16)
    inst[lab == 26] = 26000 + np.arange(int((lab == 26).sum())) % 3   # instanceIds: car instances 26000, 26001, ...
    _cityscapes(tmp_path / 'u16', inst, rgb)
    _cityscapes(tmp_path / 'rgb', np.dstack([lab] * 3), rgb)
    for variant in ('u16', 'rgb'):
        got = _score_cityscapes(tmp_path / variant)
        assert np.array_equal(got.cm.matrix, want.cm.matrix), variant      # never cut to 8 bits
    assert np.array_equal(read_label_file(tmp_path / 'u16' / 'gtFine' / 'val' / 'bonn' /
                                          'bonn_000001_000019_gtFine_labelIds.png'), lab)


def test_unusable_ground_truth_is_refused_by_name_the_same_way_on_both_paths(tmp_path, capfd) -> None:
    rgb, lab = _labelids()
    color = np.dstack([lab, lab, np.full_like(lab, 128)])                   # a colour-coded *_color.png
    ok, png = cv2.imencode('.png', lab)
    corrupt = bytearray(png.tobytes())
    corrupt[60] ^= 0xFF                                                     # a flipped bit: CRC error
    cases = {'color': ('bad_label_channels', color), 'float': ('bad_label_dtype', lab.astype(np.float32)),
             'corrupt': ('bad_label_file', bytes(corrupt)), 'truncated': ('bad_label_file', png.tobytes()[:50])}
    for name, (counter, data) in cases.items():
        root = tmp_path / name
        _cityscapes(root, lab, rgb)
        gt = root / 'gtFine' / 'val' / 'bonn' / 'bonn_000001_000019_gtFine_labelIds.png'
        if isinstance(data, bytes):
            gt.write_bytes(data)
        else:
            cv2.imwrite(str(gt.with_suffix('.tiff')), data)
            gt.write_bytes(gt.with_suffix('.tiff').read_bytes())
        with pytest.raises(LabelFileError) as exc:
            read_label_file(gt)
        assert exc.value.counter == counter and str(gt) in str(exc.value)
        st = _score_cityscapes(root)                                         # --cityscapes
        assert st.counters[counter] == 1 and st.counters['frames_bad_gt'] == 1, name
        assert st.counters['frames_scored'] == 0 and st.counters['frames_without_gt'] == 0
        counts_add_up(st)
        labels = tmp_path / f'{name}_labels' / 'front'                       # --labels-dir, same file
        labels.mkdir(parents=True)
        (labels / f'{T0}.png').write_bytes(gt.read_bytes())
        bag = write_bag(tmp_path / f'{name}.mcap', [{'topic': '/front/image_raw', 'stamp': T0, 'rgb': rgb}])
        st = run([bag], EvalSpec(('/front/image_raw',), labels_dir=str(labels.parent), label_format='labelid',
                                 progress=False))
        assert st.counters[counter] == 1 and st.counters['frames_bad_gt'] == 1, name
        counts_add_up(st)
    err = capfd.readouterr().err
    assert 'libpng' not in err and 'WARN' not in err                       # no decoder noise on stderr


# -- leftovers ---------------------------------------------------------------------------------------------

def test_a_failed_bags_predictions_are_removed_and_stale_staging_of_dead_processes_too(tmp_path) -> None:
    img = '/front/image_raw'
    good = write_bag(tmp_path / 'good', [{'topic': img, 'stamp': T0 + i, 'rgb': frame(i)} for i in range(3)])
    bad = write_bag(tmp_path / 'bad', [{'topic': img, 'stamp': T0 + 100 + i,
                                        'rgb': frame(i, green=POISON_GREEN if i == 2 else 40)} for i in range(4)])
    preds = tmp_path / 'preds'
    st = run([good, bad], EvalSpec((img,), progress=False, save_predictions=str(preds)), FaultyFactory(),
             max_retries=0)
    assert list(st.failed_sources) == [str(bad)]
    assert sorted(p.name for p in preds.iterdir()) == ['front']             # no staging folder left
    assert sorted(p.name for p in (preds / 'front').iterdir()) == [f'{T0 + i}.png' for i in range(3)]

    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    host = __import__('socket').gethostname()
    host = ''.join(c if c.isalnum() or c == '_' else '_' for c in host)[:40]
    stale = [tmp_path / f'.masks.partial-{dead.pid}', tmp_path / f'.partial-{host}-{dead.pid}-abc']
    live = [tmp_path / f'.masks.partial-{os.getpid()}', tmp_path / f'.partial-otherhost-{dead.pid}-x']
    for d in stale + live:
        d.mkdir()
    assert sorted(remove_stale_partials(tmp_path, '.')) == sorted(stale)
    assert all(d.exists() for d in live) and not any(d.exists() for d in stale)


# -- numbers -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('field', ['task_cpus', 'task_gpus', 'shard_seconds', 'ray_timeout'])
@pytest.mark.parametrize('value', [float('nan'), float('inf'), -1.0])
def test_numeric_execution_options_are_validated(field, value) -> None:
    with pytest.raises(ConfigError, match=field.replace('_', '-')):
        ExecutionOptions(**{field: value})
    with pytest.raises(ConfigError, match='samples'):
        EvalSpec(('/front/image_raw',), samples=-3)


def test_jobs_beyond_the_cpus_are_capped_with_a_line(caplog) -> None:
    ex = make_executor(EvalSpec(('/front/image_raw',), progress=False), red_factory, 19,
                       ExecutionOptions(jobs=1000, progress=False), shards=5000)
    try:
        assert ex.workers == min(local_cpus(), 5000) or (local_cpus() == 1 and ex.workers == 1)
    finally:
        ex.close()
    assert f'--jobs 1000 is more than the {local_cpus()} CPUs' in caplog.text


def test_a_long_temp_path_gets_a_short_ray_temp_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv('RAY_TMPDIR', str(tmp_path / ('x' * 90)))
    short = ray_temp_dir()
    try:
        assert short and len(short) < 40 and os.path.isdir(short)
    finally:
        os.rmdir(short)
    monkeypatch.setenv('RAY_TMPDIR', '/tmp')
    assert ray_temp_dir() == ''


def test_an_unreachable_or_silent_ray_address_ends_within_the_bound_with_one_line(tmp_path, capsys) -> None:
    import socket
    import threading
    import time

    from evit_ros.cli.main import main
    bag = write_bag(tmp_path / 'bag', [{'topic': '/front/image_raw', 'stamp': T0, 'rgb': frame(0)}])
    closed = socket.socket()
    closed.bind(('127.0.0.1', 0))
    refused = closed.getsockname()[1]
    closed.close()
    silent = socket.socket()                  # accepts connections and never answers (a wrong service, a hung head)
    silent.bind(('127.0.0.1', 0))
    silent.listen(16)
    held: list = []
    threading.Thread(target=lambda: [held.append(silent.accept()) for _ in range(16)], daemon=True).start()
    base = ['eval', '--bag', str(bag), '--image-topic', '/front/image_raw', '--report', str(tmp_path / 'r'),
            '--executor', 'ray', '--no-progress', '--ray-timeout', '4']
    try:
        for port, needle in ((refused, 'cannot connect'), (silent.getsockname()[1], 'within --ray-timeout 4 s')):
            t0 = time.monotonic()
            assert main([*base, '--ray-address', f'127.0.0.1:{port}']) == 1
            assert time.monotonic() - t0 < 30
            err = capsys.readouterr().err
            assert needle in err and 'Traceback' not in err
    finally:
        silent.close()
    assert main([*base[:-2], '--task-cpus', 'nan']) == 1
    assert '--task-cpus nan is not valid' in capsys.readouterr().err


def test_the_next_run_removes_what_a_killed_run_left_next_to_its_outputs(tmp_path, capsys) -> None:
    from evit_ros.cli.main import main
    bag = write_bag(tmp_path / 'bag', [{'topic': '/front/image_raw', 'stamp': T0, 'rgb': frame(0)}])
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.masks.partial-{dead.pid}'          # what a SIGKILLed run's --out-bag staging looks like
    mine = tmp_path / f'.masks.partial-{os.getpid()}'        # a live run's: kept
    for d in (stale, mine):
        (d / 'part').mkdir(parents=True)
    rc = main(['eval', '--bag', str(bag), '--image-topic', '/front/image_raw', '--out-bag', str(tmp_path / 'masks'),
               '--report', str(tmp_path / 'r'), '--backend', 'onnxruntime', '--onnx', str(tmp_path / 'no.onnx'),
               '--no-progress'])
    assert rc == 1 and 'Traceback' not in capsys.readouterr().err   # the model is missing: the run stops there
    assert not stale.exists() and mine.exists()


def test_a_stamp_repeated_across_a_slice_edge_is_caught_by_the_report_check(tmp_path) -> None:
    img, lab = '/front/image_raw', '/front/labels'
    msgs = [{'topic': img, 'stamp': T0 + i * 10**9, 'rgb': frame(i), 'log': LOG0 + i * 10**9} for i in range(25)]
    edge = LOG0 + 10 * 10**9                      # the first slice edge of --shard-seconds 10
    rgb = frame(99)
    msgs += [{'topic': img, 'stamp': 5, 'rgb': rgb, 'log': edge - 10**8},
             {'topic': lab, 'stamp': 5, 'label': truth(rgb), 'log': edge - 5 * 10**7},
             {'topic': img, 'stamp': 5, 'rgb': rgb, 'log': edge + 10**8}]   # same stamp, the next slice
    msgs.sort(key=lambda m: m['log'])
    bag = write_bag(tmp_path / 'bag', msgs)
    sp = EvalSpec((img,), (lab,), progress=False)
    assert frame_accounts(dict(run([bag], sp).counters))['ok']             # one shard: the repeat is caught
    acc = frame_accounts(dict(run([bag], sp, shard_seconds=10.0).counters))
    assert not acc['ok'] and acc['labels']['labels_paired_twice'] == 1 and 'paired twice' in acc['problem']
