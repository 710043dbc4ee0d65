"""Bag evaluation on bags written here (MCAP and sqlite3), scored with a known segmenter so every number is
counted independently in the test."""
from __future__ import annotations

import json

import numpy as np
import pytest
from eval_support import RedSegmenter, red_factory, scene, write_bag
from eval_support import red_labels as pred_of

from evit_ros.eval.bags import COMPRESSED, IMAGE, BagWriter, iter_events, typestore
from evit_ros.eval.report import PLOTS, write_report
from evit_ros.eval.runner import evaluate_bags
from evit_ros.eval.scoring import EvalSpec

CLASSES = tuple(f'c{i}' for i in range(19))
T0 = 1_700_000_000_000_000_000
IMG, LAB = '/front/image_raw', '/front/labels'


def stamp(i: int) -> int:
    return T0 + i * 100_000_000


def spec(**kw: object) -> EvalSpec:
    base = dict(image_topics=(IMG,), label_topics=(LAB,), progress=False)
    base.update(kw)
    return EvalSpec(**base)  # type: ignore[arg-type]


def run(bags: list, sp: EvalSpec, jobs: int = 1):
    return evaluate_bags([str(b) for b in bags], sp, red_factory, 19, jobs=jobs)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_gt_equal_to_prediction_gives_miou_100(tmp_path, storage) -> None:
    frames = []
    for i in range(5):
        rgb = scene(i)
        frames.append({'topic': IMG, 'stamp': stamp(i), 'rgb': rgb})
        frames.append({'topic': LAB, 'stamp': stamp(i), 'label': pred_of(rgb)})
    bag = write_bag(tmp_path / 'bag', frames, storage)
    st = run([bag], spec())
    s = st.cm.summary(CLASSES)
    assert st.counters['frames'] == 5 and st.counters['frames_scored'] == 5
    assert s['miou_present'] == 1.0 and s['pixel_accuracy'] == 1.0
    assert s['classes_present'] == 6 and s['valid_pixels'] == 5 * 48 * 64


def test_known_corruption_gives_hand_counted_iou_and_labels_may_come_first(tmp_path) -> None:
    frames, inter, union = [], np.zeros(19), np.zeros(19)
    for i in range(4):
        rgb = scene(i)
        pred = pred_of(rgb)
        gt = pred.copy()
        gt[2:12, 4:20] = 11                  # a "person" rectangle the model does not see
        gt[40:44, 0:10] = 255                # an ignored patch
        if i % 2:                            # label before image for odd frames
            frames.append({'topic': LAB, 'stamp': stamp(i), 'label': gt})
            frames.append({'topic': IMG, 'stamp': stamp(i), 'rgb': rgb})
        else:
            frames.append({'topic': IMG, 'stamp': stamp(i), 'rgb': rgb})
            frames.append({'topic': LAB, 'stamp': stamp(i), 'label': gt})
        valid = gt != 255
        for c in range(19):
            g, p = (gt == c) & valid, (pred == c) & valid
            inter[c] += np.count_nonzero(g & p)
            union[c] += np.count_nonzero(g | p)
    bag = write_bag(tmp_path / 'bag', frames)
    st = run([bag], spec())
    got = st.cm.iou()
    present = union > 0
    assert np.allclose(got[present], inter[present] / union[present])
    assert np.isnan(got[~present]).all()
    assert got[11] == 0.0
    s = st.cm.summary(CLASSES, [('drivable', [0])])
    assert s['miou_present'] == pytest.approx(float(np.mean(inter[present] / union[present])), abs=1e-6)
    assert s['miou_19'] == pytest.approx(float(np.sum(inter[present] / union[present]) / 19), abs=1e-6)
    assert st.counters['frames_scored'] == 4


def test_compressed_png_and_jpeg_inputs(tmp_path) -> None:
    frames = []
    for i in range(3):
        rgb = scene(i)
        frames.append({'topic': IMG, 'stamp': stamp(i), 'rgb': rgb, 'compressed': 'png'})
        frames.append({'topic': LAB, 'stamp': stamp(i), 'label': pred_of(rgb)})
    bag = write_bag(tmp_path / 'png', frames)
    st = run([bag], spec())
    assert st.counters['frames_scored'] == 3 and st.cm.summary(CLASSES)['miou_present'] == 1.0
    jpg = [dict(f, compressed='jpeg') if 'rgb' in f else f for f in frames]
    st = run([write_bag(tmp_path / 'jpg', jpg)], spec())
    assert st.counters['frames_scored'] == 3
    assert 0.5 < st.cm.pixel_accuracy() <= 1.0   # JPEG shifts a few red values across a class boundary


def test_missing_labels_count_for_latency_only(tmp_path) -> None:
    frames = []
    for i in range(6):
        rgb = scene(i)
        frames.append({'topic': IMG, 'stamp': stamp(i), 'rgb': rgb})
        if i in (1, 4):
            frames.append({'topic': LAB, 'stamp': stamp(i), 'label': pred_of(rgb)})
    frames.append({'topic': LAB, 'stamp': stamp(99), 'label': pred_of(scene(0))})   # no image for it
    st = run([write_bag(tmp_path / 'bag', frames)], spec(window=2))
    assert st.counters['frames'] == 6
    assert st.counters['frames_scored'] == 2
    assert st.counters['frames_without_gt'] == 4
    assert st.counters['labels_without_image'] == 1
    assert st.latency.summary()['infer']['count'] == 6
    assert st.cm.matrix.sum() == 2 * 48 * 64


def test_corrupt_messages_are_counted_never_fatal(tmp_path) -> None:
    ts = typestore()
    w_frames = []
    good = scene(0)
    w_frames.append({'topic': IMG, 'stamp': stamp(0), 'rgb': good})
    w_frames.append({'topic': LAB, 'stamp': stamp(0), 'label': pred_of(good)})
    with BagWriter(tmp_path / 'tmp') as tmpw:
        f = tmpw.factory
        full = f.serialize(f.image(good, stamp(1)), IMAGE)
        trunc_data = f.image(good, stamp(2))
        trunc_data.data = trunc_data.data[:100]
        weird = f.image(good, stamp(3))
        weird.encoding = 'weird16'
        garbage = ts.types[COMPRESSED](header=f.header(stamp(4)), format='jpeg',
                                       data=np.frombuffer(b'\xff\xd8not a jpeg', np.uint8))
    w_frames += [
        {'topic': IMG, 'raw': full[:30]},                                   # truncated CDR
        {'topic': IMG, 'msg': trunc_data},                                  # data shorter than step*height
        {'topic': IMG, 'msg': weird},                                       # unknown encoding
        {'topic': '/rear/image_raw/compressed', 'type': COMPRESSED, 'msg': garbage},
        {'topic': IMG, 'stamp': stamp(5), 'rgb': scene(5)},
        {'topic': LAB, 'stamp': stamp(5), 'label': np.zeros((10, 10), np.uint8)},   # wrong size
        {'topic': LAB, 'raw': b'\x00\x01\x00\x00\x05'},                     # truncated label CDR
    ]
    bag = write_bag(tmp_path / 'bag', w_frames)
    sp = EvalSpec((IMG, '/rear/image_raw/compressed'), (LAB, '/rear/labels'), progress=False)
    st = run([bag], sp)
    c = st.counters
    assert c['frames'] == 2 and c['frames_scored'] == 1
    assert c['bad_image_deserialize'] == 1
    assert sum(v for k, v in c.items() if k.startswith('bad_image_')) == 4
    assert c['bad_image_encoding'] == 1
    assert c['bad_label_size'] == 1 and c['bad_label_deserialize'] == 1


def test_labelid_format_is_mapped_to_trainids(tmp_path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 5                              # predicted class 0 (road) everywhere
    label = np.full((16, 16), 7, np.uint8)       # labelId 7 = road -> trainId 0
    label[:4] = 26                               # labelId 26 = car -> trainId 13
    label[4:6] = 0                               # labelId 0 = unlabeled -> ignored
    frames = [{'topic': IMG, 'stamp': stamp(0), 'rgb': rgb}, {'topic': LAB, 'stamp': stamp(0), 'label': label}]
    st = run([write_bag(tmp_path / 'bag', frames)], spec(label_format='labelid'))
    assert st.cm.matrix[0, 0] == 10 * 16 and st.cm.matrix[13, 0] == 4 * 16 and st.cm.matrix.sum() == 14 * 16
    assert st.cm.iou()[0] == pytest.approx(160 / 224)


def test_labels_dir_by_stamp(tmp_path) -> None:
    import cv2
    frames = [{'topic': IMG, 'stamp': stamp(i), 'rgb': scene(i)} for i in range(3)]
    (tmp_path / 'labels' / 'front').mkdir(parents=True)
    cv2.imwrite(str(tmp_path / 'labels' / 'front' / f'{stamp(0)}.png'), pred_of(scene(0)))
    cv2.imwrite(str(tmp_path / 'labels' / f'{stamp(2)}.png'), pred_of(scene(2)))
    st = run([write_bag(tmp_path / 'bag', frames)],
             EvalSpec((IMG,), labels_dir=str(tmp_path / 'labels'), progress=False))
    assert st.counters['frames_scored'] == 2 and st.counters['frames_without_gt'] == 1
    assert st.cm.pixel_accuracy() == 1.0


def test_out_bag_has_masks_stamped_like_inputs(tmp_path) -> None:
    frames = [{'topic': IMG, 'stamp': stamp(i), 'rgb': scene(i)} for i in range(3)]
    bag = write_bag(tmp_path / 'bag', frames, 'sqlite3')
    run([bag], EvalSpec((IMG,), out_bag=str(tmp_path / 'out'), progress=False))
    seen = {}
    for ev in iter_events(tmp_path / 'out', ['/segmentation/front/color_mask', '/segmentation/front/overlay'],
                          ['/segmentation/front/mask']):
        seen.setdefault(ev.topic, []).append(ev)
    assert sorted(seen) == ['/segmentation/front/color_mask', '/segmentation/front/mask',
                            '/segmentation/front/overlay']
    assert [e.stamp_ns for e in seen['/segmentation/front/mask']] == [stamp(i) for i in range(3)]
    for i, e in enumerate(seen['/segmentation/front/mask']):
        assert np.array_equal(e.data, pred_of(scene(i))) and e.frame_id == 'cam'
    assert list((tmp_path / 'out').glob('*.mcap')) and not list((tmp_path / 'out').glob('*.db3'))


def test_jobs_2_equals_jobs_1_and_report_files(tmp_path) -> None:
    bags = []
    for b in range(2):
        frames = []
        for i in range(3):
            rgb = scene(i + 3 * b)
            gt = pred_of(rgb)
            gt[:5, :7] = 13
            frames += [{'topic': IMG, 'stamp': stamp(i), 'rgb': rgb}, {'topic': LAB, 'stamp': stamp(i), 'label': gt}]
        bags.append(write_bag(tmp_path / f'bag{b}', frames))
    one = run(bags, spec())
    two = run(bags, spec(), jobs=2)
    assert np.array_equal(one.cm.matrix, two.cm.matrix) and one.cm.matrix.sum() == 6 * 48 * 64
    assert one.counters == two.counters
    assert one.latency.summary()['infer']['count'] == two.latency.summary()['infer']['count'] == 6
    rep = write_report(tmp_path / 'rep', two, CLASSES, [('drivable', [0])], {'model': 'red'})
    on_disk = json.loads((tmp_path / 'rep' / 'report.json').read_text())
    assert on_disk['metrics']['miou_present'] == rep['metrics']['miou_present'] == pytest.approx(
        float(np.nanmean(one.cm.iou())), abs=1e-6)
    md = (tmp_path / 'rep' / 'report.md').read_text()
    assert 'mIoU, classes present' in md and '| c13 |' in md
    for p in PLOTS:
        assert (tmp_path / 'rep' / p).stat().st_size > 1000


def test_segmenter_stand_in_matches_pred_of() -> None:
    rgb = scene(2)
    assert np.array_equal(RedSegmenter().process([rgb])[0].labels, pred_of(rgb))


class _InterruptAfter(RedSegmenter):
    """Raises KeyboardInterrupt (as Ctrl-C would) on the third frame."""

    def __init__(self) -> None:
        self.calls = 0

    def process(self, frames, **kw):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return super().process(frames, **kw)


def test_ctrl_c_keeps_partial_results_and_max_frames(tmp_path) -> None:
    from evit_ros.eval.runner import evaluate_bag
    from evit_ros.eval.scoring import EvalState
    frames = []
    for i in range(6):
        rgb = scene(i)
        frames += [{'topic': IMG, 'stamp': stamp(i), 'rgb': rgb},
                   {'topic': LAB, 'stamp': stamp(i), 'label': pred_of(rgb)}]
    bag = write_bag(tmp_path / 'bag', frames)
    st = evaluate_bag(str(bag), spec(), _InterruptAfter(), 19, state=EvalState(19))
    assert st.interrupted and st.counters['frames'] == 2
    rep = write_report(tmp_path / 'rep', st, CLASSES, [], plots=False)
    assert rep['interrupted'] and 'Interrupted' in (tmp_path / 'rep' / 'report.md').read_text()
    st = run([bag], spec(max_frames=4))
    assert st.counters['frames'] == 4 and not st.interrupted


def test_recorded_compressed_masks_are_read_back_exactly(tmp_path) -> None:
    """A bag of the node's segmentation/<cam>/mask/compressed (PNG, image_transport's format string) scores as
    the raw masks do: every class id (and 255) comes back; a JPEG mask (lossy) is counted as a bad label."""
    import cv2

    from evit_ros.eval.bags import MessageFactory
    f = MessageFactory()
    frames, jpeg_frames = [], []
    for i in range(3):
        rgb = scene(i)
        gt = pred_of(rgb)
        gt[:3, :5] = 255
        ok, png = cv2.imencode('.png', gt, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        ok2, jpg = cv2.imencode('.jpg', gt, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok and ok2
        for out, data, fmt in ((frames, png, 'mono8; png compressed '),
                               (jpeg_frames, jpg, 'mono8; jpeg compressed mono8')):
            out.append({'topic': IMG, 'stamp': stamp(i), 'rgb': rgb})
            out.append({'topic': LAB, 'stamp': stamp(i), 'type': COMPRESSED,
                        'msg': f._Compressed(header=f.header(stamp(i), 'cam'), format=fmt, data=data.reshape(-1))})
    st = run([write_bag(tmp_path / 'png', frames)], spec())
    assert st.counters['frames_scored'] == 3
    s = st.cm.summary(CLASSES)
    assert s['miou_present'] == 1.0 and s['valid_pixels'] == 3 * (48 * 64 - 15)
    events = [e for e in iter_events(tmp_path / 'png', [IMG], [LAB]) if e.topic == LAB]
    assert [e.data.dtype for e in events] == [np.uint8] * 3 and events[0].data[0, 0] == 255
    st = run([write_bag(tmp_path / 'jpg', jpeg_frames)], spec())
    assert st.counters['frames_scored'] == 0
    events = [e for e in iter_events(tmp_path / 'jpg', [IMG], [LAB]) if e.topic == LAB]
    assert {e.error for e in events} == {'label_encoding'} and 'lossy' in events[0].detail
