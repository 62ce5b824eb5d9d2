"""Exceptions raised for bad input or configuration, with messages meant for users."""


class Image3Error(Exception):
    """Base class of every error image3-dask reports to its users."""


class InputError(Image3Error):
    """An input file or association is unusable; the message names the file and the problem."""


class ConfigError(Image3Error):
    """An unknown step or parameter, or a parameter value that is not allowed."""


class StepNotAvailableError(Image3Error):
    """A step that this version cannot run (the user may skip it with ``skip=true``)."""
