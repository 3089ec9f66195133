"""Lint the PostgreSQL store's SQL files without a server.

The SQL the package ships (``stores/_postgres/migrations/*.sql`` and
``functions.sql``) is parsed with PostgreSQL's own parser, through pglast
(libpg_query): every statement with the SQL grammar, every plpgsql function
body with the plpgsql compiler in its parse-only mode (which also parses the
SQL statements and expressions inside it and knows the function's variables),
and every SQL-language body as SQL. sqlfluff, tried first, sees a function
body as one quoted string, so it cannot check the code that matters here.

On top of the grammar, the layout rules of the store (see functions.sql's
header): migrations hold schema changes only (no function but a DROP
FUNCTION), functions.sql holds functions only, each created with CREATE OR
REPLACE and written once, and no placeholder other than the four the store
fills in.

    python tools/lint_sql.py        # exit status 1 and one line a problem
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pglast
from pglast import ast, enums

PACKAGE = Path(__file__).resolve().parent.parent / "src/jobcredits_plugin/stores/_postgres"

#: What the store fills the placeholders with (psycopg.sql), for parsing. The
#: schema becomes "public": the offline plpgsql compiler resolves no other.
PLACEHOLDERS = {
    "schema": "public",
    "schema_name": "'jobcredits'",
    "lock_class": "19018",
    "reply_lock": "19026",
}

#: Arrays of the schema's row types, which the offline compiler (no catalog)
#: takes for arrays of records and refuses: parsed as text[] instead (types
#: are the server's to check; this lint checks the code).
_ROW_ARRAYS = re.compile(r"\bpublic\.\w+\[\]")

#: Statements a migration may hold: schema changes (and the rows a new table
#: starts with).
SCHEMA_STATEMENTS = (
    ast.CreateStmt,
    ast.IndexStmt,
    ast.CompositeTypeStmt,
    ast.AlterTableStmt,
    ast.DropStmt,
    ast.InsertStmt,
    ast.CreateSchemaStmt,
    ast.RenameStmt,
)


def fill(text: str) -> tuple[str, list[str]]:
    """``text`` with its placeholders filled in, and the unknown ones."""
    unknown = [name for name in re.findall(r"\{(\w*)\}", text) if name not in PLACEHOLDERS]
    stray = re.sub(r"\{\w*\}", "", text)
    if "{" in stray or "}" in stray:
        unknown.append("a brace that is no placeholder")
    for name, value in PLACEHOLDERS.items():
        text = text.replace("{" + name + "}", value)
    return text, unknown


def _line(text: str, start: int) -> int:
    """The line of the first word at or after ``start`` (past the comments
    that precede a statement)."""
    found = re.compile(r"(?:\s|--[^\n]*)*").match(text, start)
    return text.count("\n", 0, found.end() if found else start) + 1


def _option(fn: ast.CreateFunctionStmt, name: str) -> str | None:
    for opt in fn.options or ():
        if opt.defname == name:
            arg = opt.arg
            if isinstance(arg, ast.String):
                return str(arg.sval)
            if arg:  # AS: a list of one string (the body)
                return str(arg[0].sval)
    return None


def check_function(source: str, fn: ast.CreateFunctionStmt) -> list[str]:
    """Parse one function's body: plpgsql with the plpgsql compiler, SQL as SQL."""
    language = _option(fn, "language")
    try:
        if language == "plpgsql":
            pglast.parse_plpgsql(_ROW_ARRAYS.sub("text[]", source))
        elif language == "sql":
            pglast.parse_sql(_option(fn, "as") or "")
        else:
            return [f"language {language!r}: only plpgsql and sql are linted"]
    except pglast.parser.ParseError as exc:
        return [str(exc)]
    return []


def _name(fn: ast.CreateFunctionStmt) -> str:
    return ".".join(str(part.sval) for part in fn.funcname)


def _signature(fn: ast.CreateFunctionStmt) -> tuple[str, ...]:
    """The input parameters' types: what tells overloads apart."""
    out = (enums.FunctionParameterMode.FUNC_PARAM_OUT, enums.FunctionParameterMode.FUNC_PARAM_TABLE)
    return tuple(
        ".".join(str(n.sval) for n in p.argType.names) + "[]" * len(p.argType.arrayBounds or ())
        for p in fn.parameters or ()
        if p.mode not in out
    )


def lint_file(path: Path, *, functions: bool) -> list[str]:
    """The problems of one file (``functions``: functions.sql, else a migration)."""
    where = path.relative_to(PACKAGE.parent.parent.parent.parent)
    text, unknown = fill(path.read_text(encoding="utf-8"))
    problems = [f"{where}: unknown placeholder {name!r}" for name in unknown]
    try:
        statements = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        return [*problems, f"{where}: {exc}"]
    seen: set[tuple[str, ...]] = set()
    for raw in statements:
        stmt, start = raw.stmt, raw.stmt_location or 0
        line = _line(text, start)
        source = text[start : start + raw.stmt_len] if raw.stmt_len else text[start:]
        kind = type(stmt).__name__
        if isinstance(stmt, ast.CreateFunctionStmt):
            name = _name(stmt)
            if not functions:
                problems.append(f"{where}:{line}: {name}: functions belong in functions.sql")
            if not stmt.replace:
                problems.append(f"{where}:{line}: {name}: CREATE OR REPLACE, so migrate re-applies")
            signature = (name, *_signature(stmt))
            if signature in seen:
                problems.append(f"{where}:{line}: {name}: written twice")
            seen.add(signature)
            problems += [f"{where}:{line}: {name}: {p}" for p in check_function(source, stmt)]
        elif functions:
            problems.append(f"{where}:{line}: {kind}: schema changes go in migrations/")
        elif not isinstance(stmt, SCHEMA_STATEMENTS):
            problems.append(f"{where}:{line}: {kind}: not a schema change")
    return problems


def main() -> int:
    migrations = sorted((PACKAGE / "migrations").glob("*.sql"))
    problems = [p for path in migrations for p in lint_file(path, functions=False)]
    problems += lint_file(PACKAGE / "functions.sql", functions=True)
    numbers = [int(path.name.split("_", 1)[0]) for path in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"migrations are not numbered 1..{len(numbers)}: {numbers}")
    for problem in problems:
        print(problem)
    print(f"lint_sql: {len(migrations) + 1} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
