"""The project's own errors. A `PrefLabError` is a problem with what the user gave or asked for (a config value, a
data file, a model, a run id) or with a service outside PrefLab; the CLI prints it as one line and exits 2. Anything
else is a bug and keeps its traceback (exit 1), so a real bug never passes for a config mistake."""


class PrefLabError(Exception):
    """Reported to the user as one line naming the field or file and the fix."""


class InputError(PrefLabError, ValueError):
    """A value, file, model or run the user named is unusable. A ValueError, so callers of the library that catch
    ValueError for bad arguments keep working."""
