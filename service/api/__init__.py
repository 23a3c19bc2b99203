"""HTTP layer: schemas, dependencies, routes and error mapping (FastAPI)."""
