"""Client connections for the load generators, spread evenly over ``serve --workers N``.

The worker processes of ``explorank serve --workers N`` share one port (``SO_REUSEPORT``):
the kernel hands each new *connection* to one of them, and every call on that connection
goes to the same worker. A load generator on one gRPC channel therefore measures one
worker, however many there are; on a handful of connections the hash leaves the workers
unevenly loaded by chance. :func:`open_connections` opens connections of their own (a local
subchannel pool: one TCP connection per channel), asks each with ``GetInfo`` which worker
answered (``worker_index`` / ``worker_count``) and keeps the same number on every worker.
Calls that go round-robin over :attr:`Connections.channels` (ordered worker 0, 1, …, 0,
1, …) load the workers equally.

A server that does not report workers (an older explorank, the torch peer) counts as one
worker; its connections are used as they come.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Connections", "open_connections"]

#: gRPC channel option: a subchannel (TCP connection) per channel instead of one shared by
#: every channel of the process to the same address.
LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)


@dataclass
class Connections:
    """Open channels, interleaved by worker (round-robin over them spreads calls evenly)."""

    channels: list[Any]
    #: worker index -> channels kept on it
    per_worker: dict[int, int] = field(default_factory=dict)
    #: workers the server reports (1 when it reports none)
    workers: int = 1
    #: connections opened in all (those that reached a worker already served were closed)
    opened: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "connections": len(self.channels),
            "workers": self.workers,
            "per_worker": {str(k): v for k, v in sorted(self.per_worker.items())},
            "opened": self.opened,
        }

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


async def _worker_of(channel: Any, timeout_s: float) -> tuple[int, int]:
    """(worker index, worker count) of the process behind ``channel``; (0, 1) when the server
    does not say."""
    import grpc

    from explorank.v1 import ranker_pb2, ranker_pb2_grpc

    try:
        info = await ranker_pb2_grpc.RankerStub(channel).GetInfo(
            ranker_pb2.GetInfoRequest(), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED):
            return 0, 1
        raise
    count = max(1, int(info.worker_count))
    index = int(info.worker_index)
    return (index, count) if index < count else (0, 1)


async def open_connections(
    address: str,
    count: int,
    *,
    timeout_s: float = 10.0,
    max_tries: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Connections:
    """Open about ``count`` connections to ``address``, the same number on every worker
    (``ceil(count / workers)`` each). Gives up balancing after ``max_tries`` connections
    (default ``20 * count``), keeping what it has, and says so through ``progress``."""
    import grpc

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    tries = max_tries if max_tries is not None else 20 * count
    by_worker: dict[int, list[Any]] = {}
    workers: int | None = None
    want = count
    opened = 0
    while opened < tries:
        channel = grpc.aio.insecure_channel(address, options=[LOCAL_POOL])
        opened += 1
        try:
            index, reported = await _worker_of(channel, timeout_s)
        except BaseException:
            await channel.close()
            for kept in by_worker.values():
                for ch in kept:
                    await ch.close()
            raise
        if workers is None:
            workers = reported
            want = math.ceil(count / workers)
        kept = by_worker.setdefault(index, [])
        if len(kept) < want:
            kept.append(channel)
        else:
            await channel.close()
        if len(by_worker) == workers and all(len(v) >= want for v in by_worker.values()):
            break
    else:
        if progress is not None:
            spread = {k: len(v) for k, v in sorted(by_worker.items())}
            progress(
                f"connections: after {opened} tries the workers hold {spread} of {want} each "
                f"({workers} workers); measuring with an uneven spread"
            )
    # interleave: worker 0, 1, ..., 0, 1, ... so that round-robin calls alternate workers
    lists = [by_worker[k] for k in sorted(by_worker)]
    channels = [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]
    return Connections(
        channels=channels,
        per_worker={k: len(v) for k, v in by_worker.items()},
        workers=workers or 1,
        opened=opened,
    )
