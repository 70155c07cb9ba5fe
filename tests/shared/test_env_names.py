"""`shared.env_names`: every LORAPLEX_* variable the services read is listed, and nothing else."""

from __future__ import annotations


def test_every_settings_variable_is_known_and_nothing_else() -> None:
    """shared.env_names lists every LORAPLEX_* variable so a typo stops start-up; this fails when a
    settings field is added without its name (which would make another service refuse it)."""
    from services.evaluator.config import EvaluatorSettings
    from services.server.config import ServerSettings
    from services.trainer.config import TrainerSettings
    from services.trainer.k8s_jobs import KubernetesJobSettings
    from shared.env_names import OTHER_VARIABLES, SETTINGS_VARIABLES

    fields = {
        f"LORAPLEX_{name.upper()}"
        for cls in (TrainerSettings, EvaluatorSettings, ServerSettings)
        for name in cls.model_fields
    } | {f"LORAPLEX_K8S_{name.upper()}" for name in KubernetesJobSettings.model_fields}
    assert fields - SETTINGS_VARIABLES == set(), "add these to shared/env_names.py"
    assert SETTINGS_VARIABLES - fields == set(), "stale names in shared/env_names.py"
    assert not SETTINGS_VARIABLES & OTHER_VARIABLES
