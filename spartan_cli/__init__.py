"""The ``spartan`` command: the composition root that wires the core, the service and the harness.

Nothing imports this package. Each module registers one group of subcommands
(:mod:`~spartan_cli.model`, :mod:`~spartan_cli.lab`, :mod:`~spartan_cli.serve`,
:mod:`~spartan_cli.loadtest`) and imports what a command needs inside that command, so
``spartan --help`` never loads torch.
"""
