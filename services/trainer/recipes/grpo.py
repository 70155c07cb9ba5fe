"""Reinforcement learning from a declarative grader (GRPO) with LoRA on TRL's ``GRPOTrainer``.

Reads top to bottom: set up the model, set up the data (prompts plus the fields the grader reads),
train, save, register.

Each prompt is answered ``num_generations`` times; the job's grader (``services.trainer.graders``,
no user code) scores every answer in [0, 1], and GRPO moves the policy towards the answers that
score above their group's mean, with a KL penalty of weight ``beta`` against the reference policy.

The reference is the starting policy. From the base, the policy is the base plus a fresh LoRA (its
B matrices are zero, so it starts equal to the base) and the reference is the same model with the
adapter switched off. From a registered SFT adapter (``base_adapter``), TRL adds a frozen "ref" copy
of the starting adapter and computes the reference log-probs under it, so the KL is measured
against the SFT policy, not the bare base; :func:`check_reference` makes sure that copy exists and
holds the starting weights before the first step (and after a resume), and refuses to train
otherwise. The grader goes into the manifest; the reward's mean and spread, the KL and a few
completions become job events.
"""

from __future__ import annotations

import json
from typing import Any

from services.trainer.graders import ScoreModelGrader, check_item_fields, grade
from services.trainer.hyperparameters import ReinforcementHyperparameters
from services.trainer.recipes.context import EventKind, RecipeContext, RecipeResult, Reporter
from services.trainer.recipes.data import longest_sequence, mean_sequence, prepare_data
from services.trainer.recipes.decisions import choose_attention
from services.trainer.recipes.reward_grader import BatchScore, load_scorer
from services.trainer.recipes.saving import finish
from services.trainer.recipes.setup import check_lora_servable, load_model
from services.trainer.recipes.training import decisions, fit_memory, setup_model, train
from shared.errors import SystemFailure

SAMPLES_PER_LOG = 3  # completions shown per logging step
SAMPLE_CHARS = 160  # each cut to this many characters


class ReferenceMismatch(SystemFailure):
    code = "grpo_reference_mismatch"


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or (conversational) a list of messages."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _short(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


class GraderReward:
    """The grader as TRL's reward function; keeps the latest batch's samples for the events."""

    def __init__(self, grader: Any, batch: BatchScore | None = None) -> None:
        self.grader = grader
        self.batch = batch  # a score_model grader scores whole batches with its reward model
        self.__name__ = grader.name  # TRL logs ``rewards/<name>/mean``
        self.samples: list[dict[str, Any]] = []

    def __call__(
        self, prompts: list[Any], completions: list[Any], item_json: list[str], **_: Any
    ) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if self.batch is not None:
            scores = self.batch(prompts, texts)
        else:
            scores = [
                grade(self.grader, text, json.loads(item))
                for text, item in zip(texts, item_json, strict=True)
            ]
        self.samples = [
            {
                "prompt": _short(completion_text(p[-1:] if isinstance(p, list) else p)),
                "completion": _short(t),
                "reward": round(s, 4),
            }
            for p, t, s in list(zip(prompts, texts, scores, strict=True))[:SAMPLES_PER_LOG]
        ]
        return scores


def check_reference(model: Any, starting_adapter: bool, beta: float) -> dict[str, Any]:
    """What the KL is measured against; refuse to train when it is not the starting policy."""
    if beta == 0:
        return {"kind": "none", "why": "beta is 0: no KL penalty"}
    if not starting_adapter:
        return {"kind": "base", "how": "the base with the (freshly zero) LoRA switched off"}
    if "ref" not in getattr(model, "peft_config", {}):
        raise ReferenceMismatch(
            "GRPO's reference policy would be the bare base model, not the starting SFT adapter "
            "(TRL made no frozen 'ref' copy of it); refusing to train against the wrong reference"
        )
    params = dict(model.named_parameters())
    pairs = [(n, n.replace(".default.", ".ref.")) for n in params if ".default." in n]
    differ = [n for n, r in pairs if r not in params or not params[n].data.equal(params[r].data)]
    if not pairs or differ:
        raise ReferenceMismatch(
            "GRPO's frozen 'ref' adapter does not hold the starting SFT adapter's weights "
            f"({len(differ)} of {len(pairs)} tensors differ); refusing to train",
            details=differ[:5],
        )
    return {"kind": "sft_adapter", "how": "TRL's frozen 'ref' copy of the starting adapter"}


def make_grpo_callback(
    reward: GraderReward, trainer: Any, ctx: RecipeContext, beta: float, reporter: Reporter
) -> Any:
    """Checks the reference at train begin (after a checkpoint load too) and reports samples."""
    from transformers import TrainerCallback

    starting = ctx.base_adapter_dir is not None

    class GrpoEvents(TrainerCallback):
        reference: dict[str, Any] | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            # Checked before any step: a resumed job's weights are only loaded into "default".
            if state.global_step == 0:
                self.reference = check_reference(trainer.model, starting, beta)
            elif self.reference is None:
                self.reference = check_reference_after_resume(trainer.model, starting, beta)
            reporter.event(
                f"GRPO reference: {self.reference['kind']}",
                data={"reference": self.reference, "step": state.global_step},
            )

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if "reward" in (logs or {}) and reward.samples:
                reporter.event(
                    f"step {state.global_step}: {len(reward.samples)} sampled completions",
                    type=EventKind.METRICS,
                    data={"step": state.global_step, "samples": reward.samples},
                )

    return GrpoEvents()


def check_reference_after_resume(model: Any, starting: bool, beta: float) -> dict[str, Any]:
    """After a resume the trained adapter has moved, so only the ref copy's presence is checked."""
    if beta == 0 or not starting:
        return check_reference(model, starting, beta)
    if "ref" not in getattr(model, "peft_config", {}):
        return check_reference(model, starting, beta)  # raises
    return {"kind": "sft_adapter", "how": "TRL's frozen 'ref' copy (restored from the checkpoint)"}


def run_grpo(ctx: RecipeContext) -> RecipeResult:
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    hp = ctx.spec.resolved()
    rl = ctx.spec.params
    block = ctx.spec.method.reinforcement
    if not isinstance(rl, ReinforcementHyperparameters) or block is None:
        raise SystemFailure("run_grpo needs a reinforcement job", code="wrong_recipe")
    grader = block.grader

    # 1. Model: the base (or the SFT adapter to start from), tokenizer, servable LoRA settings.
    if ctx.base_adapter_dir is None:
        check_lora_servable(ctx.spec, ctx.settings)
    setup = setup_model(ctx, hp)

    # 2. Data: prompts (chats ending in a user turn) and the fields the grader reads.
    data = prepare_data(ctx, setup.renderer, "prompt", hp)
    check_item_fields(grader, [(str(e.location), e.item) for e in data.train + data.validation])
    per_prompt = mean_sequence(data) + rl.max_completion_length
    fit = fit_memory(ctx, setup, data, hp, per_prompt * rl.num_generations)
    train_rows = [
        {"prompt": [m.to_dict() for m in e.messages], "item_json": e.item_json} for e in data.train
    ]
    attention = choose_attention(longest_sequence(data) + rl.max_completion_length)
    model = load_model(ctx, setup.base, setup.precision, attention)
    reward_model: dict[str, Any] | None = None
    if isinstance(grader, ScoreModelGrader):
        batch, reward_model = load_scorer(ctx, grader, setup)
        reward = GraderReward(grader, batch)
    else:
        reward = GraderReward(grader)

    # 3. Train, once the reference has been checked.
    events: Any = None

    def add_events(trainer: Any) -> None:
        nonlocal events
        events = make_grpo_callback(reward, trainer, ctx, hp.beta, ctx.reporter)
        trainer.add_callback(events)

    trained = train(
        ctx,
        hp,
        setup,
        fit,
        GRPOTrainer,
        GRPOConfig,
        model=model,
        train_rows=train_rows,
        # Held-out prompts are not sampled during training (each would cost num_generations
        # generations); the evaluator measures the adapter afterwards.
        eval_rows=[],
        config={
            # TRL counts GRPO's batch in completions: micro_batch prompts x num_generations.
            "per_device_train_batch_size": fit.micro_batch * rl.num_generations,
            "num_generations": rl.num_generations,
            "max_completion_length": rl.max_completion_length,
            "temperature": rl.temperature,
            "beta": hp.beta,
            "log_completions": False,
        },
        built=add_events,
        reward_funcs=[reward],
    )

    # 4. Save and 5. register, with the grader in the manifest.
    history = trained.trainer.state.log_history
    rewards = [h for h in history if "reward" in h]
    last = rewards[-1] if rewards else {}
    summary = {
        "grader": grader.model_dump(mode="json"),
        "reward_model": reward_model,
        "num_generations": rl.num_generations,
        "max_completion_length": rl.max_completion_length,
        "temperature": rl.temperature,
        "beta": hp.beta,
        "reference": events.reference if events is not None else None,
        "reward_curve": [
            [h["step"], round(float(h["reward"]), 6), round(float(h.get("kl", 0.0)), 6)]
            for h in rewards
        ],
    }
    metrics = {
        key: round(float(last[name]), 6)
        for key, name in (("reward_mean", "reward"), ("reward_std", "reward_std"), ("kl", "kl"))
        if name in last
    }
    tokens = int(trained.trainer.state.num_input_tokens_seen or 0) or int(
        per_prompt * rl.num_generations * len(train_rows) * trained.epochs
    )
    chosen = decisions(
        setup, fit, attention, trained, reference=summary["reference"], reward_function="grader"
    )
    return finish(
        ctx,
        trained,
        setup,
        data=data,
        hp=hp,
        decisions=chosen,
        trained_tokens=tokens,
        extra={"grader": summary["grader"], "reinforcement": summary},
        extra_metrics=metrics,
    )
