"""``python -m icam`` (and ``torchrun -m icam train …``): the same command line as ``icam``."""

from .cli import app

app(prog_name="icam")
