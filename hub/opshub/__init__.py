"""opshub: a JupyterHub distribution for infrastructure teams."""

__version__ = "0.1.0"
