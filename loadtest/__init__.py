"""The load generator for the HTTP service; built in issue 5."""
