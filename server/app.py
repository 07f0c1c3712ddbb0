"""The Flower ServerApp: federates the shared prompt tensors (see :mod:`server.loop`)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from lopa_fed.federation import FedSettings

from .loop import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Parse the run config (unknown keys are refused) and run the round loop."""
    settings = FedSettings.from_run_config(context.run_config)
    if settings.server.secagg:  # SecAgg+ exists only on Flower's legacy workflow path
        from .secagg import run_secagg

        run_secagg(grid, context, settings)
        return
    run_federation(grid, settings)
