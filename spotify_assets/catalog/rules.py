"""The vocabulary of silver specs: how columns are cleaned, derived and validated.

Specs are data attached to catalog entries; `spotify_assets/silver/transform.py` turns them into
PySpark expressions. Predicates and derivations are Spark SQL, so the same text runs on Sail, on JVM
Spark and on Databricks.
"""

from dataclasses import dataclass
from enum import StrEnum


class Clean(StrEnum):
    TRIM = "trim"  # leading/trailing spaces; inner runs of spaces collapse to one
    UPPER = "upper"
    LOWER = "lower"
    INITCAP = "initcap"  # canonical case of a code list: 'premium' -> 'Premium'
    COUNTRY_CODE = "country_code"  # 'united states', ' us ' -> 'US'
    DASHES_TO_SPACES = "dashes_to_spaces"  # regexp_replace(col, '-', ' ')


class DriftPolicy(StrEnum):
    """What silver does with a bronze column the catalog does not declare."""

    CARRY = "carry"  # keep it, nullable, after the declared columns
    DROP = "drop"
    FAIL = "fail"


@dataclass(frozen=True)
class Rule:
    """A named validation: rows for which `predicate` is not true go to quarantine."""

    name: str
    predicate: str
    # A failure is an ERROR-severity check that `run` warns of (the others: WARN, counted). It
    # blocks nothing: the row is quarantined either way and could not reach gold.
    critical: bool = False
    # Why no row can fail it, where that holds by construction (a count of a group's rows is
    # positive): gold still applies it, but spends no query counting failures there cannot be.
    guaranteed_by: str = ""


@dataclass(frozen=True)
class Derived:
    name: str
    expression: str
    type: str  # Spark SQL type name
    description: str = ""


@dataclass(frozen=True)
class SilverSpec:
    clean: tuple[tuple[str, tuple[Clean, ...]], ...] = ()
    derived: tuple[Derived, ...] = ()
    rules: tuple[Rule, ...] = ()
    new_columns: DriftPolicy = DriftPolicy.CARRY


def in_list(column: str, values: tuple[str, ...]) -> str:
    """A predicate: `column` is one of `values` (literals quoted for SQL)."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"
