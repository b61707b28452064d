"""The coordinator: HTTP API, database, dispatch, the build pipeline, hooks and notifications.
It stands on farm.core only; the CLI (farm.cli, farm.commands) stands on top of everything."""
