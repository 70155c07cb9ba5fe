"""The loraplex services: trainer, evaluator, server. They meet only through ``shared`` and HTTP."""
