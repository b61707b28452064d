# First, before any driver imports httpx: farm/core/__init__.py keeps httpx's CLI out of the agent.
import farm.core  # noqa: F401
