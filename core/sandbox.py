"""Run model-written code and an eval item's tests in an OS sandbox; return an unforgeable verdict.

The boundary is the kernel, not the interpreter: each run is a bubblewrap (``bwrap``) sandbox with

- every namespace of its own (``--unshare-all --unshare-user``): no network at all (a loopback
  nobody listens on), its own PID namespace and ``/proc`` (no other process of the machine is
  visible), no capabilities, no further user namespaces, a new session (no terminal);
- a root that holds only ``/usr``, the ``/lib*`` links, the loader cache and the interpreter's
  prefix, read-only (its ``site-packages`` replaced by an empty folder): not the project, not the
  store, not ``/root`` or any home; ``/tmp`` is a private tmpfs of ``FLYWHEEL_SANDBOX_DISK_MB``,
  the only writable place;
- an empty environment (``--clearenv``, and bwrap itself is started with a bare one, so that not
  even its own ``/proc/1/environ`` holds a key);
- limits: processes (``RLIMIT_NPROC``, counted per user namespace), address space, CPU time and
  file size, and a wall-clock kill: the parent kills bwrap's process group, and
  ``--die-with-parent`` takes the sandbox's PID 1 with it, which ends every process in the
  namespace, ``setsid`` orphans included.

The kernel does not count processes of uid 0 against ``RLIMIT_NPROC``, not even inside a user
namespace, so a parent running as root starts bwrap as ``nobody`` (65534). ``nobody`` cannot
read an interpreter under ``/root`` (pyenv's), so the sandbox then runs the first interpreter of
the same Python version it can start: ours, else ``/usr/local/bin`` or ``/usr/bin``'s.

Why the verdict cannot be forged. Inside, ``_sandbox_harness.py`` runs as a supervisor that
holds a per-run key the parent sends on stdin, makes itself non-dumpable (no other process may
ptrace it or open its ``/proc`` files) and starts the graded code in a *separate worker process*
with its own limits, stdout and stderr to ``/dev/null``. The tests run in the supervisor and reach
the code through proxies: every call, attribute and operator is a request to the worker, and
plain data comes back by value, so the supervisor compares the answers itself. The worker can
exit, print markers or patch anything in its own process; that changes only the answers it gives,
and a worker that stops answering fails the test in progress. The supervisor signs its verdict
with HMAC-SHA256 under the key; the parent accepts exactly one correctly signed line and nothing
else (stdout and stderr are capped; too much output is a failed run).

A known cost of the proxies: the tests see the code's objects as proxies, so ``isinstance(x,
SomeClassOfTheCode)``, catching the code's own exception classes and passing functions (e.g. a
``key=lambda``) into the code are not supported; builtin exceptions are re-raised by type.

Where no sandbox can be made (bwrap missing, user namespaces disabled, no interpreter it can
start), ``run_python_tests`` raises ``SandboxUnavailable`` with the reason: code is never run
with less isolation instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import SandboxUnavailable
from core.settings import settings

__all__ = [
    "SandboxResult",
    "bwrap_path",
    "run_python_tests",
    "sandbox_python",
]

BWRAP = "bwrap"
SANDBOX_UID = 65534  # nobody: who runs the sandbox when we are root
_HARNESS = Path(__file__).with_name("_sandbox_harness.py")
_OUTPUT_CAP = 64 * 1024
_MOUNT_POINT = "/run/flywheel"


@dataclass(frozen=True)
class SandboxResult:
    """What running code and tests in the sandbox did."""

    passed: bool
    timed_out: bool
    reason: str
    tests_run: int = 0


def bwrap_path() -> str | None:
    """The bubblewrap binary, or None when it is not installed."""
    return shutil.which(BWRAP)


def _as_nobody() -> bool:
    return os.geteuid() == 0


def _candidates() -> tuple[str, ...]:
    """Interpreters of our Python version, ours first."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    ours = Path(sys.base_prefix) / "bin" / version
    found = [str(ours) if ours.exists() else os.path.realpath(sys.executable)]
    for folder in ("/usr/local/bin", "/usr/bin"):
        path = Path(folder) / version
        if path.exists() and str(path) not in found:
            found.append(str(path))
    return tuple(found)


def _command(bwrap: str, python: str, mount: Path, disk_mb: int) -> list[str]:
    """The bwrap command line that runs the harness's supervisor with ``python``."""
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "TMPDIR",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    if _supports_disable_userns(bwrap):
        args.append("--disable-userns")
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    if Path("/etc/ld.so.cache").exists():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefix = Path(python).resolve().parent.parent
    if not str(prefix).startswith("/usr"):
        args += ["--ro-bind", str(prefix), str(prefix)]
        for packages in sorted(prefix.glob("lib/python*/site-packages")):
            args += ["--ro-bind", str(mount / "empty"), str(packages)]
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--remount-ro",
        "/dev",
        "--size",
        str(disk_mb * 1024 * 1024),
        "--tmpfs",
        "/tmp",
        "--ro-bind",
        str(mount),
        _MOUNT_POINT,
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
        python,
        "-I",
        "-S",
        "-B",
        f"{_MOUNT_POINT}/harness.py",
        "supervisor",
    ]
    return args


@lru_cache(maxsize=8)
def _supports_disable_userns(bwrap: str) -> bool:
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--disable-userns" in done.stdout + done.stderr


@lru_cache(maxsize=8)
def _probe(bwrap: str, candidates: tuple[str, ...], as_nobody: bool) -> tuple[str | None, str]:
    """The first interpreter that runs a trivial test in the sandbox, or None and why not."""
    reasons = []
    for python in candidates:
        result = _run(bwrap, python, "", "assert True\n", timeout=20.0, memory_mb=256)
        if result.passed:
            return python, ""
        reasons.append(f"{python}: {result.reason}")
    return None, "; ".join(reasons)


def sandbox_python() -> str:
    """The interpreter that runs graded code in the sandbox.

    Raises SandboxUnavailable when bubblewrap is missing or cannot make a sandbox here.
    """
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable(
            f"Code is not run: the sandbox needs bubblewrap ('{BWRAP}' is not on PATH). "
            "Install it (scripts/install-system.sh, or apt-get install bubblewrap)."
        )
    python, why = _probe(bwrap, _candidates(), _as_nobody())
    if python is None:
        raise SandboxUnavailable(
            "Code is not run: bubblewrap cannot make a sandbox on this machine "
            f"({why[:400]}). It needs unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0)"
            + (f" and an interpreter uid {SANDBOX_UID} can read." if _as_nobody() else ".")
        )
    return python


def run_python_tests(
    code: str,
    tests: str,
    *,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
) -> SandboxResult:
    """Run ``code``, then ``tests`` (asserts, or ``test_*`` functions) against it, sandboxed.

    Raises SandboxUnavailable when no sandbox can be made here: the code is then not run.
    """
    python = sandbox_python()
    bwrap = bwrap_path()
    assert bwrap is not None  # sandbox_python found it
    timeout = settings.sandbox_timeout_s if timeout_s is None else timeout_s
    memory = settings.sandbox_memory_mb if memory_mb is None else memory_mb
    return _run(bwrap, python, code, tests, timeout=timeout, memory_mb=memory)


def _run(
    bwrap: str, python: str, code: str, tests: str, *, timeout: float, memory_mb: int
) -> SandboxResult:
    disk_mb = settings.sandbox_disk_mb
    key = secrets.token_bytes(32)
    job = {
        "key": key.hex(),
        "code": code,
        "tests": tests,
        "limits": {
            "memory_mb": memory_mb,
            "cpu_s": max(1, math.ceil(timeout)) + 1,
            "disk_mb": disk_mb,
            "processes": settings.sandbox_max_processes,
        },
    }
    with tempfile.TemporaryDirectory(prefix="flywheel-sandbox-") as tmp:
        mount = Path(tmp)
        mount.chmod(0o755)  # nobody binds it when we are root
        (mount / "empty").mkdir(mode=0o755)
        harness = mount / "harness.py"
        harness.write_text(_HARNESS.read_text(encoding="utf-8"), encoding="utf-8")
        harness.chmod(0o644)
        stdout, stderr, timed_out = _communicate(
            _command(bwrap, python, mount, disk_mb), json.dumps(job).encode("utf-8"), timeout
        )
    if timed_out:
        return SandboxResult(False, True, "timed out")
    return _verdict(key, stdout, stderr)


def _communicate(command: list[str], job: bytes, timeout: float) -> tuple[bytes, bytes, bool]:
    """Run bwrap, feed it the job, read capped output; kill the whole tree at the deadline."""
    extra: dict[str, Any] = {}
    if _as_nobody():
        extra = {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd="/",
        start_new_session=True,
        **extra,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    threading.Thread(target=_feed, args=(process.stdin, job), daemon=True).start()
    deadline = time.monotonic() + timeout
    output = {process.stdout: bytearray(), process.stderr: bytearray()}
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for stream in output:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for entry, _ in selector.select(left):
                chunk = os.read(entry.fd, 65536)
                if not chunk:
                    selector.unregister(entry.fileobj)
                    continue
                buffer = output[entry.fileobj]  # type: ignore[index]
                buffer += chunk
                if len(buffer) > _OUTPUT_CAP:  # only tampering writes this much
                    selector.unregister(entry.fileobj)
                    _kill(process)
    if timed_out:
        _kill(process)
    try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(process)
        process.wait()
    process.stdout.close()
    process.stderr.close()
    return bytes(output[process.stdout]), bytes(output[process.stderr]), timed_out


def _feed(stream: Any, job: bytes) -> None:
    with contextlib.suppress(OSError):  # the sandbox may end before reading it all
        stream.write(job)
        stream.close()


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL bwrap's group; --die-with-parent then ends the sandbox's PID namespace."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _verdict(key: bytes, stdout: bytes, stderr: bytes) -> SandboxResult:
    """The one line signed with this run's key, else a failed run."""
    signed = []
    for line in stdout.splitlines():
        signature, _, payload = line.partition(b" ")
        expected = hmac.new(key, payload, hashlib.sha256).hexdigest().encode("ascii")
        if hmac.compare_digest(signature, expected):
            signed.append(payload)
    if len(signed) == 1:
        verdict = json.loads(signed[0])
        return SandboxResult(
            bool(verdict["passed"]), False, str(verdict["reason"]), int(verdict["tests"])
        )
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    last = lines[-1][:300] if lines else ""
    return SandboxResult(False, False, f"no verdict from the sandbox{': ' + last if last else ''}")
