"""``python -m services.evaluator`` serves the API; ``python -m services.evaluator worker`` runs a
worker (the same as ``loraplex eval worker``)."""

from __future__ import annotations

import sys


def main() -> None:
    from shared.logs import configure

    if sys.argv[1:2] == ["worker"]:
        configure("evaluator-worker")
        from services.evaluator.config import EvaluatorSettings
        from services.evaluator.worker import main as worker_main
        from shared.settings import load_settings

        raise SystemExit(worker_main(load_settings(EvaluatorSettings), once="--once" in sys.argv))
    from services.evaluator.api.app import main as serve

    serve()


if __name__ == "__main__":
    main()
