"""The command line's modes: each mode's flags parsed once into a checked object (`flags`), and
one table of (check, run) per mode (`modes`)."""
