"""Input QoS that follows the camera: ``qos.input_reliability: auto``.

Like ``ros2 bag record`` and ``ros2 topic echo``, an auto subscription looks at the QoS the publishers on
its topic offer and subscribes ``reliable`` when every publisher offers reliable, ``best_effort``
otherwise (a best-effort subscription matches both, a reliable one only reliable publishers). Why it
matters: Fast DDS moves best-effort samples through a 512 KiB shared-memory segment by default, so a
best-effort subscription to a reliable camera of large raw frames loses most of them; a reliable one
gets every frame.

The decision is made when the first publisher is discovered and re-made whenever the set of publishers
changes; the subscription is recreated (one log line) only when the decision changes. Until a publisher
exists the topic is subscribed ``reliable`` (:data:`AUTO_INITIAL`, what most camera drivers offer), so such a
camera that starts after the node is matched by discovery alone and loses no first frames to the decision
(a best-effort first subscription would match every camera, but lose a reliable camera's large frames until
the decision: Fast DDS drops best-effort samples over its shared-memory segment); a best-effort camera is
matched by the decision, within :data:`~evit_ros.ros.node.QOS_POLL_S`. A re-decision makes the new
subscription before it breaks the old one: the old one keeps delivering until the new one has delivered its
first message (a message both deliver is passed on once), so frames in flight are not lost either. Fixed
``best_effort`` and ``reliable`` subscribe at once and never change.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy

RELIABILITY_POLICIES = {'best_effort': ReliabilityPolicy.BEST_EFFORT, 'reliable': ReliabilityPolicy.RELIABLE}
AUTO_INITIAL = 'reliable'      # auto before any publisher is seen: what most cameras offer, large frames kept
HANDOVER_MAX_S = 2.0           # the old subscription of a re-decision goes at the latest after this long


def policy_name(kind: Any) -> str:
    """'RELIABILITY', 'DURABILITY', ... for an incompatible-QoS event's ``last_policy_kind``."""
    try:
        return QoSPolicyKind(int(kind)).name
    except (ValueError, TypeError):
        return str(kind)


def describe_offer(info: Any) -> str:
    """One publisher's offered profile, for debug lines: 'reliable, volatile' (and the history where discovery
    conveys it, which DDS does not)."""
    q = info.qos_profile
    history = getattr(q.history, 'name', str(q.history)).lower()
    kept = {'keep_last': f', keep_last {q.depth}', 'keep_all': ', keep_all'}.get(history, '')
    return f'{offered_reliability(info)}, {"transient_local" if offers_transient_local(info) else "volatile"}{kept}'



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
    the subscription when the decided reliability changes. ``reliability`` is the current one (auto:
    :data:`AUTO_INITIAL` until the first publisher is discovered and ``decided`` becomes true).
    """

    def __init__(self, node: Any, msg_type: Any, topic: str, callback: Callable[[Any], None], mode: str,
                 depth: int, event_callbacks: Any = None, on_change: Callable[[str], None] | None = None,
                 debug: Callable[[str], None] | None = None) -> None:
        self.node = node
        self.msg_type = msg_type
        self.topic = topic
        self.callback = callback
        self.mode = mode
        self.depth = int(depth)
        self.event_callbacks = event_callbacks
        self.on_change = on_change
        self.debug = debug
        self.reliability = ''
        self.transient_local = False
        self.decided = mode != 'auto'    # auto: False until the first publisher decided the profile
        self.subscription: Any = None
        self.publishers: frozenset[tuple[Any, str, bool]] = frozenset()
        self._generation = 0
        self._retiring: Any = None       # the previous subscription during a handover
        self._handover_since = 0.0
        self._new_delivered = True       # the current subscription has delivered since the last handover
        self._last_key: Any = None       # header of the last message the retiring subscription passed on
        self._subscribe(mode if mode != 'auto' else AUTO_INITIAL)

    def _subscribe(self, reliability: str, transient_local: bool = False) -> None:
        """(Re)subscribe; an existing subscription is kept, delivering, until the new one delivers."""
        old = self.subscription
        self._generation += 1
        kwargs = {'event_callbacks': self.event_callbacks} if self.event_callbacks is not None else {}
        self.subscription = self.node.create_subscription(
            self.msg_type, self.topic, self._deliver(self._generation),
            qos_profile(reliability, self.depth, transient_local), **kwargs)
        if old is not None:
            self._drop_retiring()
            self._retiring, self._handover_since, self._new_delivered = old, time.monotonic(), False
        self.reliability = reliability
        self.transient_local = transient_local

    def _deliver(self, generation: int) -> Callable[[Any], None]:
        """The subscription callback of one generation (all run on the node's one executor thread)."""
        def deliver(msg: Any) -> None:
            if generation != self._generation:   # retiring: only until the new subscription delivers
                if not self._new_delivered:
                    self._last_key = _header_key(msg)
                    self.callback(msg)
                return
            if not self._new_delivered:          # a handover (the key is read only then, not every frame)
                self._new_delivered = True
                key = _header_key(msg)
                if key is not None and key == self._last_key:
                    return    # the retiring subscription passed this message on already
            self.callback(msg)
        return deliver

    def _drop_retiring(self) -> None:
        self._destroy(self._retiring)
        self._retiring = None

    def poll(self) -> bool:
        """Re-decide from the current publishers (auto mode); True when the subscription was (re)created."""
        if self.mode != 'auto':
            return False
        if self._retiring is not None and (self._new_delivered
                                           or time.monotonic() - self._handover_since > HANDOVER_MAX_S):
            self._drop_retiring()
        infos = self.node.get_publishers_info_by_topic(self.topic)
        current = frozenset((tuple(i.endpoint_gid), offered_reliability(i), offers_transient_local(i))
                            for i in infos)
        if current == self.publishers:
            return False
        self.publishers = current
        if self.debug is not None:
            offers = '; '.join(describe_offer(i) for i in infos) or 'none'
            self.debug(f'{self.topic}: publishers changed, {len(infos)} offer(s): {offers}; subscribed '
                       f'{self.reliability}' + (', transient local' if self.transient_local else '')
                       + ('' if self.decided else ' (auto, not decided yet)'))
        decided = decide_reliability(r for _, r, _ in current)
        # transient local (latched, e.g. CameraInfo) only when every publisher keeps its last sample
        latched = bool(current) and all(t for _, _, t in current)
        if decided is None:
            return False
        was_decided, self.decided = self.decided, True
        unchanged = (decided, latched) == (self.reliability, self.transient_local)
        if unchanged and was_decided:
            return False
        before = self.reliability if was_decided else ''
        if not unchanged:
            self._subscribe(decided, latched)
        if self.on_change is not None:
            n_rel = sum(1 for _, r, _ in current if r == 'reliable')
            offered = f'{n_rel} of {len(current)} publisher(s) offer reliable'
            self.on_change(f'{self.topic}: {offered} -> {"keeping" if unchanged else "subscribing"} {decided}'
                           + (', transient local' if latched else '') + (f' (was {before})' if before else ''))
        return not unchanged

    def close(self) -> None:
        self._drop_retiring()
        self._destroy(self.subscription)
        self.subscription = None

    def _destroy(self, subscription: Any) -> None:
        if subscription is not None:
            try:
                self.node.destroy_subscription(subscription)
            except Exception:  # noqa: BLE001 - the node may be gone already
                pass


def _header_key(msg: Any) -> Any:
    """(stamp, frame_id) of a message with a header, else None: the same message through two subscriptions."""
    header = getattr(msg, 'header', None)
    if header is None:
        return None
    return header.stamp.sec, header.stamp.nanosec, header.frame_id


__all__ = ['AUTO_INITIAL', 'InputSubscription', 'RELIABILITY_POLICIES', 'decide_reliability', 'describe_offer',
           'offered_reliability', 'policy_name', 'qos_profile']
