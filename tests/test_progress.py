"""Resumable attacks (robust_mnv1.evaluation.progress): run a batch at a time, stopped part-way and
resumed, an attack gives an uninterrupted call's per-image results bit for bit; C&W, stopped inside
its binary search and resumed from the last finished step of it, gives the uninterrupted result."""

import copy
import json
import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from attacks import APGD, APGDT, FGSM, PGD, CarliniWagnerL2
from robust_mnv1.config.spec import attack_spec
from robust_mnv1.evaluation.progress import AttackProgress, attack_in_parts
from robust_mnv1.evaluation.protocol import run_apgd, run_cw, run_pgd

from ._attack_models import synthetic_batch, trained_cnn

IDENTITY = {"record": "r", "config_hash": "c", "weights": "w", "parent": None}
ATTACKS = {
    "pgd": PGD(eps=8 / 255, steps=4, batch_size=16, seed=3),
    "pgd-restarts": PGD(eps=4 / 255, steps=3, restarts=2, batch_size=16, seed=5),
    "apgd-ce": APGD(eps=8 / 255, steps=6, batch_size=16, seed=1),
    "apgd-t": APGDT(eps=8 / 255, steps=4, n_target_classes=2, batch_size=16, seed=2),
    "fgsm": FGSM(eps=8 / 255, batch_size=16),
}


class Stopped(Exception):
    """The stand-in for a kill: raised by :class:`StopAfter` in the middle of an attack."""


class StopAfter(nn.Module):
    """``model``, counting its forward calls and raising :class:`Stopped` after ``limit`` of them."""

    def __init__(self, model: nn.Module, limit: float = float("inf")) -> None:
        super().__init__()
        self.model, self.limit, self.calls = model, limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.limit:
            raise Stopped
        return self.model(x)


@pytest.fixture(scope="module")
def data():
    x, y = synthetic_batch(72, seed=9)  # four and a half batches of 16
    return trained_cnn(0), x, y


def keeping_images(attack):
    """A copy of ``attack`` that appends each call's adversarial images to its ``images`` list:
    the masks alone seldom show which random start a batch drew, its images always do."""

    class Keeping(type(attack)):
        def __call__(self, *args, **kwargs):
            res = super().__call__(*args, **kwargs)
            self.images.append(res.x_adv)
            return res

    kept = copy.copy(attack)
    kept.__class__, kept.images = Keeping, []
    return kept


@pytest.mark.parametrize("name", ATTACKS)
def test_a_batch_at_a_time_is_one_call(data, name):
    model, x, y = data
    res = ATTACKS[name](model, x, y)
    attack = keeping_images(ATTACKS[name])
    correct, success = attack_in_parts(attack, model, x, y)
    assert torch.equal(correct, res.clean_correct) and torch.equal(success, res.success)
    assert torch.equal(torch.cat(attack.images), res.x_adv)
    assert len(attack.images) == 5
    assert 0 < int(success.sum()) < int(correct.sum())  # the comparison has both outcomes in it


@pytest.mark.parametrize("name", ["pgd", "apgd-t"])
def test_a_stopped_attack_resumes_to_the_uninterrupted_result(data, name, tmp_path):
    model, x, y = data
    path = tmp_path / "progress.json"
    whole, uninterrupted = StopAfter(model), keeping_images(ATTACKS[name])
    expected = attack_in_parts(uninterrupted, whole, x, y)
    with pytest.raises(Stopped):
        attack_in_parts(
            ATTACKS[name], StopAfter(model, whole.calls // 2), x, y, AttackProgress(path, IDENTITY), "k"
        )
    kept = json.loads(path.read_text())["calls"]["k"]["batches"]
    assert 0 < kept < 5
    rest, resumed_attack = StopAfter(model), keeping_images(ATTACKS[name])
    progress = AttackProgress(path, IDENTITY)
    assert progress.seconds_before > 0
    resumed = attack_in_parts(resumed_attack, rest, x, y, progress, "k")
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected, strict=True))
    # The kept batches were not attacked again; the others drew what they drew uninterrupted.
    assert len(resumed_attack.images) == 5 - kept
    assert all(
        torch.equal(a, b) for a, b in zip(resumed_attack.images, uninterrupted.images[kept:], strict=True)
    )
    assert 0 < rest.calls < whole.calls
    # A finished call is taken whole from the file: no forward pass at all.
    again = StopAfter(model, limit=0)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            attack_in_parts(ATTACKS[name], again, x, y, AttackProgress(path, IDENTITY), "k"),
            expected,
            strict=True,
        )
    )


def test_the_protocol_chain_resumes_mid_eps_grid(data, tmp_path):
    """PGD's eps grid and margin stage, then APGD on their survivors, stopped inside the chain."""
    model, x, y = data
    pgd = attack_spec(
        "pgd",
        OmegaConf.create(
            dict(
                eps_255=[2, 8],
                steps=3,
                restarts=1,
                random_start=True,
                loss="ce",
                margin_at_255=[8],
                batch_size=16,
            )
        ),
    )
    whole = StopAfter(model)
    expected = run_pgd(whole, x, y, pgd, seed=0)
    path = tmp_path / "pgd.json"
    with pytest.raises(Stopped):
        run_pgd(StopAfter(model, whole.calls * 2 // 3), x, y, pgd, 0, AttackProgress(path, IDENTITY))
    assert "pgd@2:ce" in json.loads(path.read_text())["calls"]  # stopped past the first eps
    rest = StopAfter(model)
    resumed = run_pgd(rest, x, y, pgd, 0, AttackProgress(path, IDENTITY))
    assert [e.to_dict() for e in resumed] == [e.to_dict() for e in expected]
    assert rest.calls < whole.calls * 2 // 3

    apgd = attack_spec(
        "apgd",
        OmegaConf.create(
            dict(
                eps_255=[8],
                ce_steps=4,
                targeted_steps=3,
                n_target_classes=2,
                batch_size=16,
                square={"samples": 0, "queries": 1},
            )
        ),
    )
    before = {8: torch.from_numpy(expected[-1].mask())}
    whole = StopAfter(model)
    (expected_apgd,) = run_apgd(whole, x, y, apgd, 0, before)
    path = tmp_path / "apgd.json"
    with pytest.raises(Stopped):
        run_apgd(StopAfter(model, whole.calls // 2), x, y, apgd, 0, before, AttackProgress(path, IDENTITY))
    (resumed_apgd,) = run_apgd(model, x, y, apgd, 0, before, AttackProgress(path, IDENTITY))
    assert resumed_apgd.to_dict() == expected_apgd.to_dict()


def test_progress_of_other_weights_or_code_or_a_broken_file_is_not_used(data, tmp_path, caplog):
    model, x, y = data
    path = tmp_path / "progress.json"
    progress = AttackProgress(path, IDENTITY)
    attack_in_parts(ATTACKS["pgd"], model, x, y, progress, "k")
    assert AttackProgress(path, IDENTITY).calls.keys() == {"k"}
    caplog.set_level(logging.INFO)
    assert AttackProgress(path, {**IDENTITY, "weights": "other"}).calls == {}
    state = json.loads(path.read_text())
    state["identity"]["code"] = "an earlier version"
    path.write_text(json.dumps(state))
    assert AttackProgress(path, IDENTITY).calls == {}
    assert caplog.text.count("made for other weights, config or code") == 2
    path.write_text('{"identity": ')
    assert AttackProgress(path, IDENTITY).calls == {}
    assert "unreadable attack progress" in caplog.text
    progress.discard()
    assert not path.exists()


def test_a_caller_generator_needs_the_native_backend(data):
    model, x, y = data
    with pytest.raises(ValueError, match="generator= needs backend='native'"):
        PGD(eps=8 / 255, steps=1, backend="foolbox")(model, x, y, generator=torch.Generator())


class MemoryCheckpoint:
    """A :class:`attacks.cw_search.SearchCheckpoint` in a dict, counting what it is asked for."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.loads = self.hits = 0

    def load(self, key):
        self.loads += 1
        self.hits += key in self.states
        return self.states.get(key)

    def save(self, key, state):
        self.states[key] = state


CW = dict(steps=8, binary_search_steps=4, batch_size=40)  # two chunks of the 72 images: 40 + 32


def test_a_stopped_cw_resumes_from_its_last_binary_search_step(data):
    model, x, y = data
    whole = StopAfter(model)
    expected = CarliniWagnerL2(**CW)(whole, x, y)
    assert 0 < int(expected.success.sum()) < int(expected.clean_correct.sum())
    checkpoint, stopped = MemoryCheckpoint(), StopAfter(model, whole.calls * 3 // 4)
    with pytest.raises(Stopped):  # in the second chunk's search
        CarliniWagnerL2(**CW, checkpoint=checkpoint)(stopped, x, y)
    steps_done = sorted(int(s["steps_done"]) for s in checkpoint.states.values())
    assert len(steps_done) == 2 and 0 < steps_done[0] < steps_done[1] == CW["binary_search_steps"]
    rest = StopAfter(model)
    resumed = CarliniWagnerL2(**CW, checkpoint=checkpoint)(rest, x, y)
    for field in ("x_adv", "success", "clean_correct", "l2"):
        assert torch.equal(getattr(resumed, field), getattr(expected, field)), field
    assert checkpoint.hits == 2  # both chunks went on from their kept search
    # Done twice: the clean pass (a call per chunk), at most one binary-search step (``steps`` calls)
    # and the finished first chunk's line search (12 bisection calls and one for its clean margins).
    assert rest.calls <= whole.calls - stopped.limit + 2 + CW["steps"] + 13


def test_cw_takes_up_no_search_of_other_settings_or_images(data):
    model, x, y = data
    checkpoint = MemoryCheckpoint()
    CarliniWagnerL2(**CW, checkpoint=checkpoint)(model, x, y)
    longer = {**CW, "steps": 9}
    expected = CarliniWagnerL2(**longer)(model, x, y)
    res = CarliniWagnerL2(**longer, checkpoint=checkpoint)(model, x, y)
    assert torch.equal(res.x_adv, expected.x_adv)
    CarliniWagnerL2(**CW, checkpoint=checkpoint)(model, x[1:], y[1:])  # other chunks: other images
    assert checkpoint.hits == 0 and len(checkpoint.states) == 6
    with pytest.raises(ValueError, match="checkpoint= needs backend='native'"):
        CarliniWagnerL2(backend="foolbox", checkpoint=checkpoint)


def test_the_cw_record_resumes_through_its_progress_file(data, tmp_path):
    model, x, y = data
    spec = attack_spec(
        "cw",
        OmegaConf.create(
            dict(CW, confidence=0.0, lr=0.01, initial_const=1e-3, l2_radii=[0.5, 1.0], batch_size=128)
        ),
    )
    whole, stopped = StopAfter(model), StopAfter(model)
    expected = run_cw(whole, x, y, spec, seed=0)
    path = tmp_path / "cw.json"
    stopped.limit = whole.calls // 2
    with pytest.raises(Stopped):
        run_cw(stopped, x, y, spec, 0, AttackProgress(path, IDENTITY))
    progress = AttackProgress(path, IDENTITY)
    assert progress.seconds_before > 0 and progress.search_path.exists()
    assert AttackProgress(path, {**IDENTITY, "weights": "other"})._searches() == {}
    rest = StopAfter(model)
    assert run_cw(rest, x, y, spec, 0, progress).to_dict() == expected.to_dict()
    # Done twice: the clean pass (one chunk, one call) and at most one binary-search step.
    assert rest.calls <= whole.calls - stopped.limit + 1 + CW["steps"]
    progress.discard()
    assert not path.exists() and not progress.search_path.exists()
