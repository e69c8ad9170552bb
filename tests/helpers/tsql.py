"""T-SQL as the tests read it: the dialect, and a parse that fails on anything sqlglot misreads."""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from spotify_assets.bronze.dialects import DIALECTS, Dialect, TsqlDialect

TSQL: TsqlDialect = DIALECTS[Dialect.TSQL]  # type: ignore[assignment]


def parse_tsql(sql: str) -> list[exp.Expression]:
    statements = [s for s in sqlglot.parse(sql, read="tsql") if s is not None]
    assert statements, sql
    for statement in statements:
        # sqlglot falls back to an opaque Command for text it does not understand.
        assert not list(statement.find_all(exp.Command)), f"not parsed as T-SQL:\n{sql}"
        # A keyword swallowed as an alias means the statement was misread.
        aliases = {a.alias.upper() for a in statement.find_all(exp.Alias)}
        assert not aliases & {"BEGIN", "END", "EXEC"}, f"misparsed:\n{sql}"
    return statements
