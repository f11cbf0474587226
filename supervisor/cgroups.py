"""A cgroup per worker, with memory, CPU and pids limits, where the host allows.

Two layouts are supported:
- cgroup v2 (real hosts under systemd with `Delegate=yes`): the supervisor's
  own cgroup is delegated to it. Because v2 forbids processes in a cgroup
  whose controllers are enabled for children, the supervisor first moves
  itself into a `supervisor` leaf, then creates `workers/w<N>` beside it.
- cgroup v1 with writable memory / cpu / pids hierarchies: a directory
  `caxton-<pid>/w<N>` under the supervisor's own cgroup in each hierarchy.

Whatever cannot be set up is skipped with a logged reason, and each worker's
status lists the layers that are really active. A kernel OOM kill inside a
worker's cgroup is read back from its counters, so the supervisor can say
"killed by the OOM killer" instead of reporting a mystery SIGKILL.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("caxton.cgroups")

_CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int  # 0 = no memory limit
    cpu_cores: float   # 0 = no CPU quota
    pids_max: int      # 0 = no pids limit


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _sweep_stale(parent: Path) -> None:
    """Remove the empty cgroups of earlier supervisors that died without
    cleaning up (SIGKILL); the kernel has already emptied them of processes
    (their workers died with them)."""
    for stale in parent.glob("caxton-*"):
        try:
            pid = int(stale.name.removeprefix("caxton-"))
            os.kill(pid, 0)
            continue  # that supervisor is alive
        except ValueError:
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for child in stale.iterdir():
            if child.is_dir():
                try:
                    child.rmdir()
                except OSError:
                    pass
        try:
            stale.rmdir()
        except OSError as exc:
            log.debug("could not remove stale cgroup %s: %s", stale, exc)


def _number(path: Path) -> int:
    """A cgroup file holding one number; 0 if it is gone (the directory can
    be removed by the exit handler while another thread asks)."""
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


class WorkerCgroup:
    """The cgroup directories of one worker."""

    def __init__(self, version: int, dirs: dict[str, Path], layers: list[str], memory_bytes: int):
        self.version = version
        self.dirs = dirs  # controller ("memory", "cpu", "pids", or "" for v2) -> directory
        self.layers = layers
        self.memory_bytes = memory_bytes
        self._oom_killed_at_removal: bool | None = None
        # The exit handler removes the directories while the dispatcher may
        # be asking why the worker died: one lock makes "read the counters"
        # and "remember them, then remove" exclusive.
        self._lock = threading.Lock()

    @property
    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files a process writes its pid to, to join."""
        return [str(directory / "cgroup.procs") for directory in self.dirs.values()]

    def adopt(self, pid: int) -> None:
        """Make sure `pid` is in this cgroup (moving it in is idempotent). A
        controller that refuses drops its layers from the report."""
        for controller, directory in self.dirs.items():
            try:
                _write(directory / "cgroup.procs", str(pid))
            except OSError as exc:
                log.warning("cannot move worker %d into %s: %s", pid, directory, exc)
                prefix = "cgroup-v2:" if self.version == 2 else f"cgroup-v1:{controller}"
                self.layers = [layer for layer in self.layers if not layer.startswith(prefix)]

    def oom_killed(self) -> bool:
        """Did the kernel's OOM killer kill a process in this cgroup?

        The kernel counts the kill only after sending SIGKILL, so a quickly
        reaped worker can be gone before `oom_kill` moves; hitting the memory
        limit at all (v1 failcnt, v2 "oom") counts as evidence too.
        """
        with self._lock:
            if self._oom_killed_at_removal is not None:
                return self._oom_killed_at_removal
            return self._read_oom()

    def _read_oom(self) -> bool:
        if self.version == 2:
            events = self.dirs[""] / "memory.events"
            return _counter(events, "oom_kill") > 0 or _counter(events, "oom") > 0
        memory = self.dirs.get("memory")
        if memory is None:
            return False
        return _counter(memory / "memory.oom_control", "oom_kill") > 0 or _number(memory / "memory.failcnt") > 0

    def remove(self) -> None:
        """Remove the directories; the worker must have exited. The OOM
        verdict is kept: the exit may be described after the removal."""
        with self._lock:
            if self._oom_killed_at_removal is None:
                self._oom_killed_at_removal = self._read_oom()
            for directory in self.dirs.values():
                try:
                    directory.rmdir()
                except OSError as exc:
                    log.debug("could not remove %s: %s", directory, exc)


class Cgroups:
    """Creates worker cgroups below the supervisor's own, or does nothing
    (with `reason` saying why) where the host does not allow it."""

    def __init__(self, root: Path = Path("/sys/fs/cgroup"), *, enabled: bool = True):
        self.version = 0
        self.reason = ""
        self._bases: dict[str, Path] = {}
        self._counter = 0
        if not enabled:
            self.reason = "disabled in the config"
            return
        try:
            if not self._setup_v2(root):
                self._setup_v1(root)
        except OSError as exc:
            self.reason = f"cannot set up cgroups: {exc}"
            self._bases = {}
        if not self._bases:
            self.version = 0
            self.reason = self.reason or "no writable memory, cpu or pids cgroup controller"
            log.info("worker cgroups off: %s", self.reason)
        else:
            log.info("worker cgroups: v%d, controllers %s", self.version, ", ".join(sorted(self._bases)))

    @property
    def active(self) -> bool:
        return bool(self._bases)

    # ------------------------------------------------------------ setup

    def _setup_v2(self, root: Path) -> bool:
        """Use a delegated v2 subtree if it offers the controllers we need."""
        if not (root / "cgroup.controllers").exists():
            return False  # not a pure v2 host (v1, or hybrid with an empty v2)
        own = root / _own_paths().get("", "/").lstrip("/")
        wanted = {"memory", "cpu", "pids"}
        available = set((own / "cgroup.controllers").read_text().split()) & wanted
        if not available or not os.access(own / "cgroup.procs", os.W_OK):
            self.reason = f"cgroup v2 subtree {own} is not delegated to this process"
            return True
        leaf = own / "supervisor"
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        _write(own / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(available)))
        workers = own / "workers"
        workers.mkdir(exist_ok=True)
        _write(workers / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(available)))
        self.version = 2
        self._bases = {"": workers}
        self._v2_controllers = available
        return True

    def _setup_v1(self, root: Path) -> None:
        own = _own_paths()
        for controller, directory in (("memory", "memory"), ("cpu", "cpu"), ("pids", "pids")):
            mount = root / directory
            if controller not in own or not mount.is_dir():
                continue
            parent = mount / own[controller].lstrip("/")
            _sweep_stale(parent)
            base = parent / f"caxton-{os.getpid()}"
            try:
                base.mkdir(exist_ok=True)
            except OSError as exc:
                log.debug("cgroup v1 %s not writable: %s", controller, exc)
                continue
            self._bases[controller] = base
        if self._bases:
            self.version = 1

    # ------------------------------------------------------------ per worker

    def create(self, limits: CgroupLimits) -> WorkerCgroup | None:
        """A new, empty cgroup with `limits`; None where cgroups are off. A
        controller that refuses a setting is left out of the layers. The
        worker joins it itself, first thing (see `WorkerCgroup.procs_files`),
        so that everything it allocates is charged to it."""
        if not self._bases:
            return None
        self._counter += 1
        name = f"w{self._counter}"
        dirs: dict[str, Path] = {}
        for controller, base in self._bases.items():
            directory = base / name
            try:
                directory.mkdir()
            except OSError as exc:
                log.warning("cannot create cgroup %s: %s", directory, exc)
                continue
            dirs[controller] = directory
        return WorkerCgroup(self.version, dirs, self._apply(dirs, limits), limits.memory_bytes)

    def limit(self, cgroup: WorkerCgroup, limits: CgroupLimits) -> None:
        """Set `limits` on a cgroup made earlier with looser ones (a spare
        worker's, made with no memory limit, which is only ever lowered
        here: the order v1 needs between memory and memory+swap). Writing a
        limit is cheap, unlike moving a process between cgroups, which waits
        for an RCU grace period (milliseconds) whenever none moved lately."""
        cgroup.layers = self._apply(cgroup.dirs, limits)
        cgroup.memory_bytes = limits.memory_bytes

    def _apply(self, dirs: dict[str, Path], limits: CgroupLimits) -> list[str]:
        """Write `limits` into each controller's directory; the layers that
        took them."""
        layers: list[str] = []
        for controller, directory in dirs.items():
            if self.version == 2:
                layers += self._limit_v2(directory, limits)
            else:
                layers += self._limit_v1(controller, directory, limits)
        return layers

    def _limit_v1(self, controller: str, directory: Path, limits: CgroupLimits) -> list[str]:
        try:
            if controller == "memory" and limits.memory_bytes:
                _write(directory / "memory.limit_in_bytes", str(limits.memory_bytes))
                if (directory / "memory.memsw.limit_in_bytes").exists():
                    # With swap accounting, cap memory+swap too, or the
                    # worker would just swap instead of being stopped.
                    _write(directory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
                return ["cgroup-v1:memory"]
            if controller == "cpu" and limits.cpu_cores:
                _write(directory / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
                _write(directory / "cpu.cfs_quota_us", str(int(limits.cpu_cores * _CPU_PERIOD_US)))
                return ["cgroup-v1:cpu"]
            if controller == "pids" and limits.pids_max:
                _write(directory / "pids.max", str(limits.pids_max))
                return ["cgroup-v1:pids"]
        except OSError as exc:
            log.warning("cannot set cgroup v1 %s limit in %s: %s", controller, directory, exc)
        return []

    def _limit_v2(self, directory: Path, limits: CgroupLimits) -> list[str]:
        layers = []
        settings = []
        if "memory" in self._v2_controllers and limits.memory_bytes:
            settings += [("memory.max", str(limits.memory_bytes), "memory"), ("memory.swap.max", "0", None)]
        if "cpu" in self._v2_controllers and limits.cpu_cores:
            settings.append(("cpu.max", f"{int(limits.cpu_cores * _CPU_PERIOD_US)} {_CPU_PERIOD_US}", "cpu"))
        if "pids" in self._v2_controllers and limits.pids_max:
            settings.append(("pids.max", str(limits.pids_max), "pids"))
        for filename, value, layer in settings:
            try:
                _write(directory / filename, value)
                if layer:
                    layers.append(f"cgroup-v2:{layer}")
            except OSError as exc:
                log.warning("cannot set %s in %s: %s", filename, directory, exc)
        return layers

    def close(self) -> None:
        """Remove the per-supervisor directories (v1) once workers are gone."""
        if self.version == 1:
            for base in self._bases.values():
                try:
                    base.rmdir()
                except OSError as exc:
                    log.debug("could not remove %s: %s", base, exc)
