"""The HTTP inference service (routes, engine, registry, cache, auth, metrics); built in issue 4."""
