"""``evit-ros bench`` runs the real pipeline and writes the documented JSON."""
from __future__ import annotations

import json

from evit_ros.cli.main import main


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / 'bench.json'
    rc = main(['bench', '--model', 'efficientvit-seg-b0-cityscapes', '--backend', 'onnxruntime,torch-eager-host',
               '--height', '64', '--width', '128', '--camera-size', '96x160', '--iters', '3', '--warmup', '1',
               '--threads', '1', '--json', str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert 'onnxruntime' in text and 'torch-eager-host' in text and 'p50 latency relative to onnxruntime' in text
    doc = json.loads(out.read_text())
    assert [r['backend'] for r in doc['runs']] == ['onnxruntime', 'torch-eager-host']
    for r in doc['runs']:
        assert {'backend', 'model', 'height', 'width', 'batch', 'latency_ms', 'stages_ms', 'fps', 'rss_mb'} <= set(r)
        assert set(r['latency_ms']) >= {'p50', 'p90', 'p99', 'max'}
        assert set(r['stages_ms']) == {'preprocess', 'infer', 'postprocess', 'total'}
        assert r['height'] == 64 and r['width'] == 128 and r['camera_height'] == 96 and r['batch'] == 1
        assert 0 < r['latency_ms']['p50'] <= r['latency_ms']['max'] and r['fps'] > 0 and r['rss_mb'] > 50
        assert r['stages_ms']['infer']['count'] == 3
    assert doc['p50_relative_to_first']['onnxruntime'] == 1.0


def test_bench_batches_cameras_and_rejects_bad_arguments(tmp_path, capsys) -> None:
    out = tmp_path / 'b.json'
    assert main(['bench', '--backend', 'torch', '--height', '64', '--width', '64', '--batch', '2', '--iters', '2',
                 '--warmup', '0', '--json', str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc['batch'] == 2 and doc['resolved_backend'] == 'torch'
    assert main(['bench', '--backend', 'tpu', '--height', '64', '--width', '64']) != 0
    assert '--backend' in capsys.readouterr().err


def test_bench_stages_mode(tmp_path) -> None:
    out = tmp_path / 's.json'
    assert main(['bench', '--stages', '--height', '64', '--width', '128', '--camera-size', '128x256', '--iters', '2',
                 '--json', str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc['frame_hw'] == [128, 256] and doc['model_hw'] == [64, 128] and 'total' in doc['stages_ms']


def test_bench_rss_is_per_backend_not_the_process_peak(tmp_path) -> None:
    """A 1.5 GB allocation freed before the run must not show up in the backend's peak RSS."""
    import numpy as np

    from evit_ros.bench.backends import peak_rss_mb, run_benchmark
    from evit_ros.config import InputConfig, ModelConfig
    ballast = np.ones(1536 * 2**20 // 8)
    ballast_mb = ballast.nbytes / 2**20
    del ballast
    process_peak = peak_rss_mb()            # includes the ballast (the kernel resets this counter for the run)
    assert process_peak > ballast_mb
    rep = run_benchmark(backend='onnxruntime', model=ModelConfig(), input_cfg=InputConfig(height=64, width=128),
                        camera_hw=(64, 128), iters=2, warmup=1, threads=1)
    assert rep['rss_scope'] == 'peak while this backend loaded and ran'
    assert rep['rss_mb'] >= rep['rss_before_mb'] > 0 and rep['rss_added_mb'] >= 0
    assert process_peak - rep['rss_mb'] > ballast_mb / 2, (process_peak, rep)
