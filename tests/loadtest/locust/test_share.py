"""How a step is split over Locust workers: every request exactly once, shares by users."""

from __future__ import annotations

from capplan.loadtest.locust.job import LocustJob, Share


def _job(**kw: object) -> LocustJob:
    base: dict[str, object] = dict(
        url="http://127.0.0.1:1/v1/completions",
        endpoint="completions",
        stream=True,
        bodies=[{"prompt": "a"}, {"prompt": "b"}],
        prompt_tokens=[None, None],
        mode="closed",
    )
    base.update(kw)
    return LocustJob(**base)  # type: ignore[arg-type]


def test_closed_loop_slots_cover_every_request_once_in_proportion_to_users() -> None:
    job = _job(users=5, requests=103)
    shares = [
        Share("a", 0, 2, slots=(0, 1, 2)),  # a worker holding 3 of the 5 users
        Share("b", 1, 2, slots=(3, 4)),
    ]
    parts = [share.closed_indices(job) or [] for share in shares]
    assert sorted(parts[0] + parts[1]) == list(range(103))
    assert not set(parts[0]) & set(parts[1])
    assert (len(parts[0]), len(parts[1])) == (63, 40)  # 3 and 2 of every 5 requests


def test_open_loop_arrivals_are_striped_over_workers_exactly_once() -> None:
    job = _job(mode="open", arrivals=[i * 0.1 for i in range(11)])
    seen = [i for position in range(3) for i in Share("w", position, 3).open_indices(job)]
    assert sorted(seen) == list(range(11))
    assert job.total == 11


def test_job_round_trips_through_json_for_remote_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    job = _job(users=2, requests=4, headers={"Authorization": "Bearer k"}, step="concurrency=2")
    job.save(tmp_path / "job.json")
    again = LocustJob.load(tmp_path / "job.json")
    assert again == job
    assert again.body(3) == {"prompt": "b"}
    assert again.request_id(7) == "7"
    share = Share("host/0", 0, 1, slots=(0, 1), t0=12.5)
    assert Share.from_dict(share.to_dict()) == share
