"""The dashboard's page, script and styles (static/), served by farm/api/dashboard.py."""
