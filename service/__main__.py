"""``python -m service``: the service with every setting from the environment (``SPARTAN_*``)."""

import sys

from service.errors import SettingsError
from service.serve import run
from service.settings import load_settings

try:
    settings = load_settings()
except SettingsError as exc:
    sys.exit(f"python -m service: error: {exc}")
run(settings)
