"""Ingest benchmark: ``python bench/ingest.py [--file F] [--dirty-file F] [--skip-pandas]``.

Prints, measured in the same run on the same file, for the clean 1M-row log and for the dirty
one (``bench/make_log.py`` and ``bench/make_log.py --dirty`` write them: BOM, CRLF, about 0.5%
bad lines of every kind, a 2 MB prompt, in-file duplicates):
  ours      ingest + validation + PII redaction into a fresh store (core.ingest.ingest_file),
            with the read path it took (parallel or exact)
  bare      DuckDB's read_json of the same file (newline-delimited, errors ignored) into a
            fresh database file
  pandas    pandas.read_json(lines=True) + the same regular expressions and validators
            (pandas cannot skip malformed lines, so it reads a copy without them, made
            before timing starts: a head start for the baseline)
the ratios (ours / bare for both logs; pandas only on the clean one), PII texts/s over the
clean log's prompts, and each run's peak memory (max RSS). Each run is a separate process so
that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "bench" / "out" / "interactions_1m.jsonl"
DEFAULT_DIRTY = ROOT / "bench" / "out" / "interactions_1m_dirty.jsonl"


def run_ours(path: str, db: str) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from core.access import local_operator
    from core.ingest import ingest_file
    from core.store import Store

    store = Store(db)
    store.schema_version()
    start = time.perf_counter()
    result = ingest_file(store, path, user=local_operator())
    return {"seconds": time.perf_counter() - start, "result": result.to_dict()}


def run_bare(path: str, db: str) -> dict[str, object]:
    import duckdb

    con = duckdb.connect(db)
    con.execute("SET memory_limit = '1GB'")
    start = time.perf_counter()
    # Newline-delimited stated: a BOM before the first line leads auto-detection astray.
    con.execute(
        "CREATE TABLE raw AS SELECT * FROM read_json(?, format = 'newline_delimited', "
        "ignore_errors = true)",
        [path],
    )
    con.close()
    return {"seconds": time.perf_counter() - start}


def _luhn(value: str) -> bool:
    digits = [int(c) for c in value if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d >= 5 else d * 2) if i % 2 else d
    return total % 10 == 0


def _iban(value: str) -> bool:
    s = value.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _phone(value: str) -> bool:
    return 9 <= sum(c.isdigit() for c in value) <= 15


def _ipv6(value: str) -> bool:
    if not re.search(r"[0-9]", value):
        return False
    if re.fullmatch(r"(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}", value):
        return True
    return (
        len(value) >= 7
        and ":::" not in value
        and value.count("::") == 1
        and 2 <= len([g for g in value.split(":") if g]) <= 7
    )


def run_pandas(path: str) -> dict[str, object]:
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from core.privacy import DETECTORS, placeholder

    validators = {
        "fw_luhn_ok": _luhn,
        "fw_iban_ok": _iban,
        "fw_phone_ok": _phone,
        "fw_ipv6_ok": _ipv6,
    }
    start = time.perf_counter()
    frame = pd.read_json(path, lines=True, dtype=False)
    for column in ("prompt", "response", "system"):
        series = frame[column].astype("string")
        for detector in DETECTORS:
            mark = placeholder(detector.pii_type)
            pattern = re.compile(detector.pattern)
            if detector.validator is None:
                repl = (r"\1" + mark) if detector.keep_prefix else mark
                series = series.str.replace(pattern, repl, regex=True)
            else:
                check = validators[detector.validator]
                group = detector.group

                def swap(m: re.Match[str], check=check, group=group, mark=mark) -> str:
                    value = m.group(group)
                    if not check(value):
                        return m.group(0)
                    return m.group(0).replace(value, mark)

                series = series.str.replace(pattern, swap, regex=True)
        frame[column] = series
    return {"seconds": time.perf_counter() - start, "rows": len(frame)}


def run_pii_rate(path: str) -> dict[str, object]:
    import duckdb

    sys.path.insert(0, str(ROOT))
    from core.privacy import install_pii_macros

    con = duckdb.connect()
    install_pii_macros(con)
    con.execute(
        "CREATE TABLE texts AS SELECT prompt AS t FROM read_json(?, ignore_errors = true) "
        "WHERE prompt IS NOT NULL UNION ALL SELECT response FROM read_json(?, "
        "ignore_errors = true) WHERE response IS NOT NULL",
        [path, path],
    )
    n = con.execute("SELECT count(*) FROM texts").fetchall()[0][0]
    start = time.perf_counter()
    con.execute("SELECT sum(length(fw_redact(t))) FROM texts").fetchall()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "texts": n, "texts_per_s": n / seconds}


def _clean_copy(path: Path) -> Path:
    """The log without its malformed lines, for pandas (made once, not timed)."""
    clean = path.with_name(path.stem + ".clean.jsonl")
    if not clean.exists() or clean.stat().st_mtime < path.stat().st_mtime:
        with path.open("rb") as src, clean.open("wb") as dst:
            for line in src:
                try:
                    json.loads(line)
                except ValueError:
                    continue
                dst.write(line)
    return clean


def _child(kind: str, path: str) -> dict[str, Any]:
    """Run one measurement in a fresh process; add its peak RSS."""
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
        code = (
            "import json, resource, sys; sys.path.insert(0, {!r}); import ingest as b; "
            "r = b.run_{}({!r}{}); "
            "r['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
            "print(json.dumps(r, default=str))"
        ).format(
            str(ROOT / "bench"),
            kind,
            path,
            ", {!r}".format(str(Path(tmp) / "db.duckdb")) if kind in ("ours", "bare") else "",
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{done.stderr}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _compare(label: str, path: Path) -> dict[str, Any]:
    """Bare read_json, then ours, on one file; print both and the ratio."""
    size_mb = path.stat().st_size / 1e6
    print(f"{label} log: {path} ({size_mb:,.0f} MB)")
    bare = _child("bare", str(path))
    ours = _child("ours", str(path))
    result = dict(ours["result"])
    print(f"  bare read_json : {bare['seconds']:7.2f} s   peak {bare['peak_mb']:6.0f} MB")
    print(
        f"  ours           : {ours['seconds']:7.2f} s   peak {ours['peak_mb']:6.0f} MB   "
        f"{result['read_path']} path; {result['rows_read']:,} read, "
        f"{result['accepted']:,} accepted, {result['rejected']:,} rejected, "
        f"{result['duplicates']:,} duplicates"
    )
    ratio = float(ours["seconds"]) / float(bare["seconds"])
    print(f"  ours / bare    : {ratio:7.2f}x   (target ≤ 2.0x)")
    return {**ours, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=DEFAULT)
    parser.add_argument("--dirty-file", type=Path, default=DEFAULT_DIRTY)
    parser.add_argument("--skip-pandas", action="store_true")
    args = parser.parse_args()
    for path, make in ((args.file, ""), (args.dirty_file, " --dirty")):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run python bench/make_log.py{make} first.")
    clean = _compare("clean", args.file)
    dirty = _compare("dirty", args.dirty_file)
    if not args.skip_pandas:
        pandas = _child("pandas", str(_clean_copy(args.file)))
        print(f"pandas (clean)   : {pandas['seconds']:7.2f} s   peak {pandas['peak_mb']:6.0f} MB")
        print(
            f"pandas / ours    : {float(pandas['seconds']) / float(clean['seconds']):7.2f}x"
            "   (target ≥ 3x)"
        )
    rate = _child("pii_rate", str(args.file))
    print(
        f"PII detection    : {rate['texts_per_s']:,.0f} texts/s over {rate['texts']:,} texts "
        "(target ≥ 50,000)"
    )
    peak = max(float(clean["peak_mb"]), float(dirty["peak_mb"]))
    print(f"peak memory      : {peak:,.0f} MB for our 1M-row ingests (target < 2,048)")
    print(
        f"summary          : clean {clean['ratio']:.2f}x, dirty {dirty['ratio']:.2f}x "
        "bare read_json (targets ≤ 2.0x)"
    )


if __name__ == "__main__":
    main()
