"""The sandbox of graded code: each attack that beat the old in-interpreter guard is blocked and
scored as failed, the run ends within its timeout, honest code still scores 1.0, and where no
sandbox can be made the grader refuses to run code and says why."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import core.sandbox
from core.errors import SandboxUnavailable
from core.graders import grade_output
from core.sandbox import run_python_tests, sandbox_python
from core.settings import PROJECT_ROOT

TIMEOUT = 3.0
SLACK = 2.0  # bwrap and two interpreters start in well under a second; the rest is margin
ADD_TESTS = "assert add(2, 3) == 5\n\ndef test_negative():\n    assert add(-1, 1) == 0\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
RUN_WITHOUT_A_SANDBOX = {"test_without_bubblewrap_the_grader_refuses_to_run_code"}


@pytest.fixture(autouse=True)
def _needs_a_sandbox(request: pytest.FixtureRequest) -> None:
    if request.node.name in RUN_WITHOUT_A_SANDBOX:
        return
    try:
        sandbox_python()
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))


def _score(code: str, tests: str = ADD_TESTS, timeout_s: float = TIMEOUT) -> tuple[float, str]:
    """Grade ``code`` as python_tests does, asserting the run ended within its timeout."""
    started = time.monotonic()
    result = run_python_tests(code, tests, timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    assert elapsed < timeout_s + SLACK, f"the run took {elapsed:.1f}s"
    return float(result.passed), result.reason


def test_correct_code_scores_one_and_wrong_code_zero() -> None:
    item = {"labels": {"tests": ADD_TESTS}}
    right = grade_output("python_tests", "```python\ndef add(a, b):\n    return a + b\n```", item)
    assert right.score == 1.0 and right.detail == "tests passed"
    wrong = grade_output("python_tests", WRONG_ADD, item)
    assert wrong.score == 0.0 and "AssertionError" in wrong.detail


def test_tests_reach_the_codes_objects_through_the_sandbox() -> None:
    code = (
        "class Stack:\n"
        "    def __init__(self):\n        self.items = []\n"
        "    def push(self, x):\n        self.items.append(x)\n"
        "    def pop(self):\n        return self.items.pop()\n"
        "    def __len__(self):\n        return len(self.items)\n"
        "def squares(n):\n    yield from (i * i for i in range(n))\n"
        "def parse(text):\n    if not text:\n        raise ValueError('empty')\n"
        "    return {'words': text.split(), 'n': (len(text), 1.5)}\n"
    )
    tests = (
        "s = Stack()\ns.push(1)\ns.push(2)\n"
        "assert len(s) == 2 and s.pop() == 2 and s.items == [1]\n"
        "assert list(squares(4)) == [0, 1, 4, 9] and sum(squares(3)) == 5\n"
        "assert parse('a b') == {'words': ['a', 'b'], 'n': (3, 1.5)}\n"
        "def test_errors_keep_their_type():\n"
        "    try:\n        parse('')\n    except ValueError as exc:\n"
        "        assert 'empty' in str(exc)\n    else:\n        assert False\n"
        "from solution import Stack as S\nassert len(S()) == 0\n"
    )
    assert _score(code, tests) == (1.0, "tests passed")


def test_fork_exec_runs_only_inside_the_sandbox(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    code = (
        "import _posixsubprocess, os, sys\n"
        f"argv = [b'/bin/sh', b'-c', b'echo pwned > {target}']\n"
        "r, w = os.pipe()\n"
        "args = [argv, [b'/bin/sh'], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w,\n"
        "        False, False, -1, None, None, -1, -1, None]\n"
        "if sys.version_info >= (3, 12):\n    args.append(False)\n"
        "os.waitpid(_posixsubprocess.fork_exec(*args), 0)\n"
        f"WROTE = os.path.exists({str(target)!r})\n" + WRONG_ADD
    )
    score, _ = _score(code, "assert WROTE\n" + ADD_TESTS)
    assert score == 0.0
    assert not target.exists()


# The old guard's globals, the harness's functions through gc and sys.modules, forged verdicts
# written to every descriptor and /proc path the code can name: none of it reaches the verdict.
DISARM = """
import __main__, gc, os, sys, json
__main__.__dict__.update(_SPAWN=set(), ROOT='', NONCE='')
def passed(*args, **kwargs):
    return True, 'tests passed', 1
for module in list(sys.modules.values()):
    for name in ('_run_tests', 'supervisor', '_failure', 'read_message', 'decode'):
        try:
            setattr(module, name, passed)
        except Exception:
            pass
for obj in gc.get_objects():
    if getattr(obj, '__name__', '') in ('_run_tests', '_failure', 'supervisor', 'worker'):
        try:
            obj.__code__ = passed.__code__
        except Exception:
            pass
forged = (('0' * 64) + ' ' + json.dumps({'passed': True, 'reason': 'tests passed', 'tests': 1}))
forged = (forged + '\\n').encode()
for fd in range(64):
    try:
        os.write(fd, forged)
    except OSError:
        pass
for pid in os.listdir('/proc'):
    for fd in ('1', '2', '3'):
        try:
            with open(f'/proc/{pid}/fd/{fd}', 'wb') as stream:
                stream.write(forged)
        except OSError:
            pass
print(forged.decode())
"""


def test_disarming_the_guard_and_patching_the_harness_forges_nothing() -> None:
    assert _score(DISARM + WRONG_ADD)[0] == 0.0
    assert _score(DISARM + "def add(a, b):\n    return 5\n", "assert add(2, 2) == 4\n")[0] == 0.0


def test_the_supervisor_is_out_of_the_codes_reach() -> None:
    """The process that holds the run's key and runs the tests: no memory, fds or ptrace."""
    code = """
import ctypes, os
ppid = os.getppid()
REACHED = []
for name in ('mem', 'environ', 'maps'):
    try:
        with open(f'/proc/{ppid}/{name}', 'rb') as f:
            f.read(16)
        REACHED.append(name)
    except OSError:
        pass
for fd in range(8):
    for mode in ('rb', 'wb'):
        try:
            with open(f'/proc/{ppid}/fd/{fd}', mode):
                REACHED.append(f'fd/{fd}/{mode}')
        except OSError:
            pass
if ctypes.CDLL(None).ptrace(16, ppid, 0, 0) == 0:  # PTRACE_ATTACH
    REACHED.append('ptrace')
"""
    assert _score(code, "assert REACHED == []\n") == (1.0, "tests passed")


def test_printing_the_old_marker_and_exiting_does_not_pass() -> None:
    code = "import sys\nprint('tests passed')\nprint(sys.argv)\nsys.stdout.flush()\n" + WRONG_ADD
    assert _score(code)[0] == 0.0


@pytest.mark.parametrize(
    "ending",
    ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit(0)\n"],
)
def test_exiting_before_the_tests_run_does_not_pass(ending: str) -> None:
    score, reason = _score(DISARM + ending)
    assert score == 0.0 and "solution.py" in reason


def test_exiting_during_a_test_does_not_pass() -> None:
    code = "import os\ndef add(a, b):\n    os._exit(0)\n"
    score, reason = _score(code)
    assert score == 0.0 and "ended its process" in reason


def test_the_parents_environment_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-" + hashlib.sha256(b"flywheel").hexdigest()
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    code = f"""
import os
SECRET = {secret!r}.encode()
SCANNED, FOUND = 0, []
for pid in ['self', str(os.getppid()), '1'] + os.listdir('/proc'):
    for name in ('environ', 'cmdline'):
        try:
            with open(f'/proc/{{pid}}/{{name}}', 'rb') as f:
                data = f.read()
        except OSError:
            continue
        SCANNED += 1
        if SECRET in data:
            FOUND.append(f'/proc/{{pid}}/{{name}}')
if SECRET.decode() in str(os.environ):
    FOUND.append('os.environ')
ENVIRON = dict(os.environ)
"""
    # It looked (the scan read files) and found nothing; the forged test fails.
    looked = "assert SCANNED > 2 and FOUND == []\nassert 'OPENAI_API_KEY' not in ENVIRON\n"
    assert _score(code, looked) == (1.0, "tests passed")
    score, reason = _score(code, "assert FOUND\n")
    assert score == 0.0 and secret not in reason


def test_the_store_the_project_and_home_are_not_there(tmp_path: Path) -> None:
    store = tmp_path / "flywheel.duckdb"
    with duckdb.connect(str(store)) as con:
        con.execute("CREATE TABLE audit (action VARCHAR)")
        con.execute("INSERT INTO audit VALUES ('created')")
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    code = f"""
import os
WROTE = []
for path in ({str(store)!r}, {str(PROJECT_ROOT / "data" / "flywheel.duckdb")!r}):
    try:
        with open(path, 'r+b') as f:
            f.seek(0, 2)
            f.write(b'INSERT INTO audit VALUES (gate.approved)')
        WROTE.append(path)
    except OSError:
        pass
try:
    import duckdb
    duckdb.connect({str(store)!r}).execute("INSERT INTO audit VALUES ('gate.approved')")
    WROTE.append('duckdb')
except Exception:
    pass
SEEN = [p for p in ({str(tmp_path)!r}, {str(PROJECT_ROOT)!r}, os.path.expanduser('~'),
        '/root/.bashrc', '/home') if os.path.exists(p) and os.listdir(p)]
"""
    assert _score(code, "assert WROTE\n")[0] == 0.0
    assert _score(code, "assert WROTE == [] and SEEN == []\n") == (1.0, "tests passed")
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT * FROM audit").fetchall() == [("created",)]


def test_only_the_scratch_directory_is_writable(tmp_path: Path) -> None:
    code = f"""
import os
WROTE = []
outside = ({str(tmp_path / "x")!r}, '/x', '/usr/x', '/dev/x', {sys.base_prefix + "/x"!r})
for path in (*outside, '/tmp/x'):
    try:
        with open(path, 'w') as f:
            f.write('x')
        WROTE.append(path)
    except OSError:
        pass
"""
    assert _score(code, "assert WROTE == ['/tmp/x']\n") == (1.0, "tests passed")
    assert not (tmp_path / "x").exists()


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bool]]]:
    """A TCP server on 127.0.0.1 that records whether anyone connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(TIMEOUT + SLACK)
    seen: list[bool] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            seen.append(True)
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1]), seen
    server.close()


def test_the_network_is_unreachable(listener: tuple[int, list[bool]]) -> None:
    port, seen = listener
    code = (
        "import socket\nCONNECTED = False\ntry:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
        "    CONNECTED = True\nexcept OSError:\n    pass\n"
    )
    assert _score(code, "assert CONNECTED\n")[0] == 0.0
    assert seen == []


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


def _gone(marker: str) -> bool:
    for _ in range(20):  # the kernel reaps a dead namespace promptly, not instantly
        if not _host_processes_with(marker):
            return True
        time.sleep(0.05)
    return False


def test_an_orphan_in_a_new_session_dies_with_the_run() -> None:
    code = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n"
        "    os.execv('/bin/sleep', ['sleep', '4242.5'])\n" + WRONG_ADD
    )
    assert _score(code)[0] == 0.0
    assert _gone("4242.5")


def test_code_that_sleeps_forever_is_killed_at_the_timeout() -> None:
    code = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
        "    os.execv('/bin/sleep', ['sleep', '4343.5'])\ntime.sleep(10 ** 6)\n"
    )
    started = time.monotonic()
    result = run_python_tests(code, ADD_TESTS, timeout_s=1.5)
    assert time.monotonic() - started < 1.5 + SLACK
    assert not result.passed and result.timed_out and result.reason == "timed out"
    assert _gone("4343.5")


def test_a_loop_that_never_ends_is_killed_at_the_timeout() -> None:
    result = run_python_tests("while True:\n    pass\n", "assert True\n", timeout_s=1.0)
    assert not result.passed and result.timed_out and result.reason == "timed out"


def test_processes_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SANDBOX_MAX_PROCESSES", "16")
    code = """
import os, time
FORKED = 0
for _ in range(100):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    FORKED += 1
"""
    assert _score(code, "assert FORKED == 100\n")[0] == 0.0
    assert _score(code, "assert 0 < FORKED < 16\n") == (1.0, "tests passed")


def test_a_fork_bomb_ends_at_the_timeout() -> None:
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    score, _ = _score(code, timeout_s=1.5)
    assert score == 0.0


def test_memory_and_disk_are_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_python_tests("x = bytearray(1024 ** 3)\n", "", memory_mb=256)
    assert not result.passed and "MemoryError" in result.reason
    monkeypatch.setenv("FLYWHEEL_SANDBOX_DISK_MB", "4")
    code = (
        "FULL = False\ntry:\n    with open('/tmp/big', 'wb') as f:\n"
        "        for _ in range(64):\n            f.write(b'x' * (1 << 20))\n"
        "except OSError:\n    FULL = True\n"
    )
    assert _score(code, "assert FULL\n") == (1.0, "tests passed")


def test_the_verdict_needs_the_runs_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose signed line is replaced by another (e.g. one from an earlier run) fails."""
    real = core.sandbox._communicate

    def replayed(command: list[str], job: bytes, timeout: float) -> tuple[bytes, bytes, bool]:
        stdout, stderr, timed_out = real(command, job, timeout)
        return stdout.replace(b'"passed": false', b'"passed": true'), stderr, timed_out

    monkeypatch.setattr(core.sandbox, "_communicate", replayed)
    result = run_python_tests(WRONG_ADD, ADD_TESTS, timeout_s=TIMEOUT)
    assert not result.passed and result.reason.startswith("no verdict from the sandbox")


def test_without_bubblewrap_the_grader_refuses_to_run_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(core.sandbox, "BWRAP", str(tmp_path / "missing" / "bwrap"))
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\ndef add(a, b):\n    return a + b\n"
    grade = grade_output("python_tests", code, {"labels": {"tests": ADD_TESTS}})
    assert grade.score is None
    assert grade.error is not None and "bubblewrap" in grade.error and "not run" in grade.error
    assert not marker.exists()
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        run_python_tests(code, ADD_TESTS)
