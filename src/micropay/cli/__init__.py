"""The command line: ``micropay serve``, ``micropay keys``, ``micropay bench``."""
