"""Loaded by schemathesis's Python (`.ci/schemathesis` puts this folder on PYTHONPATH).

CPython 3.11.7, the machine's Python, can raise `SystemError: AST constructor recursion depth
mismatch` from `ast.parse` when it runs deep in a recursion (a CPython bug fixed in later 3.11
releases). Hypothesis calls `ast.parse` only to describe a filter's lambda in a strategy's
repr, so the error ends a schemathesis run as a "Runtime Error" of the tool, with every
generated case passed. Here the description falls back to `lambda` when that happens; nothing
about what is generated or checked changes.
"""

try:
    from hypothesis.internal import lambda_sources as _sources

    _describe = _sources.lambda_description

    def _lambda_description(f):
        try:
            return _describe(f)
        except SystemError:
            return "lambda"

    _sources.lambda_description = _lambda_description
except Exception:  # hypothesis missing or changed: run unpatched
    pass
