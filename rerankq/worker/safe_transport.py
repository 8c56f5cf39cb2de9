"""kombu's Redis transport, made to survive messages it cannot read and to hold every message it
takes under this worker's name.

Unreadable messages: kombu decodes every message it pops with ``json.loads`` and lets the error
escape, and Celery calls that unrecoverable: one garbage ``LPUSH`` on a rerankq queue would stop
every worker that consumes it. Here the message (already taken) is recorded as rejected with the
reason, and the worker goes on serving.

Held messages: instead of kombu's BRPOP (which leaves a message in no one's hands until the
worker records it, and records no owner at all), the worker takes a message with
``recovery.claim`` (pop and record, atomically, under its name) and, while its lanes are empty,
waits with ``BLMOVE q q RIGHT RIGHT``: it blocks until the most urgent lane holds a message and
then leaves that list exactly as it was, so the wait takes nothing. Less urgent lanes are looked
at each time a wait ends (at most a quarter second apart). Acks go through
``recovery.acknowledge``, which refuses to drop a message this worker no longer holds. See
rerankq.worker.recovery for why kombu cannot do this itself.

The worker's Celery app selects these classes (``broker_transport``); producers never consume, so
they keep kombu's own.
"""

from __future__ import annotations

import json
import logging
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from rerankq.core.constants import lane_order, queue_keys, queue_of_list
from rerankq.core.redis_clients import is_sentinel
from rerankq.worker.recovery import acknowledge, claim, release, restore_worker
from rerankq.worker.rejections import record_rejection

log = logging.getLogger("rerankq.worker")

# What a message that is not a kombu envelope raises on its way in (json.loads, then the
# envelope's fields read by kombu's _deliver).
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)

# The worker id messages are held under (the worker sets it before it consumes; None: kombu's
# own BRPOP, for anything else that builds a worker app).
claimant: str | None = None
OTHER_LANES_WAIT_S = 0.25
POLL_WAIT_S = 1.0  # kombu's own BRPOP timeout (the default of its brpop_timeout option)


class ClaimedQoS(kombu_redis.QoS):  # type: ignore[misc]
    """Acks and restores that keep this worker's claims in step (rerankq.worker.recovery)."""

    def ack(self, delivery_tag: str) -> None:
        if claimant is None:
            super().ack(delivery_tag)
            return
        if self._transport_gone():
            # a job that finished after Celery closed its lost connection's channel: kombu would
            # die of an AttributeError here, which Celery calls unrecoverable. The message stays
            # claimed under this worker's name; its next channel gives it back (run twice at worst).
            log.warning(json.dumps({"event": "ack_deferred", "delivery_tag": delivery_tag}))
            virtual.QoS.ack(self, delivery_tag)
            return
        with self.channel.conn_or_acquire() as client:
            if not acknowledge(client, claimant, delivery_tag):
                log.warning(json.dumps({"event": "late_ack", "delivery_tag": delivery_tag}))
        virtual.QoS.ack(self, delivery_tag)  # kombu's in-memory bookkeeping only

    def restore_unacked(self, client: Any = None) -> None:
        """Celery (5.7) may close a lost connection's channel only after ``collect()`` has taken
        the transport away; kombu's restore then dies of an AttributeError that Celery calls
        unrecoverable, and the worker exits. Those messages stay claimed under this worker's name
        instead, and its next channel gives them back (``_ClaimingRead._brpop_start``)."""
        if claimant is not None and self._transport_gone():
            log.warning(json.dumps({"event": "restore_deferred", "messages": len(self._delivered)}))
            self._delivered.clear()
            return
        super().restore_unacked(client)

    def _transport_gone(self) -> bool:
        connection = self.channel.connection
        return connection is None or connection.client is None

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._release(delivery_tag)
        super().reject(delivery_tag, requeue=requeue)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        super().restore_by_tag(tag, client, leftmost)
        self._release(tag, client)

    def _release(self, tag: str, client: Any = None) -> None:
        if claimant is None:
            return
        try:
            with self.channel.conn_or_acquire(client) as connected:
                release(connected, claimant, tag)
        except Exception as e:  # the channel is going away (Redis lost): kombu then restores what it can
            # A claim left behind costs at most a second run of that job (at least once), never a loss.
            log.warning(json.dumps({"event": "claim_not_released", "delivery_tag": tag, "error": str(e)}))


class _ClaimingRead:
    """Replaces kombu's BRPOP poll (``_brpop_start`` / ``_brpop_read``) with claim-then-wait.
    Every private name used here is checked at start-up (rerankq.worker.private_hooks)."""

    QoS = ClaimedQoS
    _claimed: tuple[str, bytes] | None = None
    _sent = "BRPOP"
    _took_back_orphans = False

    def _brpop_start(self, timeout: float | None = None) -> None:
        if claimant is None:
            super()._brpop_start(timeout)  # type: ignore[misc]
            return
        lists = self._lane_lists()
        if not lists:
            return
        if not self._took_back_orphans:
            # What an earlier channel of this worker took and could not give back when it closed
            # (Redis was gone then): held under this live worker's name, no sweeper would take it.
            restore_worker(self.client, claimant, event="orphaned_claims_restored")  # type: ignore[attr-defined]
            self._took_back_orphans = True
        self._claimed = claim(self.client, lists, claimant)  # type: ignore[attr-defined]
        if self._claimed is not None:  # PING's reply wakes the poller, which then delivers it
            command: tuple[Any, ...] = ("PING",)
        else:
            command = ("BLMOVE", lists[0], lists[0], "RIGHT", "RIGHT", self._wait_s(timeout))
        connection = self.client.connection  # type: ignore[attr-defined]
        # kombu's poller reads a reply only while _in_poll names the connection: set it only once
        # the command is ready to go out, or closing the channel waits forever for a reply
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # kombu's health check: when the reply is due
        self._sent = command[0]
        connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        if claimant is None:
            return self._read_unclaimed(**options)
        try:
            try:
                self.client.parse_response(self.client.connection, self._sent, **options)  # type: ignore[attr-defined]
            except self.connection_errors:  # type: ignore[attr-defined]
                self.client.connection.disconnect()  # type: ignore[attr-defined]
                raise
            found, self._claimed = self._claimed or claim(self.client, self._lane_lists(), claimant), None  # type: ignore[attr-defined]
            if found is None:
                raise virtual.Empty()
            return self._deliver_claimed(*found)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]  # idle now: a rotated credential may go out

    def _deliver_claimed(self, source: str, item: bytes) -> bool:
        try:
            self.connection._deliver(json.loads(bytes_to_str(item)), queue_of_list(source))  # type: ignore[attr-defined]
        except UNREADABLE as e:
            record_rejection("unreadable", f"not a kombu JSON message ({type(e).__name__}: {e})")
        return True  # consumed (it was taken), so the poller goes on

    def _read_unclaimed(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        except UNREADABLE as e:
            record_rejection("unreadable", f"not a kombu JSON message ({type(e).__name__}: {e})")
            return True

    def _wait_s(self, timeout: float | None) -> float:
        """How long one wait blocks: the poll timeout, or a quarter second when other lanes are
        looked at only between waits (so a cpu or bulk job waits at most that long)."""
        full = timeout or POLL_WAIT_S
        return float(full) if len(self.active_queues) == 1 else min(float(full), OTHER_LANES_WAIT_S)  # type: ignore[attr-defined]

    def _lane_lists(self) -> list[str]:
        """The lists to take from, most urgent first: every lane's list of a priority step, lanes
        by rerankq's own order (LANE_PRIORITY), then the next step. kombu's own queue cycle is not
        used: before 5.7 it ordered a channel's queues as a set, at random."""
        queues = sorted(self.active_queues, key=lane_order)  # type: ignore[attr-defined]
        return [key for step_keys in zip(*map(queue_keys, queues), strict=True) for key in step_keys]


class Channel(_ClaimingRead, kombu_redis.Channel):  # type: ignore[misc]
    pass


class SentinelChannel(_ClaimingRead, kombu_redis.SentinelChannel):  # type: ignore[misc]
    pass


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


def transport_for(broker_url: str) -> str:
    """The class path of the safe transport for a broker URL's scheme."""
    return f"{__name__}:{'SentinelTransport' if is_sentinel(broker_url) else 'Transport'}"
