"""Client side of mgte: the wire protocol and a client, using only the standard library.

PL/Python runs on the distribution's own Python, not the project's virtualenv, so
nothing here may import a third-party package.
"""

__version__ = "0.1.0"
