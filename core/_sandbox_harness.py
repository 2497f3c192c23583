"""The program that runs inside the sandbox: a trusted supervisor and the worker it starts.

Only the standard library: it runs under ``python -I -S`` inside bubblewrap, where neither the
project nor its packages exist. ``core.sandbox`` starts it as ``harness.py supervisor``.

    supervisor  reads the job (a per-run key, the code, the tests, the limits) from stdin, makes
                itself non-dumpable (no other process may read its memory or its /proc files),
                starts the worker, runs the tests itself and writes one verdict line to stdout,
                signed with the key: ``<hmac-sha256 hex> <json>``.
    worker      a separate process with its own limits; it runs the graded code and answers
                the supervisor's requests over two pipes: call this, compare that, take this
                item. It never sees the tests, the key or the supervisor's stdout.

The tests call the graded code through proxies (``Remote``): each call, attribute, operator or
iteration is a request; plain data (None, bool, int, float, str, bytes, complex and lists,
tuples, dicts and sets of them) comes back as values the supervisor compares itself, anything
else as a proxy to an object that stays in the worker. Whatever the code does to its own
process (exit, print a marker, patch a harness) changes only the answers it gives.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import hmac
import json
import operator
import os
import resource
import signal
import struct
import subprocess
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, TypeVar

MAX_MESSAGE = 16 * 1024 * 1024
MAX_DEPTH = 64
_HEADER = struct.Struct(">I")
_PLAIN = (bool, int, float, str)
_T = TypeVar("_T")


class ProtocolError(Exception):
    """The worker's answer is not a well-formed message, or the worker is gone."""


class CodeError(Exception):
    """An exception raised by the code under test whose type is not a builtin one."""


class Unpassable(TypeError):
    """A value the tests cannot hand to the code under test (it is neither data nor a proxy)."""


# -- framing and values ------------------------------------------------------------------------


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise ProtocolError("the code under test ended its process")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> Any:
    """One length-prefixed JSON message from ``fd``."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    if size > MAX_MESSAGE:
        raise ProtocolError(f"a message of {size} bytes is over the limit")
    try:
        return json.loads(_read_exactly(fd, size).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"a malformed message ({type(exc).__name__})") from None


def write_message(fd: int, message: Any) -> None:
    """One length-prefixed JSON message to ``fd``."""
    data = json.dumps(message).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"a message of {len(data)} bytes is over the limit")
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def encode(value: Any, refer: Callable[[Any], Any], depth: int = 0) -> Any:
    """``value`` as JSON: plain data by value (exact types only), anything else by ``refer``."""
    kind = type(value)
    if value is None or kind in _PLAIN:
        if kind is int and value.bit_length() > 12_000:  # JSON's int limit is 4300 digits
            return refer(value)
        return value
    if depth < MAX_DEPTH:
        inner = depth + 1
        if kind is list or kind is tuple or kind is set or kind is frozenset:
            return {"t": kind.__name__, "v": [encode(v, refer, inner) for v in value]}
        if kind is dict:
            pairs = [[encode(k, refer, inner), encode(v, refer, inner)] for k, v in value.items()]
            return {"t": "dict", "v": pairs}
        if kind is bytes:
            return {"t": "bytes", "v": value.hex()}
        if kind is complex:
            return {"t": "complex", "v": [value.real, value.imag]}
    return refer(value)


_CONTAINERS: dict[str, Callable[[list[Any]], Any]] = {
    "list": list,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
}


def decode(data: Any, resolve: Callable[[dict[str, Any]], Any], depth: int = 0) -> Any:
    """The value a message holds; raises ProtocolError when it is not a value."""
    if data is None or type(data) in _PLAIN:
        return data
    if depth > MAX_DEPTH + 1 or type(data) is not dict:
        raise ProtocolError("a malformed value")
    tag, body = data.get("t"), data.get("v")
    try:
        if tag == "ref":
            return resolve(data)
        if tag in _CONTAINERS and type(body) is list:
            return _CONTAINERS[tag]([decode(v, resolve, depth + 1) for v in body])
        if tag == "dict" and type(body) is list:
            inner = depth + 1
            return dict((decode(k, resolve, inner), decode(v, resolve, inner)) for k, v in body)
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "complex" and type(body) is list and len(body) == 2:
            real, imag = body
            if type(real) is float and type(imag) is float:
                return complex(real, imag)
    except ProtocolError:
        raise
    except Exception as exc:  # unhashable keys, odd shapes: the worker's answer is wrong
        raise ProtocolError(f"a malformed value ({type(exc).__name__})") from None
    raise ProtocolError("a malformed value")


# -- the worker: runs the graded code, never sees the tests ------------------------------------


def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


OPERATIONS: dict[str, Callable[..., Any]] = {
    "call": _call,
    "getattr": getattr,
    "setattr": setattr,
    "delattr": delattr,
    "repr": repr,
    "str": str,
    "bool": bool,
    "len": len,
    "hash": hash,
    "iter": iter,
    "next": next,
    "int": int,
    "float": float,
    "index": operator.index,
    "contains": operator.contains,
    "getitem": operator.getitem,
    "setitem": operator.setitem,
    "delitem": operator.delitem,
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": operator.abs,
    "invert": operator.invert,
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "matmul": operator.matmul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "divmod": divmod,
    "pow": operator.pow,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
}


def _where(exc: BaseException, filename: str) -> str:
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    return f" ({filename} line {lines[-1]})" if lines else ""


def _error(exc: BaseException, filename: str = "solution.py") -> dict[str, Any]:
    name = type(exc).__name__
    if isinstance(exc, SystemExit):
        message = f"the code called exit({exc.code!r})"
    elif isinstance(exc, SyntaxError):
        return {"error": [name, f"{exc.msg} ({filename} line {exc.lineno})"]}
    else:
        try:
            message = str(exc)[:2000]
        except Exception:
            message = "(an exception that cannot be shown)"
    return {"error": [name, (message + _where(exc, filename)).strip()]}


def worker(requests: int, answers: int) -> None:
    """Answer the supervisor's requests about the graded code until the pipe closes."""
    objects: dict[int, Any] = {}
    ids: dict[int, int] = {}

    def refer(value: Any) -> dict[str, Any]:
        key = id(value)
        if key not in ids:
            ids[key] = len(objects)
            objects[ids[key]] = value
        return {"t": "ref", "id": ids[key], "type": type(value).__name__}

    def resolve(data: dict[str, Any]) -> Any:
        return objects[data["id"]]

    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": builtins}
    while True:
        try:
            request = read_message(requests)
        except ProtocolError:
            return
        try:
            if request["op"] == "load":
                exec(compile(request["code"], "solution.py", "exec"), namespace)
                names = [
                    [name, encode(value, refer)]
                    for name, value in namespace.items()
                    if not (name.startswith("__") and name.endswith("__"))
                ]
                answer: dict[str, Any] = {"ok": names}
            else:
                function = OPERATIONS[request["op"]]
                args = [decode(a, resolve) for a in request["args"]]
                kwargs = {k: decode(v, resolve) for k, v in request["kwargs"]}
                answer = {"ok": encode(function(*args, **kwargs), refer)}
            write_message(answers, answer)
        except BaseException as exc:  # the code's own failure is an answer, not a crash
            write_message(answers, _error(exc))


# -- the supervisor: runs the tests, holds the key, signs the verdict --------------------------


class Client:
    """The supervisor's end of the worker's pipes."""

    def __init__(self, process: subprocess.Popen[bytes], requests: int, answers: int) -> None:
        self.process = process
        self.requests = requests
        self.answers = answers

    def ask(self, request: dict[str, Any]) -> Any:
        try:
            write_message(self.requests, request)
            answer = read_message(self.answers)
        except (OSError, ProtocolError) as exc:
            raise ProtocolError(self._gone(exc)) from None
        if type(answer) is not dict:
            raise ProtocolError("a malformed answer")
        if "ok" in answer:
            return answer["ok"]
        error = answer.get("error")
        if type(error) is not list or len(error) != 2 or not all(type(e) is str for e in error):
            raise ProtocolError("a malformed answer")
        raise _local_exception(error[0], error[1])

    def apply(self, op: str, *args: Any, **kwargs: Any) -> Any:
        request = {
            "op": op,
            "args": [encode(a, _refer_remote) for a in args],
            "kwargs": [[k, encode(v, _refer_remote)] for k, v in kwargs.items()],
        }
        return decode(self.ask(request), self.resolve)

    def resolve(self, data: dict[str, Any]) -> Remote:
        ref, kind = data.get("id"), data.get("type")
        if type(ref) is not int or type(kind) is not str:
            raise ProtocolError("a malformed reference")
        return Remote(self, ref, kind)

    def _gone(self, exc: BaseException) -> str:
        try:
            status = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return f"the code under test broke its pipe ({exc})"
        if status < 0:
            return f"the code under test was killed by signal {-status}"
        return f"the code under test ended its process (exit status {status})"


def _local_exception(name: str, message: str) -> Exception:
    """The worker's exception as one the tests can catch: a builtin type by name, else CodeError."""
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:
            pass
    return CodeError(f"{name}: {message}")


def _refer_remote(value: Any) -> dict[str, Any]:
    if isinstance(value, Remote):
        return {"t": "ref", "id": object.__getattribute__(value, "_ref")}
    raise Unpassable(f"the tests cannot pass a {type(value).__name__} to the code under test")


class Remote:
    """A proxy in the tests for an object that lives in the worker."""

    __slots__ = ("_client", "_ref", "_type")

    def __init__(self, client: Client, ref: int, kind: str) -> None:
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_type", kind)

    def _apply(self, op: str, *args: Any, **kwargs: Any) -> Any:
        client: Client = object.__getattribute__(self, "_client")
        return client.apply(op, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return self._apply("getattr", self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._apply("setattr", self, name, value)

    def __delattr__(self, name: str) -> None:
        self._apply("delattr", self, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._apply("call", self, *args, **kwargs)

    def __repr__(self) -> str:
        try:
            text = self._apply("repr", self)
        except Exception:
            text = None
        return text if type(text) is str else f"<{object.__getattribute__(self, '_type')}>"

    def __str__(self) -> str:
        return _typed(self._apply("str", self), str)

    def __bool__(self) -> bool:
        return _typed(self._apply("bool", self), bool)

    def __len__(self) -> int:
        return _typed(self._apply("len", self), int)

    def __hash__(self) -> int:
        return _typed(self._apply("hash", self), int)

    def __index__(self) -> int:
        return _typed(self._apply("index", self), int)

    def __int__(self) -> int:
        return _typed(self._apply("int", self), int)

    def __float__(self) -> float:
        return _typed(self._apply("float", self), float)

    def __iter__(self) -> Any:
        return self._apply("iter", self)

    def __next__(self) -> Any:
        return self._apply("next", self)

    def __contains__(self, item: Any) -> bool:
        return bool(self._apply("contains", self, item))

    def __getitem__(self, key: Any) -> Any:
        return self._apply("getitem", self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._apply("setitem", self, key, value)

    def __delitem__(self, key: Any) -> None:
        self._apply("delitem", self, key)

    def __neg__(self) -> Any:
        return self._apply("neg", self)

    def __pos__(self) -> Any:
        return self._apply("pos", self)

    def __abs__(self) -> Any:
        return self._apply("abs", self)

    def __invert__(self) -> Any:
        return self._apply("invert", self)

    def __enter__(self) -> Any:
        return self._apply("call", self._apply("getattr", self, "__enter__"))

    def __exit__(self, *exc: Any) -> Any:
        return self._apply("call", self._apply("getattr", self, "__exit__"), None, None, None)


def _typed(value: Any, kind: type[_T]) -> _T:
    if type(value) is not kind:
        raise TypeError(f"the code under test answered a {type(value).__name__}, not a {kind}")
    return value


def _binary(op: str, reflected: bool) -> Callable[[Remote, Any], Any]:
    def method(self: Remote, other: Any) -> Any:
        try:
            return self._apply(op, other, self) if reflected else self._apply(op, self, other)
        except Unpassable:
            return NotImplemented

    return method


for _op in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(Remote, f"__{_op}__", _binary(_op, False))
for _op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "divmod", "pow"):
    setattr(Remote, f"__{_op}__", _binary(_op, False))
    setattr(Remote, f"__r{_op}__", _binary(_op, True))
for _op in ("lshift", "rshift", "and", "or", "xor"):
    setattr(Remote, f"__{_op}__", _binary(_op, False))
    setattr(Remote, f"__r{_op}__", _binary(_op, True))


def _non_dumpable() -> None:
    """No process of the same user may ptrace us or open our /proc files (memory, fds)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _worker_limits(limits: dict[str, int]) -> Callable[[], None]:
    def apply() -> None:
        memory = limits["memory_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
        file_bytes = limits["disk_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        os.chdir("/tmp")

    return apply


def _run_tests(client: Client, code: str, tests: str) -> tuple[bool, str, int]:
    """Load the code in the worker, run the tests here: (passed, reason, tests run)."""
    try:
        tree = ast.parse(tests, "tests.py")
    except SyntaxError as exc:
        return False, f"the tests do not parse: {exc.msg} (tests.py line {exc.lineno})", 0
    try:
        loaded = client.ask({"op": "load", "code": code})
        if type(loaded) is not list:
            raise ProtocolError("a malformed answer")
        names = {}
        for pair in loaded:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                raise ProtocolError("a malformed answer")
            names[pair[0]] = decode(pair[1], client.resolve)
    except Exception as exc:
        return False, _failure("solution.py", exc), 0
    solution = types.ModuleType("solution")
    solution.__dict__.update(names)
    sys.modules["solution"] = solution
    namespace: dict[str, Any] = {"__name__": "tests", "__builtins__": builtins, **names}
    run = 1
    try:
        exec(compile(tree, "tests.py", "exec"), namespace)
    except BaseException as exc:
        return False, _failure("tests.py", exc), run
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            run += 1
            try:
                namespace[node.name]()
            except BaseException as exc:
                return False, _failure(node.name, exc), run
    return True, "tests passed", run


def _failure(where: str, exc: BaseException) -> str:
    line = _where(exc, "tests.py") if where != "solution.py" else ""
    text = str(exc) if not isinstance(exc, CodeError) else exc.args[0]
    name = "" if isinstance(exc, CodeError | ProtocolError) else f"{type(exc).__name__}: "
    detail = f"{name}{text}".strip().rstrip(":") or type(exc).__name__
    return f"{where}: {detail}{line}"[:500]


def supervisor() -> None:
    """Run one job: read it from stdin, start the worker, test, sign and print the verdict."""
    _non_dumpable()
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    sys.stdin.close()
    # Only the verdict goes to the parent: what the tests print goes nowhere.
    verdict = os.dup(1)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.close(quiet)
    key = bytes.fromhex(job["key"])
    limits: dict[str, int] = job["limits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    requests_read, requests_write = os.pipe()
    answers_read, answers_write = os.pipe()
    worker_command = [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), "worker"]
    process = subprocess.Popen(
        [*worker_command, str(requests_read), str(answers_write)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(requests_read, answers_write),
        preexec_fn=_worker_limits(limits),
    )
    os.close(requests_read)
    os.close(answers_write)
    # The tests hold what comes back: bound them as the worker is bound.
    memory = limits["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    client = Client(process, requests_write, answers_read)
    try:
        passed, reason, run = _run_tests(client, job["code"], job["tests"])
    except BaseException as exc:  # the verdict is written whatever the tests did
        passed, reason, run = False, _failure("tests", exc), 0
    payload = json.dumps({"passed": passed, "reason": reason, "tests": run}).encode("utf-8")
    signature = hmac.new(key, payload, hashlib.sha256).hexdigest().encode("ascii")
    with os.fdopen(verdict, "wb") as out:
        out.write(signature + b" " + payload + b"\n")
    process.kill()
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["supervisor"]:
        supervisor()
    else:
        sys.exit("usage: harness.py supervisor | worker REQUESTS_FD ANSWERS_FD")
