"""HTTP API of the evaluator (routes only; the logic lives in ``services.evaluator.service``)."""
