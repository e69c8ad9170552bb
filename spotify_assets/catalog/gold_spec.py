"""The vocabulary of gold specs (README: Gold): what each gold table is, as data.

A source table's catalog entry carries one spec: an SCD2 dimension, a calendar or a
point-in-time fact. Daily aggregates over the fact are catalog entries of their own. Both the
Databricks pipeline (`dlt/`) and the local runner (`resources/gold_runner.py`) read these specs;
predicates and measures are Spark SQL, so the same text runs on Sail and on Databricks.
"""

from dataclasses import dataclass

from spotify_assets.catalog.rules import Rule

START_AT = "__START_AT"
END_AT = "__END_AT"
# What a point-in-time fact's build records of keys it found in no dimension row (late members
# of a lookup, days missing from a reference's calendar), per day: the dimension's source table
# name, the key as text, and how many fact rows hold it.
UNMATCHED_DIMENSION, UNMATCHED_KEY, UNMATCHED_FACTS = "dimension", "key", "facts"


@dataclass(frozen=True)
class Scd2Dimension:
    """AUTO CDC into SCD type 2: one row per version, `__START_AT`..`__END_AT` (NULL: current).

    Versions are ordered by `effective_time`, then by `change_sequence`, the source's commit
    order (NULL for an image of the current row, which comes first). The effective time is the
    business time (never load time), but never before a change preceding it in the sequence: a
    row restored with its old time is current again. Silver stores it with each version, so a
    reader that orders rows by a value of each row (AUTO CDC's `sequence_by`) orders them right.
    At equal time and sequence an upsert comes before a delete. A change to a `tracked` column
    starts a version; a change to the other columns only updates the version in place. A row
    matching `delete_when` closes the current version. A version that lasts no time is not
    kept."""

    tracked: tuple[str, ...]
    effective_time: str
    change_sequence: str
    delete_when: str
    expectations: tuple[Rule, ...] = ()
    scd_type: int = 2

    @property
    def sequence_by(self) -> str:
        """AUTO CDC's `sequence_by`: effective time, then the change sequence (Spark SQL)."""
        return f"struct({self.effective_time}, {self.change_sequence})"


@dataclass(frozen=True)
class Calendar:
    """Reference data that only grows: gold is silver's current rows (SCD type 1)."""

    expectations: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Lookup:
    """Columns of a dimension carried by a fact row as they were at the fact's time."""

    dimension: str  # the dimension's source table name
    on: str  # the fact column holding the dimension's key
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Reference:
    """A dimension that must hold every fact row's key (the calendar its days are in): nothing
    is carried from it; a row whose key it lacks still reaches gold, and a check names the
    keys."""

    dimension: str  # the dimension's source table name
    on: str  # the fact column holding the dimension's key


@dataclass(frozen=True)
class PointInTimeFact:
    """One row per key, partitioned by `date_column`, with `lookups` resolved at `time_column`.

    A fact older than the first version of its dimension row takes that first version; one with
    no dimension row at all gets NULLs until the row arrives (its day is then rebuilt)."""

    time_column: str
    date_column: str
    lookups: tuple[Lookup, ...]
    expectations: tuple[Rule, ...] = ()
    references: tuple[Reference, ...] = ()


GoldSpec = Scd2Dimension | Calendar | PointInTimeFact


@dataclass(frozen=True)
class Measure:
    name: str
    expression: str  # a Spark SQL aggregate over the fact's rows
    description: str = ""


@dataclass(frozen=True)
class Aggregate:
    """A daily aggregate of the gold fact, partitioned like it."""

    name: str
    description: str
    group_by: tuple[str, ...]
    measures: tuple[Measure, ...]
    expectations: tuple[Rule, ...] = ()
