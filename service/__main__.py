"""``python -m service``: the service with every setting from the environment (``SPARTAN_*``)."""

from service.serve import run
from service.settings import ServiceSettings

run(ServiceSettings())
