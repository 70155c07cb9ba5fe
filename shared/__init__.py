"""Code shared by the loraplex services: settings, registry, artifact store, base models."""

__version__ = "0.1.0"
