"""The command line's modes: each mode's flags parsed once into a checked object (`flags`), one
table of (check, run) per mode (`modes`), and flag parsing that says one line per mistake for
every console script (`parsing`)."""
