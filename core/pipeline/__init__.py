"""The cycle's pipeline, written once for every engine.

``core.pipeline.stages`` holds what each stage *is*: which filter rules a cycle runs and in which
order (``pipeline_rules``), the copy both duplicate stages keep (``keep_rule``), which rules a
carried row is checked by again (``rules_to_recheck``), the consent rule, the language rule's
verdict, and the words of every carry reason and the PII warning. ``core.pipeline.run`` holds
the loop (``run_table_stages``: carried, window, consent, PII re-check, each filter) and the
bodies an engine supplies (``StageBodies``): core.cycles' DuckDB SQL, which ``cycle run`` uses on
the store, and core.portable's Ibis expressions for Spark and other backends.
tests/test_pipeline_parity.py checks in every test run that both keep the same rows for the same
reasons.
"""
