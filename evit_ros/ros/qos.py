"""Input QoS that follows the camera: ``qos.input_reliability: auto``.

Like ``ros2 bag record`` and ``ros2 topic echo``, an auto subscription looks at the QoS the publishers on
its topic offer and subscribes ``reliable`` when every publisher offers reliable, ``best_effort``
otherwise (a best-effort subscription matches both, a reliable one only reliable publishers). Why it
matters: Fast DDS moves best-effort samples through a 512 KiB shared-memory segment by default, so a
best-effort subscription to a reliable camera of large raw frames loses most of them; a reliable one
gets every frame.

The decision is made when the first publisher is discovered and re-made whenever the set of publishers
changes; the subscription is recreated (one log line) only when the decision changes. Until a
publisher exists nothing is subscribed (there is nothing to receive). Fixed ``best_effort`` and
``reliable`` subscribe at once and never change.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY_POLICIES = {'best_effort': ReliabilityPolicy.BEST_EFFORT, 'reliable': ReliabilityPolicy.RELIABLE}


def qos_profile(reliability: str, depth: int, transient_local: bool = False) -> QoSProfile:
    """KEEP_LAST ``depth`` with ``reliability`` ('best_effort' or 'reliable'); volatile unless ``transient_local``."""
    durability = DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=RELIABILITY_POLICIES[reliability], durability=durability)


def offered_reliability(info: Any) -> str:
    """'reliable' or 'best_effort' offered by one publisher (``TopicEndpointInfo``)."""
    return 'reliable' if info.qos_profile.reliability == ReliabilityPolicy.RELIABLE else 'best_effort'


def offers_transient_local(info: Any) -> bool:
    return bool(info.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL)


def decide_reliability(offered: Iterable[str]) -> str | None:
    """reliable when every publisher offers reliable, best_effort when any does not, None without publishers."""
    offered = list(offered)
    if not offered:
        return None
    return 'reliable' if all(o == 'reliable' for o in offered) else 'best_effort'


class InputSubscription:
    """One camera-side subscription (Image, CompressedImage or CameraInfo) with fixed or automatic reliability.

    ``poll()`` (called from a steady timer for ``auto``) re-reads the publishers of the topic and recreates
    the subscription when the decided reliability changes. ``reliability`` is the current one ('' before
    the first publisher is discovered in auto mode).
    """

    def __init__(self, node: Any, msg_type: Any, topic: str, callback: Callable[[Any], None], mode: str,
                 depth: int, event_callbacks: Any = None, on_change: Callable[[str], None] | None = None) -> None:
        self.node = node
        self.msg_type = msg_type
        self.topic = topic
        self.callback = callback
        self.mode = mode
        self.depth = int(depth)
        self.event_callbacks = event_callbacks
        self.on_change = on_change
        self.reliability = ''
        self.transient_local = False
        self.subscription: Any = None
        self.publishers: frozenset[tuple[Any, str, bool]] = frozenset()
        if mode != 'auto':
            self._subscribe(mode)

    def _subscribe(self, reliability: str, transient_local: bool = False) -> None:
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
            self.subscription = None
        kwargs = {'event_callbacks': self.event_callbacks} if self.event_callbacks is not None else {}
        self.subscription = self.node.create_subscription(
            self.msg_type, self.topic, self.callback, qos_profile(reliability, self.depth, transient_local), **kwargs)
        self.reliability = reliability
        self.transient_local = transient_local

    def poll(self) -> bool:
        """Re-decide from the current publishers (auto mode); True when the subscription was (re)created."""
        if self.mode != 'auto':
            return False
        infos = self.node.get_publishers_info_by_topic(self.topic)
        current = frozenset((tuple(i.endpoint_gid), offered_reliability(i), offers_transient_local(i))
                            for i in infos)
        if current == self.publishers:
            return False
        self.publishers = current
        decided = decide_reliability(r for _, r, _ in current)
        # transient local (latched, e.g. CameraInfo) only when every publisher keeps its last sample
        latched = bool(current) and all(t for _, _, t in current)
        if decided is None or (decided, latched) == (self.reliability, self.transient_local):
            return False
        before = self.reliability
        self._subscribe(decided, latched)
        if self.on_change is not None:
            n_rel = sum(1 for _, r, _ in current if r == 'reliable')
            offered = f'{n_rel} of {len(current)} publisher(s) offer reliable'
            self.on_change(f'{self.topic}: {offered} -> subscribing {decided}'
                           + (', transient local' if latched else '') + (f' (was {before})' if before else ''))
        return True

    def close(self) -> None:
        if self.subscription is not None:
            try:
                self.node.destroy_subscription(self.subscription)
            except Exception:  # noqa: BLE001 - the node may be gone already
                pass
            self.subscription = None


__all__ = ['InputSubscription', 'RELIABILITY_POLICIES', 'decide_reliability', 'offered_reliability', 'qos_profile']
