"""The dashboard's page, script and styles (static/), served by farm/coordinator/api/dashboard.py."""
