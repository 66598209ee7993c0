"""What every panel handler reads and changes, built once per app.

The panel keeps no copy of the truth: queue.json is read through the worker's own
store, without its lock (parsed again only when replaced), and the logs are followed
incrementally, in the background and, a block at a time, by the requests themselves:
the audit trails by byte offset, the events through their source (store.events), the
workspace's log or, with a database, every host's rows.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from pydantic import BaseModel

from swarm_runtime.contract import QueueDocument
from swarm_runtime.errors import StateFileError, StoreUnavailable
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.panel.audit import SafetyBlocks, SpendSeries
from swarm_runtime.panel.errors import refusal
from swarm_runtime.panel.guards import SecretScrubber
from swarm_runtime.panel.log_tail import READ_BLOCK_BYTES, JsonlFold
from swarm_runtime.panel.probe import ApiProbe
from swarm_runtime.phases import quality_gate
from swarm_runtime.phases.rewards import Balances, RewardLedger, parse_state
from swarm_runtime.phases.vouched import workspace_appliers
from swarm_runtime.queue.fleet import Placement, read_placement
from swarm_runtime.queue.select import store_for
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import SharedDocument, documents_for
from swarm_runtime.store.event_source import EventSource, Outage
from swarm_runtime.store.events import event_source
from swarm_runtime.store.state_files import Workspace

log = logging.getLogger("control_panel")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

INDEX_INTERVAL_SECONDS = 0.2
# A request reads at most this much of a log itself; the background follower does the rest.
REQUEST_INDEX_BYTES = 1024 * 1024
MAX_STREAMS = 16


class FileCache(Generic[T]):
    """A parsed state file, parsed again only once its version changed.

    State files are replaced atomically, so (inode, mtime, size) names a version; the
    queue's version also covers its journal. With 10,000 tasks in queue.json this keeps
    a page view from validating them all again."""

    def __init__(self, version: Callable[[], Hashable], parse: Callable[[], T]):
        self._current_version = version
        self._parse = parse
        self._lock = threading.Lock()
        self._version: Hashable = None
        self._value: T | None = None

    def get(self) -> T:
        version = self._current_version()
        with self._lock:
            if self._value is None or version != self._version:
                self._value, self._version = self._parse(), version
            return self._value


def state_cache(document: SharedDocument, model: type[M]) -> FileCache[M]:
    return FileCache(
        document.version, lambda: parse_state(model, document.read(dict), document.path)
    )


class StreamSlots:
    """At most `capacity` live streams. When every slot is taken, a new stream ends the
    oldest one instead of being turned away, so nobody can hold the panel's streams by
    opening them first and keeping them: the newest `capacity` clients are served, and an
    ended browser reconnects by itself."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._open: dict[int, threading.Event] = {}
        self._next_id = 0

    def open(self) -> tuple[int, threading.Event]:
        """A slot id and the event that, once set, asks its stream to end."""
        with self._lock:
            if len(self._open) >= self.capacity:
                oldest = next(iter(self._open))
                self._open.pop(oldest).set()
            self._next_id += 1
            ended = self._open[self._next_id] = threading.Event()
            return self._next_id, ended

    def close(self, slot: int) -> None:
        with self._lock:
            self._open.pop(slot, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


class Panel:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.workspace = ws = Workspace(settings.workspace)
        ws.ensure_layout()
        self.store = store_for(settings, ws, appliers=workspace_appliers(ws))
        self.documents = documents_for(settings, ws)
        self.csrf_token = secrets.token_urlsafe(32)
        self.scrub = SecretScrubber(settings, ws)
        self.stop = threading.Event()
        self.streams = StreamSlots(MAX_STREAMS)
        self.probe = ApiProbe()
        self.budget = BudgetLedger(ws, settings.budget_limit, self.documents.budget)
        self.index = event_source(ws, self.documents.database)
        self.outage = Outage()
        self.spend = SpendSeries()
        self.safety = SafetyBlocks()
        self.spend_log = JsonlFold(ws.api_audit_path, self.spend.add, self.spend.forget)
        self.safety_log = JsonlFold(ws.safety_audit_path, self.safety.add, self.safety.forget)
        self.queue = FileCache(self.store.version, self.store.load)
        shared = self.documents
        self.gate = FileCache(
            shared.quality_gate.version, lambda: quality_gate.load(shared.quality_gate)
        )
        self.grants = state_cache(shared.reward_ledger, RewardLedger)
        self.balances = state_cache(shared.balances, Balances)

    @property
    def followers(self) -> tuple[EventSource | JsonlFold, ...]:
        return self.index, self.spend_log, self.safety_log

    def follow(self) -> None:
        """Keep every log indexed until `stop`: the background half of incremental reading.

        Each step holds a follower's lock for one block only, so requests interleave
        with the first indexing of a large log instead of waiting for all of it."""
        while not self.stop.is_set():
            for follower in self.followers:
                while self._refresh(follower, READ_BLOCK_BYTES) and not self.stop.is_set():
                    pass
            self.stop.wait(INDEX_INTERVAL_SECONDS)

    def catch_up(self, follower: EventSource | JsonlFold | None = None) -> None:
        """Read what was appended since the last look, so an answer is never stale."""
        self._refresh(follower or self.index, REQUEST_INDEX_BYTES)

    def _refresh(self, follower: EventSource | JsonlFold, budget: int) -> int:
        """A database that is away leaves the summaries as they were last read: the
        header says the store is unreachable, and reading goes on once it is back."""
        try:
            read = follower.refresh(budget)
        except StoreUnavailable as exc:
            if self.outage.began(exc):
                log.warning("events not read while the database is away: %s", exc)
            return 0
        if follower is self.index and self.outage.ended():  # the others read files
            log.info("the database is back: reading events again")
        return read

    def close(self) -> None:
        self.stop.set()
        for follower in self.followers:
            follower.close()
        self.store.close()
        self.documents.close()

    def placement(self, now: float) -> Placement:
        """Every host's live workers and the pause: what says where a task may run now."""
        documents = self.documents
        return read_placement(self.workspace, documents.database, documents.pause, now)

    def load_queue(self) -> QueueDocument:
        """queue.json, or a 503 naming it when it cannot be used (it is never rewritten)."""
        try:
            return self.queue.get()
        except (StateFileError, StoreUnavailable) as exc:
            raise refusal(exc, self.workspace) from None
