"""``explorank serve --workers N``: N serving processes on one port.

One Python process serves the event loop, tokenization and the decisions of every call on
one interpreter; past a point the CPU the encoder does not use is spent waiting for the
GIL. With ``--workers N`` a small supervisor (no model, no engine) starts N ordinary
``explorank serve`` processes that all listen on the same port (``SO_REUSEPORT``: the
kernel spreads new connections across them), each with its own inference session, its own
equal share of the CPUs (affinity, and as many encoder threads), and the same state store:

* ``sqlite`` is opened in shared mode (``state.options.shared``): every worker re-reads
  the statistics and catalog changes every ``state.sync_interval_ms`` and the writers
  never lose each other's sums (:class:`explorank.plugins.builtin.sqlite_schema.StatsCache`);
* ``redis`` is shared anyway.

The supervisor serves ``/metrics`` on the configured port with every worker's metrics
labelled ``worker="<i>"``; each worker's own endpoint is on a private loopback port.
SIGTERM / SIGINT go to every worker (each drains as a single server does) and the
supervisor exits when they have; SIGHUP makes every worker reload its bundle. A worker that
dies unexpectedly is restarted after a backoff; one that cannot start (exit status 2: bad
configuration) stops the whole group with that status.

A worker learns its place from the environment: ``EXPLORANK_WORKER`` (``i/N``) and
``EXPLORANK_WORKER_CPUS`` (the CPUs it is pinned to).

**Borrowing idle cores** (``server.worker_burst``, on by default). Pinned to its share, a
worker that alone has traffic (one client on one connection) would use one core of two while
the other idles. So each worker also holds a second encoder session with a thread per CPU of
the whole group, and runs a batch on it while the group's work is serial — the others idle,
or one client's calls alternating between workers (:class:`PeerActivity` has the rule).
Otherwise it runs on its own share: bursting between the batches of busy siblings would
take their cores. The burst session's threads stop spinning when its batch ends
(``session.force_spinning_stop``), so that they do not hold a core the next worker's batch
needs. The workers see each other's activity through a small shared file
(``EXPLORANK_WORKER_ACTIVITY``; the group's CPUs are in ``EXPLORANK_WORKER_GROUP_CPUS``).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from explorank.errors import ConfigError

__all__ = [
    "WORKER_ACTIVITY_ENV",
    "WORKER_CPUS_ENV",
    "WORKER_ENV",
    "WORKER_GROUP_CPUS_ENV",
    "PeerActivity",
    "Supervisor",
    "WorkerSpec",
    "cpu_shares",
    "merge_metrics",
    "worker_identity",
]

log = logging.getLogger("explorank.workers")

WORKER_ENV = "EXPLORANK_WORKER"
WORKER_CPUS_ENV = "EXPLORANK_WORKER_CPUS"
WORKER_ACTIVITY_ENV = "EXPLORANK_WORKER_ACTIVITY"
WORKER_GROUP_CPUS_ENV = "EXPLORANK_WORKER_GROUP_CPUS"
#: A worker that exits with this status could not start (configuration): no restart.
CONFIG_EXIT = 2


def worker_identity(environ: dict[str, str] | None = None) -> tuple[int, int] | None:
    """``(index, count)`` when this process is a worker of ``serve --workers``."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV, "")
    if not raw:
        return None
    try:
        index, count = (int(x) for x in raw.split("/"))
    except ValueError:
        raise ConfigError(f"{WORKER_ENV}={raw!r}: expected INDEX/COUNT, e.g. 0/2") from None
    if not 0 <= index < count:
        raise ConfigError(f"{WORKER_ENV}={raw!r}: INDEX must be in 0..COUNT-1")
    return index, count


def pin_worker_cpus(environ: dict[str, str] | None = None) -> list[int] | None:
    """Pin this process to ``EXPLORANK_WORKER_CPUS`` (a comma list); returns the CPUs."""
    raw = (os.environ if environ is None else environ).get(WORKER_CPUS_ENV, "")
    if not raw or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = _cpu_list(raw)
    os.sched_setaffinity(0, cpus)
    return cpus


def _cpu_list(raw: str) -> list[int]:
    return [int(c) for c in raw.split(",") if c.strip()]


class PeerActivity:
    """When each worker of a group last ran an encoder batch, shared through a file that
    every worker maps: per worker three doubles, the ``time.monotonic()`` (one clock for the
    whole machine) at which its current batch started, at which its last one ended, and at
    which it last started a batch while another worker was computing one (an *overlap*).

    :meth:`others_idle` is what the burst session asks (module docstring): no other worker
    is computing a batch, and either none ended one within ``quiet_s`` or no two workers'
    batches overlapped within ``quiet_s`` (the group's work is serial: one client whose
    calls alternate between workers). Two workers that both see the other idle at the same
    instant both burst for that batch: the cores are shared for one batch, the overlap is
    recorded, and neither bursts next to the other again for ``quiet_s``."""

    SLOT = 24  # bytes per worker: started, ended, overlapped

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        index: int,
        count: int,
        *,
        quiet_s: float = 1.0,
        stale_s: float = 60.0,
        shared: bytearray | None = None,
    ) -> None:
        if not 0 <= index < count:
            raise ConfigError(f"worker index {index} is not in 0..{count - 1}")
        self.index, self.count = index, count
        self.quiet_s, self.stale_s = float(quiet_s), float(stale_s)
        self._map: mmap.mmap | None = None
        if shared is not None:  # members inside one process (see in_process)
            if len(shared) < count * self.SLOT:
                raise ConfigError(
                    f"{len(shared)} bytes are too small for {count} members' activity"
                )
            self._slots = memoryview(shared).cast("d")
            return
        if path is None:
            raise ConfigError("PeerActivity needs the activity file's path or a shared buffer")
        with open(path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < count * self.SLOT:
                raise ConfigError(f"{path}: {size} bytes, too small for {count} workers' activity")
            self._map = mmap.mmap(fh.fileno(), count * self.SLOT)
        self._slots = memoryview(self._map).cast("d")

    @classmethod
    def in_process(cls, count: int, *, quiet_s: float = 1.0) -> list[PeerActivity]:
        """The same rule among ``count`` threads of one process (the encoder's lanes,
        :meth:`~explorank.engine.backends.ort.OrtBackend.enable_lanes`): one view per
        member over one buffer, all idle."""
        shared = bytearray(count * cls.SLOT)
        return [cls(None, i, count, quiet_s=quiet_s, shared=shared) for i in range(count)]

    @staticmethod
    def create(path: str | os.PathLike[str], count: int) -> None:
        """The file for ``count`` workers, all idle (the supervisor's part)."""
        Path(path).write_bytes(bytes(count * PeerActivity.SLOT))

    def _computing(self, j: int, now: float) -> bool:
        """Worker ``j`` is in a batch (one "computing" for over ``stale_s`` is a worker that
        died in it: not counted)."""
        started = self._slots[3 * j]
        return started > self._slots[3 * j + 1] and now - started < self.stale_s

    def started(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        slots = self._slots
        slots[3 * self.index] = now
        if any(self._computing(j, now) for j in range(self.count) if j != self.index):
            slots[3 * self.index + 2] = now

    def ended(self, now: float | None = None) -> None:
        self._slots[3 * self.index + 1] = time.monotonic() if now is None else now

    def others_idle(self, now: float | None = None) -> bool:
        """True when no other worker computes a batch, and either none ended one or no
        batches overlapped within ``quiet_s``."""
        now = time.monotonic() if now is None else now
        slots, quiet = self._slots, self.quiet_s
        recent_end = False
        for j in range(self.count):
            if j == self.index:
                continue
            if self._computing(j, now):
                return False
            recent_end = recent_end or now - slots[3 * j + 1] < quiet
        if not recent_end:
            return True
        return all(now - slots[3 * j + 2] >= quiet for j in range(self.count))

    def close(self) -> None:
        self._slots.release()
        if self._map is not None:
            self._map.close()


_peers: PeerActivity | None = None
_peers_loaded = False


def peer_activity(environ: dict[str, str] | None = None) -> PeerActivity | None:
    """This worker's view of its group's activity (None outside ``serve --workers N``, or
    when the supervisor did not share one); one per process."""
    global _peers, _peers_loaded
    if environ is None and _peers_loaded:
        return _peers
    env = dict(os.environ) if environ is None else environ
    who = worker_identity(env)
    path = env.get(WORKER_ACTIVITY_ENV, "")
    peers = PeerActivity(path, who[0], who[1]) if who is not None and path else None
    if environ is None:
        _peers, _peers_loaded = peers, True
    return peers


def group_cpus(environ: dict[str, str] | None = None) -> list[int]:
    """The CPUs of the whole group of workers (``EXPLORANK_WORKER_GROUP_CPUS``); empty when
    not a worker."""
    return _cpu_list((os.environ if environ is None else environ).get(WORKER_GROUP_CPUS_ENV, ""))


def cpu_shares(cpus: Sequence[int], workers: int) -> list[list[int]]:
    """Split ``cpus`` into ``workers`` contiguous, equal (±1) shares; with more workers than
    CPUs, each worker gets one CPU, shared round-robin."""
    if workers < 1:
        raise ConfigError(f"server.workers must be >= 1, got {workers}")
    cpus = sorted(cpus)
    if not cpus:
        raise ConfigError("no CPU is available to this process")
    if workers >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(workers)]
    base, extra = divmod(len(cpus), workers)
    out, start = [], 0
    for i in range(workers):
        size = base + (1 if i < extra else 0)
        out.append(cpus[start : start + size])
        start += size
    return out


# ------------------------------------------------------------------------- metrics
def _label_sample(line: str, worker: int) -> str:
    """``name{a="b"} 1`` -> ``name{worker="i",a="b"} 1``; ``name 1`` -> ``name{worker="i"} 1``."""
    cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
    if cut < 0:
        return line
    if line[cut] == "{":
        rest = line[cut + 1 :]
        sep = "" if rest.startswith("}") else ","
        return f'{line[:cut]}{{worker="{worker}"{sep}{rest}'
    return f'{line[:cut]}{{worker="{worker}"}}{line[cut:]}'


def merge_metrics(texts: Sequence[tuple[int, str]]) -> str:
    """Prometheus text expositions of several workers as one: each family's ``# HELP`` and
    ``# TYPE`` once, then every worker's samples with a ``worker`` label."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for worker, text in texts:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    header, _ = families.setdefault(family, ([], []))
                    if not any(h.split(maxsplit=2)[1] == parts[1] for h in header):
                        header.append(line)
                continue
            families.setdefault(family, ([], []))[1].append(_label_sample(line, worker))
    out: list[str] = []
    for header, samples in families.values():
        out += header + samples
    return "\n".join(out) + "\n"


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    supervisor: Supervisor

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        body = self.supervisor.metrics_text().encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("metrics: " + format, *args)


# ------------------------------------------------------------------------- supervisor
@dataclass
class WorkerSpec:
    index: int
    cpus: list[int]
    metrics_port: int
    port_file: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    ready: bool = False
    env: dict[str, str] = field(default_factory=dict)


class Supervisor:
    """Starts, watches and stops the workers (see the module docstring).

    ``command(spec)`` is the command line of worker ``spec``; the supervisor adds the
    environment."""

    def __init__(
        self,
        count: int,
        command: Callable[[WorkerSpec], list[str]],
        *,
        metrics_host: str = "127.0.0.1",
        metrics_port: int = 0,
        free_port: Callable[[], int],
        cpus: Sequence[int] | None = None,
        stop_timeout_s: float = 60.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if cpus is None:
            cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            cpus = cpus or list(range(os.cpu_count() or 1))
        self.count = count
        self.command = command
        self.metrics_host, self.metrics_port = metrics_host, metrics_port
        self.stop_timeout_s, self.max_backoff_s = stop_timeout_s, max_backoff_s
        self.workdir = Path(tempfile.mkdtemp(prefix="explorank-workers-"))
        self.cpus = sorted(cpus)
        self.activity_path = self.workdir / "activity"
        PeerActivity.create(self.activity_path, count)
        self.workers = [
            WorkerSpec(i, share, free_port(), self.workdir / f"worker-{i}.port")
            for i, share in enumerate(cpu_shares(cpus, count))
        ]
        if count > len(cpus):
            log.warning(
                "%d workers on %d CPUs: workers share CPUs, one encoder thread each",
                count,
                len(cpus),
            )
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._exit_status = 0
        self._http: http.server.ThreadingHTTPServer | None = None

    # -------------------------------------------------------------- processes
    def _start(self, spec: WorkerSpec) -> None:
        with contextlib.suppress(FileNotFoundError):
            spec.port_file.unlink()
        env = dict(os.environ)
        env[WORKER_ENV] = f"{spec.index}/{self.count}"
        env[WORKER_CPUS_ENV] = ",".join(str(c) for c in spec.cpus)
        env[WORKER_ACTIVITY_ENV] = str(self.activity_path)
        env[WORKER_GROUP_CPUS_ENV] = ",".join(str(c) for c in self.cpus)
        spec.env = env
        spec.ready = False
        spec.started_at = time.monotonic()
        spec.process = subprocess.Popen(self.command(spec), env=env)
        log.info(
            "worker %d: pid %d on CPUs %s",
            spec.index,
            spec.process.pid,
            ",".join(map(str, spec.cpus)),
        )

    def start(self) -> None:
        for spec in self.workers:
            self._start(spec)
        if self.metrics_port:
            handler = type("Handler", (_MetricsHandler,), {"supervisor": self})
            self._http = http.server.ThreadingHTTPServer(
                (self.metrics_host, self.metrics_port), handler
            )
            threading.Thread(
                target=self._http.serve_forever, name="explorank-metrics", daemon=True
            ).start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every worker wrote its port file (it is SERVING); False if one exited
        first (the group is being stopped) or the time ran out."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self._stopping.is_set():
                return False
            for spec in self.workers:
                if spec.process is not None and spec.process.poll() is not None:
                    return False
                if not spec.ready and spec.port_file.exists():
                    spec.ready = True
            if all(s.ready for s in self.workers):
                return True
            time.sleep(0.05)
        return False

    def signal_all(self, sig: int) -> None:
        for spec in self.workers:
            if spec.process is not None and spec.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    spec.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop every worker (``sig`` first; SIGKILL after ``stop_timeout_s``). Safe to call
        from several threads: the first call stops, the others wait for it."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stop(sig)
            self._stopped = True

    def _stop(self, sig: int) -> None:
        self._stopping.set()
        self.signal_all(sig)
        end = time.monotonic() + self.stop_timeout_s
        for spec in self.workers:
            proc = spec.process
            if proc is None:
                continue
            try:
                code = proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time; killing it", spec.index)
                proc.kill()
                code = proc.wait()
            if code not in (0, -signal.SIGTERM, -signal.SIGINT) and self._exit_status == 0:
                self._exit_status = code if code > 0 else 1
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def watch(self) -> int:
        """Restart workers that die until :meth:`stop` (from a signal handler); returns the
        group's exit status."""
        backoff: dict[int, float] = {}
        while not self._stopping.is_set():
            for spec in self.workers:
                proc = spec.process
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                code = proc.returncode
                if code == CONFIG_EXIT and not spec.ready:
                    log.error("worker %d could not start (exit %d); stopping", spec.index, code)
                    self._exit_status = code
                    self.stop()
                    break
                ran = time.monotonic() - spec.started_at
                delay = backoff.get(spec.index, 1.0)
                delay = 1.0 if ran > 60 else min(self.max_backoff_s, delay)
                log.error(
                    "worker %d (pid %d) exited with %s after %.0f s; restarting in %.0f s",
                    spec.index,
                    proc.pid,
                    code,
                    ran,
                    delay,
                )
                backoff[spec.index] = delay * 2
                if self._stopping.wait(delay):
                    break
                spec.restarts += 1
                self._start(spec)
            self._stopping.wait(0.2)
        return self._exit_status

    @property
    def exit_status(self) -> int:
        """0, or the first failing worker's status (2 when one could not start)."""
        return self._exit_status

    # -------------------------------------------------------------- metrics
    def metrics_text(self) -> str:
        texts = []
        for spec in self.workers:
            url = f"http://127.0.0.1:{spec.metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback)
                    texts.append((spec.index, resp.read().decode("utf-8", "replace")))
            except OSError as exc:
                log.debug("worker %d metrics unavailable: %s", spec.index, exc)
        up = "\n".join(
            f'explorank_worker_up{{worker="{s.index}"}} '
            f"{1 if s.process is not None and s.process.poll() is None else 0}"
            for s in self.workers
        )
        merged = merge_metrics(texts)
        return (
            merged
            + "# HELP explorank_worker_up 1 while the worker process runs\n"
            + "# TYPE explorank_worker_up gauge\n"
            + up
            + "\n"
        )


def run_supervisor(supervisor: Supervisor, port: int, port_file: Path | None) -> int:
    """Run the group in the foreground until SIGTERM/SIGINT; returns the exit status."""

    def on_stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping %d workers", signum, supervisor.count)
        threading.Thread(target=supervisor.stop, args=(signum,), daemon=True).start()

    def on_hup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: every worker reloads its bundle")
        supervisor.signal_all(signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    supervisor.start()
    if supervisor.wait_ready(timeout_s=600):
        if port_file is not None:
            port_file.write_text(str(port))
        print(f"explorank serving on port {port} with {supervisor.count} workers", flush=True)
    supervisor.watch()
    supervisor.stop()
    sys.stdout.flush()
    return supervisor.exit_status
