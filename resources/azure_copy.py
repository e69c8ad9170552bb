"""Bronze in the Azure environment: planned like the embedded default, copied by Data Factory.

The sensors and the CLI plan loads from the source's change feed and the bronze manifests on the
lake (`LocalCopyRunner.plan`, `first_change_day`, `store`), which work unchanged against Azure SQL
and ADLS. The copy itself is the Data Factory pipeline of `adf/` (`resources/adf.py`
`AdfClient.ingest`), which lands one parquet file per table under `bronze/<Table>/_adf/landing/`.
Committing those files into bronze (per-day files and the next manifest version, what
`LocalCopyRunner.copy` does after its reads) is not written yet, so a copy fails before starting
anything rather than land files that nothing makes visible.
"""

from __future__ import annotations

from collections.abc import Callable

from dagster import Failure

from resources.copy_runner import CopyResult, LocalCopyRunner
from spotify_assets.catalog import Table
from spotify_assets.windows import Window

MISSING = (
    "bronze on Azure is not implemented yet: Data Factory's copy (adf/, resources/adf.py "
    "AdfClient.ingest) lands bronze/<Table>/_adf/landing/<ADF run id>.parquet, but committing "
    "the landed file into bronze's per-day files and the next manifest version is not written. "
    "Until it is, load bronze with SPOTIFY_ENV=local against the same source and lake "
    "(SPOTIFY_SOURCE_ODBC, SPOTIFY_LAKE_URL): silver and gold on Databricks read it from there."
)


class AzureCopyRunner(LocalCopyRunner):
    """Plans like `LocalCopyRunner`; `copy` refuses until the ADF landing commit exists."""

    def copy(
        self,
        table: Table,
        requested: Window | None,
        run_id: str,
        from_watermark: bool = False,
        log: Callable[[str], None] = lambda message: None,
    ) -> CopyResult:
        raise Failure(
            description=f"{table.name}: {MISSING}",
            metadata={"table": table.name, "window": str(requested) if requested else "whole"},
        )
