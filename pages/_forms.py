"""Widgets generated from the plan's Pydantic models: a field's type picks its widget, and its
description becomes the help text. Values go in from a base copy of the plan and come back as
plain data; validation stays on the model (core.plan) and the linter (core.lint).
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date
from typing import Any, Literal, Union, get_args, get_origin

import pandas as pd
import streamlit as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from core.labels import label
from core.plan import FILTER_KINDS

LONG_TEXT = {"prompt_template", "business_goal", "notes", "purpose", "student_system_message"}

_READ_ONLY: ContextVar[bool] = ContextVar("plan_form_read_only", default=False)


@contextmanager
def read_only(on: bool) -> Iterator[None]:
    """Widgets made inside are disabled when ``on`` (a user who may not edit plans reads the
    plan in the same form). A context variable, not a module flag: sessions run in threads."""
    token = _READ_ONLY.set(on)
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


def label_of(name: object) -> str:
    """A field's human label from core.labels: ``mde`` → ``Minimum detectable effect``."""
    return label(name)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _clean(value: Any) -> Any:
    """pandas' missing values back to None."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def edit_model(model: type[BaseModel], data: dict[str, Any], key: str) -> dict[str, Any]:
    """One widget per field of ``model``, seeded from ``data``; returns the edited data."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        out[name] = edit_field(name, info, data.get(name), f"{key}.{name}")
    return out


def edit_field(name: str, info: FieldInfo, value: Any, key: str) -> Any:
    """The widget for one field, by its type (disabled inside ``read_only(True)``)."""
    off = _READ_ONLY.get()
    annotation, optional = _strip_optional(info.annotation)
    label, help_text = label_of(name), info.description
    origin = get_origin(annotation)
    if _is_model(annotation):
        st.markdown(f"**{label}** — {help_text}" if help_text else f"**{label}**")
        return edit_model(annotation, value or {}, key)
    if origin is list:
        (item,) = get_args(annotation)
        if _is_model(item):
            return edit_rows(item, value or [], key, label=label, help_text=help_text)
        if get_origin(item) is Literal:
            options = list(get_args(item))
            return st.multiselect(
                label,
                options,
                default=value or [],
                format_func=label_of,
                help=help_text,
                key=key,
                disabled=off,
            )
        text = st.text_input(
            label,
            ", ".join(str(v) for v in value or []),
            help=f"{help_text} Comma-separated." if help_text else "Comma-separated.",
            key=key,
            disabled=off,
        )
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if item is float:
            try:
                return [float(p) for p in parts]
            except ValueError:
                return parts  # the model rejects it and the lint panel names the field
        return parts
    if origin is Literal:
        options = list(get_args(annotation))
        index = options.index(value) if value in options else 0
        return st.selectbox(
            label,
            options,
            index=index,
            format_func=label_of,
            help=help_text,
            key=key,
            disabled=off,
        )
    if annotation is bool:
        return st.toggle(label, value=bool(value), help=help_text, key=key, disabled=off)
    if annotation is int:
        return st.number_input(
            label,
            value=None if value is None else int(value),
            step=1,
            help=help_text,
            key=key,
            disabled=off,
        )
    if annotation is float:
        return st.number_input(
            label,
            value=None if value is None else float(value),
            step=0.01,
            format="%g",
            help=help_text,
            key=key,
            placeholder="not set" if optional else None,
            disabled=off,
        )
    if annotation is date:
        current = date.fromisoformat(value) if isinstance(value, str) and value else value
        chosen = st.date_input(label, value=current, help=help_text, key=key, disabled=off)
        return chosen.isoformat() if isinstance(chosen, date) else None
    if name in LONG_TEXT:
        return st.text_area(label, value or "", help=help_text, key=key, disabled=off)
    return st.text_input(label, value or "", help=help_text, key=key, disabled=off)


def _column(name: str, info: FieldInfo) -> Any:
    annotation, _ = _strip_optional(info.annotation)
    label, help_text = label_of(name), info.description
    if get_origin(annotation) is Literal:
        return st.column_config.SelectboxColumn(
            label,
            options=list(get_args(annotation)),
            format_func=label_of,
            help=help_text,
            required=True,
        )
    if annotation is bool:
        return st.column_config.CheckboxColumn(label, help=help_text)
    if annotation in (int, float):
        return st.column_config.NumberColumn(
            label, help=help_text, step=1 if annotation is int else 0.01
        )
    return st.column_config.TextColumn(label, help=help_text)


def _to_cell(value: Any) -> Any:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else value


def _is_list_field(info: FieldInfo) -> bool:
    return get_origin(_strip_optional(info.annotation)[0]) is list


def _from_cell(value: Any, info: FieldInfo) -> Any:
    value = _clean(value)
    if _is_list_field(info):
        return [p.strip() for p in str(value or "").split(",") if p.strip()]
    annotation, _ = _strip_optional(info.annotation)
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation is bool:
        return bool(value)
    return value


def edit_rows(
    model: type[BaseModel],
    rows: list[dict[str, Any]],
    key: str,
    *,
    label: str,
    help_text: str | None,
) -> list[dict[str, Any]]:
    """A list of flat models as an editable table; list-valued cells are comma-separated."""
    fields = model.model_fields
    frame = pd.DataFrame(
        [{n: _to_cell(r.get(n)) for n in fields} for r in rows], columns=list(fields)
    )
    st.markdown(f"**{label}** — {help_text}" if help_text else f"**{label}**")
    edited = st.data_editor(
        frame,
        key=key,
        disabled=_READ_ONLY.get(),
        num_rows="fixed" if _READ_ONLY.get() else "dynamic",
        width="stretch",
        hide_index=True,
        column_config={n: _column(n, info) for n, info in fields.items()},
    )
    out: list[dict[str, Any]] = []
    for record in edited.to_dict("records"):
        if all(_clean(v) in (None, "") for v in record.values()):
            continue  # a blank row the editor added and the user left empty
        row = {n: _from_cell(record.get(n), fields[n]) for n in fields}
        out.append({n: v for n, v in row.items() if v is not None or not fields[n].is_required()})
    return out


def filter_columns() -> dict[str, FieldInfo]:
    """Every parameter any quality-filter kind has, in a stable order, ``rule`` first."""
    columns: dict[str, FieldInfo] = {}
    for kind in FILTER_KINDS.values():
        for name, info in kind.model_fields.items():
            columns.setdefault(name, info)
    ordered = {"rule": columns.pop("rule"), "expected_pass_rate": columns.pop("expected_pass_rate")}
    ordered.update(columns)
    return ordered


def _choices(kind: str, field: str) -> list[str]:
    """The values a filter's field may take: the Literal core.plan declares for it."""
    return [str(v) for v in get_args(FILTER_KINDS[kind].model_fields[field].annotation)]


def edit_filters(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The ordered quality filters as a table: one row per rule, its parameters in columns.

    A parameter that the row's rule does not take is ignored; a rule's parameters left blank
    take the rule's defaults.
    """
    columns = filter_columns()
    frame = pd.DataFrame(
        [{"order": i + 1, **{n: _to_cell(r.get(n)) for n in columns}} for i, r in enumerate(rows)],
        columns=["order", *columns],
    )
    config: dict[str, Any] = {n: _column(n, info) for n, info in columns.items()}
    config["order"] = st.column_config.NumberColumn(
        label("position"), help="Position in the pipeline; change it to move a rule.", step=1
    )
    config["rule"] = st.column_config.SelectboxColumn(
        label("rule"),
        options=list(FILTER_KINDS),
        format_func=label_of,
        required=True,
        help="The kind of filter.",
    )
    # Each column's choices are the Literal its filter declares in core.plan: one list.
    config["op"] = st.column_config.SelectboxColumn(
        label("op"), options=_choices("field_condition", "op")
    )
    config["language"] = st.column_config.SelectboxColumn(
        label("language"), options=_choices("code_parses", "language"), format_func=label_of
    )
    config["keep"] = st.column_config.SelectboxColumn(
        label("keep"), options=_choices("near_dedup", "keep"), format_func=label_of
    )
    edited = st.data_editor(
        frame,
        key=key,
        disabled=_READ_ONLY.get(),
        num_rows="fixed" if _READ_ONLY.get() else "dynamic",
        width="stretch",
        hide_index=True,
        column_config=config,
    )
    records = edited.to_dict("records")
    records.sort(key=lambda r: (_clean(r.get("order")) is None, _clean(r.get("order")) or 0))
    out: list[dict[str, Any]] = []
    for record in records:
        rule = _clean(record.get("rule"))
        if rule is None:
            continue
        kind = FILTER_KINDS.get(str(rule))
        if kind is None:
            out.append({"rule": rule})
            continue
        row: dict[str, Any] = {}
        for name, info in kind.model_fields.items():
            value = _from_cell(record.get(name), info)
            if value is not None:
                row[name] = value
        out.append(row)
    return out
