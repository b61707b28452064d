"""CLI command groups that live beside their stage; farm/cli.py registers them."""
