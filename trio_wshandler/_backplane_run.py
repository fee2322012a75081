"""How a backplane runs: its Redis clients, one runner per lane, and, on a Redis Cluster, the
watch over which master serves each partition.

With one Redis there is one lane and one client, for as long as the backplane runs.  On a
cluster each lane talks to the master that owns its partition's slot (lanes whose partitions
share a master share its client).  Every ``heartbeat`` the watch reads the slot map
(``CLUSTER SHARDS``, from the first known node that answers); when a partition's slot has a
new master (its old one failed and a replica took over, or the slot was moved) the lane is
*relocated*: its tasks are cancelled (what was in flight or queued is counted lost), and new
ones start on the new master's client, down, until their heartbeat finds it: the presence is
written again, the subscriptions restored, the topics with history checked, as after a
Redis restart.  A partition whose shard is lost whole stays down; the others carry on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ._backplane_core import BackplaneCore, BackplaneOptions
from ._backplane_lane import Lane
from ._backplane_pipeline import Pipelines
from ._backplane_subscription import SharedSubscription
from ._backplane_tasks import LaneTasks
from ._backplane_wire import text
from ._cluster_slots import key_slot
from ._presence import redis_errors

__all__ = ["Address", "BackplaneRun", "Link", "masters_by_partition"]

#: (host, port) of one Redis; None: the URL's (one Redis)
Address = tuple[str, int] | None


def masters_by_partition(shards: Any, tags: Sequence[str], tls: bool = False) -> list[Address]:
    """The master serving each partition's tag, from coredis's ``cluster_shards()`` reply
    (``CLUSTER SHARDS``: per shard, its ``slots`` as a flat list of inclusive ranges, and its
    ``nodes``); None where no healthy master serves it (a shard lost whole).  ``tls``: the
    nodes' ``tls-port`` (a TLS-only node has no ``port``)."""
    ranges: list[tuple[int, int, Address]] = []
    for shard in shards:
        shard = {text(k): v for k, v in shard.items()}
        master: Address = None
        for node in shard.get("nodes", ()):
            node = {text(k): v for k, v in node.items()}
            port = node.get("tls-port") if tls else None
            port = port or node.get("port")
            healthy = text(node.get("health", "")) != "fail"
            if text(node.get("role", "")) == "master" and healthy and port:
                master = (text(node.get("endpoint") or node.get("ip")), int(port))
        slots = shard.get("slots", [])
        for i in range(0, len(slots) - 1, 2):
            ranges.append((int(slots[i]), int(slots[i + 1]), master))
    found: list[Address] = []
    for tag in tags:
        slot = key_slot(tag)
        found.append(next((m for first, last, m in ranges if first <= slot <= last), None))
    return found


@attrs.frozen
class Link:
    """One Redis's client, and the pipelines and the subscription its lanes share."""

    client: Any
    pipelines: Pipelines
    subscription: SharedSubscription


class BackplaneRun:
    """The running parts of one backplane (see the module's docstring)."""

    def __init__(
        self,
        options: BackplaneOptions,
        core: BackplaneCore,
        new_client: Callable[[Address], Any],
        startup: Sequence[Address],
        tls: bool = False,
    ) -> None:
        self.options = options
        self.core = core
        self.new_client = new_client
        self.cluster = bool(core.names.tags)
        self.startup = list(startup)
        self.known: list[Address] = list(startup)  # nodes to ask for the slot map
        self.tls = tls
        self.errors = redis_errors()
        self.runners: list[LaneRunner] = []
        self._links: dict[Address, Link] = {}
        self._opening: dict[Address, trio.Event] = {}
        self._holders: trio.Nursery | None = None
        self._holding: list[trio.CancelScope] = []

    async def link(self, address: Address) -> Link:
        """The client of ``address`` and its pipelines (opened on first use, closed when the
        backplane stops)."""
        opening = self._opening.get(address)
        if opening is not None:  # another lane is opening it: the same client for both
            await opening.wait()
        link = self._links.get(address)
        if link is None:
            assert self._holders is not None
            self._opening[address] = opening = trio.Event()
            try:
                link = await self._holders.start(self._hold, address)
            finally:
                del self._opening[address]
                opening.set()
        return link

    async def _hold(self, address: Address, task_status: trio.TaskStatus[Link]) -> None:
        """Keep one client open, in a task of its own (coredis enters and leaves a client in
        the same task), sending its pipelines; shielded, so that the lanes can still use it
        while they stop."""
        with trio.CancelScope(shield=True) as scope:
            self._holding.append(scope)
            async with self.new_client(address) as client:
                timeout = self.options.command_timeout
                pipelines = Pipelines(client, timeout, self.errors)
                shared = SharedSubscription(client, self.cluster, timeout, self.errors)
                link = self._links[address] = Link(client, pipelines, shared)
                task_status.started(link)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pipelines.run)
                    nursery.start_soon(shared.run)

    def client_of(self, lane: Lane) -> Any:
        """The client ``lane`` uses now.

        :raises LookupError: the backplane is not running.
        """
        if not self.runners:
            raise LookupError("not running")
        link = self.runners[lane.partition].link
        if link is None:
            raise LookupError("not running")
        return link.client

    async def masters(self) -> list[Address]:
        """Each partition's master now, from the first known node that answers (one Redis:
        its URL's, always).

        :raises trio.TooSlowError: no known node answered.
        """
        if not self.cluster:
            return [None]
        tags = self.core.names.tags
        for address in list(self.known):
            with trio.move_on_after(self.options.command_timeout):
                try:
                    shards = await (await self.link(address)).client.cluster_shards()
                except self.errors:
                    continue
                found = masters_by_partition(shards, tags, self.tls)
                # next time: this node first, then the masters of now, then the startup nodes
                known = [address, *(m for m in found if m is not None), *self.startup]
                self.known = list(dict.fromkeys(known))
                return found
        raise trio.TooSlowError("no node of the cluster answered CLUSTER SHARDS")

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as holders:
            self._holders = holders
            try:
                masters = await self.masters()
                async with trio.open_nursery() as nursery:
                    for lane, address in zip(self.core.lanes, masters, strict=True):
                        runner = LaneRunner(self, lane, address)
                        self.runners.append(runner)
                        await nursery.start(runner.run)
                    if self.core.hub is not None and self.core.hub.shared is not None:
                        nursery.start_soon(self.core.hub.shared.run_repairs)
                    if self.cluster:
                        nursery.start_soon(self._watch)
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:
                        with trio.CancelScope(shield=True) as scope:
                            scope.deadline = trio.current_time() + 1.0
                            for runner in self.runners:
                                await runner.withdraw()
                            self.core.mark_down()  # nothing more is queued
                            for link in list(self._links.values()):
                                await link.pipelines.close()
                                await link.subscription.close()
            finally:
                self.runners = []
                self._links.clear()
                for scope in self._holding:
                    scope.cancel()

    async def _watch(self) -> None:
        """Relocate the lanes whose partition has a new master."""
        options = self.options
        while True:
            await trio.sleep(options.heartbeat)
            try:
                masters = await self.masters()
            except self.errors:  # TooSlowError among them
                continue
            for runner, master in zip(self.runners, masters, strict=True):
                if master is not None and master != runner.address:
                    runner.relocate(master)


class LaneRunner:
    """Runs one lane's tasks, again on another master when it is relocated."""

    def __init__(self, run: BackplaneRun, lane: Lane, address: Address) -> None:
        self.owner = run
        self.lane = lane
        self.address = address
        self.link: Link | None = None
        self.tasks: LaneTasks | None = None
        self._scope: trio.CancelScope | None = None

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        owner, lane = self.owner, self.lane
        fresh = True
        while True:
            address = self.address
            lane.address = "" if address is None else f"{address[0]}:{address[1]}"
            try:
                self.link = await owner.link(address)
            except owner.errors:
                if fresh:
                    raise
                await trio.sleep(owner.options.reconnect_max)
                continue
            with trio.CancelScope() as self._scope:
                link = self.link
                self.tasks = LaneTasks(
                    owner.options, owner.core, lane, link.client, link.pipelines, link.subscription
                )
                await self.tasks.run(fresh, task_status)
                await trio.sleep_forever()
            fresh = False
            task_status = trio.TASK_STATUS_IGNORED

    def relocate(self, address: Address) -> None:
        """The lane's partition has a new master: start again there."""
        old, self.address = self.lane.address, address
        tasks = self.tasks
        if tasks is not None:
            tasks.relocated(f"partition {self.lane.partition} moved from {old}")
        if self._scope is not None:
            self._scope.cancel()

    async def withdraw(self) -> None:
        if self.tasks is not None:
            self.tasks.stopping = True
            await self.tasks.presence.withdraw()
