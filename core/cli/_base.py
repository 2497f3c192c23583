"""The machinery every command shares: the lazy groups, --db and --json anywhere, the shared
options (one help text each), the old spellings kept for one release, and the run of one command
(its store, its exit status, its one-line errors and the log of an unexpected one).

Nothing here imports more than click and the standard library at its top: ``--help`` and the
statistics from counts must answer at once (tests/test_cli_startup.py, bench/cli.py).
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import click

from core.errors import FlywheelError, PlanError

if TYPE_CHECKING:
    from core.access import User
    from core.store import Store

PROG = "python -m core"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Outcome:
    """What a command produced: the JSON payload, the text for people, the exit status."""

    data: dict[str, Any]
    text: str
    exit_code: int = 0


class Noun(NamedTuple):
    """A top-level command: the module under core.cli that defines it and its line in --help."""

    module: str
    help: str


# The top-level commands, in the order --help lists them. The root imports a noun's module only
# when that noun is run (or its own --help asked for), so these lines are its help in the listing.
NOUNS: dict[str, Noun] = {
    "demo": Noun("demo", "load the demo workspace"),
    "plan": Noun("plan", "lint, import, export and list plans"),
    "data": Noun("data", "load logs, list quarantined rows, erase a user, redact a file"),
    "cycle": Noun("cycle", "run a cycle's pipeline; ask why a row was dropped"),
    "dataset": Noun("dataset", "export, list and compare dataset versions"),
    "generate": Noun("generate", "synthetic generation over the plan's grid"),
    "eval": Noun("evals", "eval sets, runs and imported results"),
    "gate": Noun("gate", "release gates and decisions"),
    "train": Noun("train", "fine-tune or register a cycle's candidate"),
    "ab": Noun("ab", "A/B tests: a cycle's stored test, or two arms from counts"),
    "report": Noun("report", "render the documents reviewers read"),
    "store": Noun("storage", "back up, restore and apply retention to the store"),
    "stats": Noun("stats", "A/B statistics from counts: SRM and sample size"),
}

# Spellings of the previous release, each run as its new spelling after one line on stderr.
# Remove them in the next release (and the README's list of them).
RENAMED: dict[str, str] = {
    "ingest": "data ingest",
    "rejects": "data rejects",
    "forget": "data forget",
    "pii redact": "data pii-redact",
    "backup": "store backup",
    "restore": "store restore",
    "retention": "store retention",
    "stats ab": "ab compare",
    "plan render": "report plan",
}

_DB = "flywheel.db"
_JSON = "flywheel.json"
_RENAMED_VALUES = "flywheel.renamed"


def deprecation_line(old: str, new: str) -> None:
    """The one line on stderr that names the new spelling of an old one."""
    click.echo(f"warning: {old} is deprecated and goes in the next release; use {new}.", err=True)


# -- --db and --json, on the root, every group and every command --------------------------------


def _remember_db(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.meta[_DB] = value


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_JSON] = True


def db_option(f: F) -> F:
    """--db PATH, accepted before or after the command (the last one given wins)."""
    return click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_remember_db,
        help="DuckDB store (default: $FLYWHEEL_DB, else data/flywheel.duckdb)",
    )(f)


def json_option(f: F) -> F:
    """--json, accepted before or after the command."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_remember_json,
        help="print one JSON object on stdout",
    )(f)


def store_path() -> Path | None:
    """The --db given anywhere on the line, else None (the store's own default)."""
    value = click.get_current_context().meta.get(_DB)
    return value if isinstance(value, Path) else None


def wants_json() -> bool:
    """Whether --json was given anywhere on the line."""
    return bool(click.get_current_context().meta.get(_JSON, False))


# -- shared options: one decorator, one help text each -------------------------------------------


def _renamed_option(
    old: str, new: str, target: str
) -> Callable[[click.Context, click.Parameter, Any], None]:
    """The callback of an old option's hidden spelling: one deprecation line, and its value
    kept for the new option's parameter (``target``), which run_outcome fills with it."""

    def remember(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None and not ctx.resilient_parsing:
            deprecation_line(old, new)
            ctx.meta.setdefault(_RENAMED_VALUES, {})[target] = (old, new, value)

    return remember


def plan_option(f: F) -> F:
    """--plan ID: the plan a command acts on."""
    return click.option(
        "--plan",
        metavar="ID",
        help="plan id (default, where the command needs one: the newest non-demo plan, "
        "else the demo's)",
    )(f)


def plan_filter_option(f: F) -> F:
    """--plan ID on a listing: only that plan's rows."""
    return click.option("--plan", metavar="ID", help="only this plan's (default: every plan's)")(f)


def cycle_option(*, required: bool) -> Callable[[F], F]:
    """--cycle N: the cycle a command acts on (1 = the first)."""

    def decorate(f: F) -> F:
        return click.option(
            "--cycle",
            type=click.IntRange(min=1),
            required=required,
            metavar="N",
            help="cycle number (1 = the first)",
        )(f)

    return decorate


def _version_option(flag: str, dest: str, help_text: str) -> Callable[[F], F]:
    """``flag`` V (and the old --version, hidden, with its deprecation line)."""

    def decorate(f: F) -> F:
        f = click.option(
            "--version",
            f"old_{dest}",
            type=click.IntRange(min=1),
            hidden=True,
            expose_value=False,
            callback=_renamed_option("--version", flag, dest),
        )(f)
        return click.option(flag, dest, type=click.IntRange(min=1), metavar="V", help=help_text)(f)

    return decorate


plan_version_option = _version_option(
    "--plan-version", "plan_version", "plan version (default: the newest)"
)
"""--plan-version V: a stored plan version."""
set_version_option = _version_option(
    "--set-version", "set_version", "eval set version (default: the newest)"
)
"""--set-version V: an eval set's version."""


DOCUMENT_FORMATS = ("md", "html", "pdf")  # core.documents.Format


def document_options(f: F) -> F:
    """--out FILE and --format md|html|pdf of every document."""
    f = click.option(
        "--format",
        "fmt",
        type=click.Choice([*DOCUMENT_FORMATS, "markdown"], case_sensitive=False),
        help="md, html or pdf (default: from the extension of --out)",
    )(f)
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        metavar="FILE",
        help="the file to write",
    )(f)


def base_url_option(help_text: str) -> Callable[[F], F]:
    """--base-url URL of an OpenAI-compatible server."""
    return click.option("--base-url", metavar="URL", help=help_text)


def poll_option(f: F) -> F:
    """--poll SECONDS while a training job is followed."""
    return click.option(
        "--poll",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="seconds between checks (default: training_poll_s)",
    )(f)


def job_argument(f: F) -> F:
    """JOB_ID: the id printed by train start."""
    return click.argument("job_id", metavar="JOB_ID")(f)


class CommaSeparated(click.ParamType[list[Any]]):
    """``5000,5200``: numbers (or names) separated by commas."""

    def __init__(self, kind: type[int] | type[float] | type[str], example: str) -> None:
        self.kind = kind
        self.example = example
        self.name = f"{kind.__name__},…"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[Any]:
        if isinstance(value, list):
            return value
        try:
            return [self.kind(part.strip()) for part in str(value).split(",") if part.strip()]
        except ValueError:
            what = "numbers" if self.kind is not str else "names"
            self.fail(
                f"takes {what} separated by commas (e.g. {self.example}), got {value!r}", param, ctx
            )


class IsoDateTime(click.ParamType[datetime]):
    """An ISO date or date-time; without an offset it is read as UTC."""

    name = "ISO"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO date or date-time", param, ctx)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- the plan a command acts on, and who acts ------------------------------------------------------


def local_user() -> User:
    """Who acts on the command line: the local operator (every role but viewer), named by
    FLYWHEEL_ACTOR in the audit log."""
    from core.access import local_operator

    return local_operator()


def default_plan_id(store: Store) -> str:
    """The plan a command acts on when --plan is not given (core.plan_versions.default_plan:
    the newest non-demo plan, else the demo's)."""
    from core.plan_versions import default_plan, list_plans

    chosen = default_plan(list_plans(store))
    if chosen is None:
        raise PlanError(f"There is no plan in this store; run `{PROG} demo` or `plan import FILE`.")
    return chosen.plan_id


# -- commands and groups ---------------------------------------------------------------------------


class Command(click.Command):
    """A command whose callback returns an Outcome: run by ``run_outcome``, which turns it (or
    what it raised) into printed output and an exit status."""

    def __init__(self, *args: Any, uses_store: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.uses_store = uses_store
        self.renamed_to: str | None = None
        db_option(self)
        json_option(self)

    def invoke(self, ctx: click.Context) -> int:
        if self.renamed_to is not None:
            deprecation_line(f"`{ctx.command_path}`", f"`{PROG} {self.renamed_to}`")
        assert self.callback is not None
        return run_outcome(ctx, self.callback, uses_store=self.uses_store)


class Group(click.Group):
    """A noun's group: its commands, --db and --json, and its old spellings (``RENAMED``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        db_option(self)
        json_option(self)

    def leaf(
        self, name: str, *, help: str, description: str | None = None, store: bool = True
    ) -> Callable[[Callable[..., Outcome]], Command]:
        """Register a command: ``help`` is its line in the listing, ``description`` (default
        ``help``) the text of its own --help; ``store=False`` for one that needs no store."""

        def decorate(f: Callable[..., Outcome]) -> Command:
            command = click.command(
                name, cls=Command, help=description or help, short_help=help, uses_store=store
            )(f)
            self.add_command(command)
            return command

        return decorate

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they are defined, as --help lists them

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None:
            old = f"{self.name} {cmd_name}"
            if old in RENAMED:
                return renamed(cmd_name, RENAMED[old])
        return found


def renamed(old_name: str, new_path: str) -> click.Command:
    """The command at ``new_path`` under its old name, hidden from --help, printing one
    deprecation line when it runs."""
    target = resolve(new_path)
    alias = copy.copy(target)
    alias.name = old_name
    alias.hidden = True
    if isinstance(alias, Command):
        alias.renamed_to = new_path
    return alias


def resolve(path: str) -> click.Command:
    """The command at a path of names from the root, e.g. ``data ingest``."""
    from core.cli import cli

    ctx = click.Context(cli, info_name=PROG)
    command: click.Command = cli
    for name in path.split():
        assert isinstance(command, click.Group), path
        found = command.get_command(ctx, name)
        assert found is not None, path
        command = found
    return command


def noun_group(name: str, *, description: str | None = None) -> Group:
    """The group of one noun, with its help line from NOUNS."""
    short = NOUNS[name].help
    return Group(name, help=description or short, short_help=short)


def command_name(ctx: click.Context) -> str:
    """The command as typed, e.g. ``plan lint`` (``python -m core`` left off)."""
    return ctx.command_path.removeprefix(PROG).strip()


class _Deprecated(Group):
    """A group of the old release that holds only old spellings (``pii``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        prefix = f"{self.name} "
        return [old.removeprefix(prefix) for old in RENAMED if old.startswith(prefix)]


class Root(click.Group):
    """``python -m core``: imports a noun's module only when that noun is asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        db_option(self)
        json_option(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(NOUNS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        noun = NOUNS.get(cmd_name)
        if noun is not None:
            module = importlib.import_module(f"core.cli.{noun.module}")
            found: click.Command = module.command
            return found
        if cmd_name in RENAMED:
            return renamed(cmd_name, RENAMED[cmd_name])
        if any(old.startswith(f"{cmd_name} ") for old in RENAMED):
            return _Deprecated(cmd_name, hidden=True, help="the old spellings")
        return None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, noun.help) for name, noun in NOUNS.items()])

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        """Run one command line; exit with (or, with standalone_mode=False, return) its status."""
        code = run_line(self, sys.argv[1:] if args is None else list(args))
        if standalone_mode:
            sys.exit(code)
        return code


def walk(
    command: click.Command | None = None, prefix: str = ""
) -> Iterator[tuple[str, click.Command]]:
    """Every command a user can type (old spellings left out), with its object: ``plan lint``."""
    from core.cli import cli

    command = command or cli
    ctx = click.Context(command, info_name=PROG)
    assert isinstance(command, click.Group)
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        if isinstance(sub, click.Group):
            yield from walk(sub, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", sub


# -- running one command line ----------------------------------------------------------------------


def run_line(root: click.Group, argv: list[str]) -> int:
    """Parse and run; a usage error is one line on stderr and exit 2."""
    try:
        with root.make_context(PROG, argv) as ctx:
            result = root.invoke(ctx)
    except click.exceptions.Exit as done:  # --help
        return done.exit_code
    except click.exceptions.NoArgsIsHelpError as bare:
        group = bare.ctx.command
        assert isinstance(group, click.Group)
        every = group.list_commands(bare.ctx)
        shown = [n for n in every if not getattr(group.get_command(bare.ctx, n), "hidden", True)]
        names = shown or every  # a group of old spellings (pii) shows them
        return fail(
            f"{bare.ctx.command_path} needs a command: {', '.join(names)} "
            f"(see `{bare.ctx.command_path} --help`).",
            2,
        )
    except click.UsageError as usage:
        where = usage.ctx.command_path if usage.ctx is not None else PROG
        return fail(f"{usage.format_message().rstrip('.')} (see `{where} --help`)", 2)
    except click.ClickException as problem:
        return fail(problem.format_message(), 2)
    except Exception:  # a bug while the line was read (a command's own run has run_outcome)
        command = " ".join([a for a in argv if not a.startswith("-")][:2])
        log = _log_unexpected(command)
        return fail(f"{command or PROG}: unexpected error; the traceback is in {log}", 3)
    return result if isinstance(result, int) else 0


def _one_line(text: str, limit: int = 2) -> str:
    """A message cut to its first ``limit`` non-empty lines, joined (DuckDB's run to 28)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:limit]) if lines else ""


def _log_unexpected(command: str) -> Path:
    """Write the current exception's traceback (keys scrubbed) to a log file; return it."""
    import tempfile
    import traceback

    from core.secrets import scrub_secrets

    folder = Path(tempfile.gettempdir()) / "flywheel-logs"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    path = folder / f"{stamp}-{command.replace(' ', '-') or 'cli'}.log"
    path.write_text(f"{PROG} {command}\n{scrub_secrets(traceback.format_exc())}")
    return path


def fail(message: str, code: int) -> int:
    """Print one line on stderr; return the exit status."""
    from core.secrets import scrub_secrets

    # The last line of defence: a message may quote a server's text.
    one = " ".join(scrub_secrets(message).split("\n"))
    print(f"error: {one}", file=sys.stderr)
    return code


class _NoDuckDBError(Exception):
    """Stands in for duckdb.Error while DuckDB is not imported: then none can have been raised."""


def _duckdb_error() -> type[Exception]:
    """duckdb.Error once a command has imported DuckDB (an except clause evaluates this only
    when an exception reaches it, so the commands that never touch DuckDB never import it)."""
    duckdb = sys.modules.get("duckdb")
    return _NoDuckDBError if duckdb is None else duckdb.Error


def run_outcome(ctx: click.Context, callback: Callable[..., Any], *, uses_store: bool) -> int:
    """Run one command's callback; return its exit status: 0 done, 1 a check failed, 2 bad
    input or an environment problem (one line on stderr), 3 an unexpected error (one line naming
    the command and the log file that holds the traceback)."""
    command = command_name(ctx)
    db = store_path()
    params = dict(ctx.params)
    for target, (old, new, value) in ctx.meta.get(_RENAMED_VALUES, {}).items():
        if params.get(target) is not None:
            return fail(f"Give {new} or {old}, not both (see `{ctx.command_path} --help`).", 2)
        params[target] = value
    try:
        if uses_store:
            from core.store import Store

            outcome = callback(Store(db), **params)
        else:
            outcome = callback(**params)
    except FlywheelError as exc:
        return fail(str(exc), 2)
    except click.UsageError as exc:
        return fail(f"{exc.format_message().rstrip('.')} (see `{ctx.command_path} --help`)", 2)
    except RecursionError:
        return fail(
            f"{command}: the input is nested too deeply (beyond {sys.getrecursionlimit()} "
            "levels); flatten it.",
            2,
        )
    except _duckdb_error() as exc:
        from core.settings import default_db_path

        return fail(
            f"{command}: the store {db or default_db_path()} cannot be used: {_one_line(str(exc))}",
            2,
        )
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        return fail(f"{command}: cannot use{where}: {exc.strerror or _one_line(str(exc))}", 2)
    except Exception:
        log = _log_unexpected(command)
        return fail(f"{command}: unexpected error; the traceback is in {log}", 3)
    assert isinstance(outcome, Outcome), command
    if wants_json():
        print(json.dumps(outcome.data, default=str))
    elif outcome.text:
        print(outcome.text)
    return outcome.exit_code
