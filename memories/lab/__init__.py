"""Research tools on top of the model core: throughput benchmarks, the paper's reproduction
grid, parent/label analysis, interleaved timing and host facts.

Nothing in the core (``memories``) or the service imports this package.
"""
