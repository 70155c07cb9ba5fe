"""``python -m services.evaluator`` serves the API; ``python -m services.evaluator worker`` runs a
worker (the same as ``loraplex eval worker``)."""

from __future__ import annotations

import logging
import sys


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if sys.argv[1:2] == ["worker"]:
        from services.evaluator.config import EvaluatorSettings
        from services.evaluator.worker import Worker
        from shared.settings import load_settings

        Worker(load_settings(EvaluatorSettings)).serve(once="--once" in sys.argv)
        return
    from services.evaluator.api.app import main as serve

    serve()


if __name__ == "__main__":
    main()
