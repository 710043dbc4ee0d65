"""``--out-bag`` of a sharded run: one output bag per input bag under a folder that appears in one rename.

With a single shard the output is written straight to the given path. Otherwise every shard writes its part
(a rosbag2 directory) into a hidden staging folder next to the destination, on storage every worker sees;
when the run ends the parts of each input bag become one split rosbag2 bag (``<name>/<name>_<k>.mcap`` plus
one ``metadata.yaml``, as ``ros2 bag record --max-bag-duration`` writes them) and the staging folder is
renamed to the destination. A bag with a failed or unfinished slice is published as ``<name>.incomplete``.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from evit_ros.errors import ConfigError
from evit_ros.eval.shards import Shard, ShardPlan, ShardResult

META = 'metadata.yaml'


def _bag_name(bag: str) -> str:
    p = Path(bag.rstrip('/'))
    return p.stem if p.suffix in ('.mcap', '.db3') else p.name


class OutBags:
    """Where each shard writes its masks, and the final publication of the folder."""

    def __init__(self, out: str, plan: ShardPlan) -> None:
        self.out = Path(out) if out else None
        self.plan = plan
        if self.out is not None and (self.out.exists() or self.out.is_symlink()):
            raise ConfigError(f'--out-bag {self.out} already exists; remove it or choose another path')
        self.single = self.out is not None and len(plan.shards) == 1 and not plan.rejected
        if self.out is not None and not self.single and self.out.suffix == '.mcap':
            raise ConfigError(f'--out-bag {self.out} names one MCAP file, but this run has {len(plan.shards)} '
                              'shards (several bags or slices): give a folder name for one bag per input bag')
        bags = {s.bag_index: s.bag for s in plan.shards}
        plain = [_bag_name(b) for b in bags.values()]
        names: dict[int, str] = {}
        for bi, bag in bags.items():   # drive1/bag, drive2/bag -> drive1_bag, drive2_bag
            name = _bag_name(bag)
            if plain.count(name) > 1:
                name = f'{Path(bag.rstrip("/")).parent.name}_{name}'
            if name in names.values():
                name = f'{name}-{bi}'
            names[bi] = name
        self.names = names
        self._issued: set[int] = set()
        self.staging = (self.out.parent / f'.{self.out.name}.partial-{os.getpid()}') if self.out else None

    def part_path(self, shard: Shard) -> str:
        """The output of one attempt of a shard; what an earlier failed attempt left there is removed first."""
        if self.out is None or self.staging is None:
            return ''
        if self.single:
            path = self.out
        else:
            d = self.staging / '.parts' / self.names[shard.bag_index]
            d.mkdir(parents=True, exist_ok=True)
            path = d / f'{self.names[shard.bag_index]}_{shard.part}'
        if shard.index in self._issued and (path.exists() or path.is_symlink()):
            (shutil.rmtree if path.is_dir() else os.unlink)(path)   # ours: the path was free when the run began
        self._issued.add(shard.index)
        return str(path)

    def publish(self, results: Sequence[ShardResult]) -> list[str]:
        """Assemble the parts per input bag and rename the folder into place; returns the bags written."""
        if self.out is None or self.single or self.staging is None:
            return [str(self.out)] if self.out is not None and results else []
        self.staging.mkdir(parents=True, exist_ok=True)
        by_bag: dict[int, list[ShardResult]] = {}
        for r in results:
            by_bag.setdefault(r.shard.bag_index, []).append(r)
        written = []
        for bi, rs in sorted(by_bag.items()):
            rs.sort(key=lambda r: r.shard.part)
            complete = len(rs) == rs[0].shard.parts and not any(r.state.interrupted for r in rs)
            name = self.names[bi] + ('' if complete else '.incomplete')
            _assemble([Path(r.out_part) for r in rs if Path(r.out_part, META).is_file()], self.staging / name)
            written.append(str(self.out / name))
        shutil.rmtree(self.staging / '.parts', ignore_errors=True)
        os.replace(self.staging, self.out)
        return written

    def discard(self) -> None:
        if self.staging is not None and not self.single:
            shutil.rmtree(self.staging, ignore_errors=True)


def _assemble(parts: Sequence[Path], dest: Path) -> None:
    """Move the storage files of rosbag2 ``parts`` (in order) into ``dest`` as one split bag."""
    dest.mkdir(parents=True)
    infos: list[dict[str, Any]] = []
    paths: list[str] = []
    files: list[dict[str, Any]] = []
    for k, d in enumerate(parts):
        info = yaml.safe_load((d / META).read_text())['rosbag2_bagfile_information']
        if info.get('message_count', 0) == 0 and (infos or k < len(parts) - 1):
            continue   # an empty slice adds no file (unless every slice is empty)
        entries = {f['path']: f for f in info.get('files', [])}
        for rel in info['relative_file_paths']:
            new = f'{dest.name.removesuffix(".incomplete")}_{len(paths)}{Path(rel).suffix}'
            os.replace(d / rel, dest / new)
            paths.append(new)
            if rel in entries:
                files.append({**entries[rel], 'path': new})
        infos.append(info)
    if not infos:
        (dest / META).write_text(yaml.safe_dump({'rosbag2_bagfile_information': {}}))
        return
    merged = dict(infos[0])
    starts = [i['starting_time']['nanoseconds_since_epoch'] for i in infos]
    ends = [s + i['duration']['nanoseconds'] for s, i in zip(starts, infos, strict=True)]
    topics: dict[str, dict[str, Any]] = {}
    for i in infos:
        for t in i.get('topics_with_message_count', []):
            name = t['topic_metadata']['name']
            if name in topics:
                topics[name]['message_count'] += t['message_count']
            else:
                topics[name] = {**t}
    merged.update({'relative_file_paths': paths, 'files': files,
                   'message_count': sum(i['message_count'] for i in infos),
                   'starting_time': {'nanoseconds_since_epoch': min(starts)},
                   'duration': {'nanoseconds': max(ends) - min(starts)},
                   'topics_with_message_count': list(topics.values())})
    (dest / META).write_text(yaml.safe_dump({'rosbag2_bagfile_information': merged}, sort_keys=False))
