"""Stage subcommands; see pipeline.cli for the protocol each module follows."""
