"""The ``qmix`` command line: one small module per subcommand, all logic in the core."""
