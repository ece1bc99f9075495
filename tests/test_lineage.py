from __future__ import annotations

from pbtune.lineage import schedule
from pbtune.store import SQLStore
from pbtune.store.base import CheckpointRef


def _ref(key: str, step: int) -> CheckpointRef:
    return CheckpointRef(key, step, "0" * 64, 1)


def test_schedule_concatenates_the_donors_segments() -> None:
    store = SQLStore("sqlite://")
    store.create_run("r", {})
    for i, lr in enumerate((0.1, 0.2, 0.3)):
        store.add_member("r", i, {"lr": lr})
    # member 0 explores at step 2; member 1 copies member 0 at step 4 and explores;
    # member 2 copies member 1 at step 8 (member 1's checkpoint of step 6) and explores.
    store.report("r", 0, 2, 1.0, checkpoint=_ref("m0-2", 2))
    store.set_hparams("r", 0, {"lr": 0.12}, expected_version=store.get_member("r", 0).version)
    store.report("r", 0, 4, 2.0, checkpoint=_ref("m0-4", 4))
    store.report("r", 1, 4, 0.5)
    m1 = store.apply_exploit("r", 1, expected_version=store.get_member("r", 1).version, donor_id=0, donor_step=4,
                             hparams={"lr": 0.12}, checkpoint=_ref("m1-4", 4), summary="")
    assert m1 is not None
    store.set_hparams("r", 1, {"lr": 0.144}, expected_version=m1.version)
    store.report("r", 1, 6, 3.0, checkpoint=_ref("m1-6", 6))
    store.report("r", 2, 8, 0.1)
    m2 = store.apply_exploit("r", 2, expected_version=store.get_member("r", 2).version, donor_id=1, donor_step=6,
                             hparams={"lr": 0.144}, checkpoint=_ref("m2-8", 8), summary="")
    assert m2 is not None
    store.set_hparams("r", 2, {"lr": 0.1728}, expected_version=m2.version)

    entries = schedule(store.events("r"), 2)
    assert [(e.step, e.hparams["lr"], e.member_id) for e in entries] == [
        (0, 0.1, 0),      # member 0's first segment
        (2, 0.12, 0),     # member 0 explored at step 2
        (4, 0.144, 1),    # member 1 took member 0's step-4 model and explored
        (6, 0.1728, 2),   # member 2 took member 1's step-6 model (at its own step 8) and explored
    ]
    own = schedule(store.events("r"), 0)
    assert [(e.step, e.hparams["lr"]) for e in own] == [(0, 0.1), (2, 0.12)]


def test_schedule_of_a_member_that_never_exploited_is_its_own() -> None:
    store = SQLStore("sqlite://")
    store.create_run("r", {})
    store.add_member("r", 0, {"x": 1})
    assert [(e.step, dict(e.hparams)) for e in schedule(store.events("r"), 0)] == [(0, {"x": 1})]


def test_copying_a_donor_checkpoint_from_before_its_own_exploit_at_that_step() -> None:
    """Member 2 copied member 1's own step-4 model, taken just before member 1 exploited member 0."""
    store = SQLStore("sqlite://")
    store.create_run("r", {})
    for i, lr in enumerate((0.1, 0.2, 0.3)):
        store.add_member("r", i, {"lr": lr})
    store.report("r", 0, 8, 5.0, checkpoint=_ref("m0-8", 8))  # member 0 is 8 steps ahead
    store.report("r", 1, 4, 2.0, checkpoint=_ref("m1-4-own", 4))
    store.report("r", 2, 4, 0.1)

    def exploit(member: int, donor: int, donor_step: int, hparams: dict, donor_key: str, copy: str) -> None:
        version = store.get_member("r", member).version
        done = store.apply_exploit("r", member, expected_version=version, donor_id=donor, donor_step=donor_step,
                                   hparams=hparams, checkpoint=_ref(copy, 4), summary="", donor_checkpoint=donor_key)
        assert done is not None

    exploit(1, 0, 8, {"lr": 0.1}, "m0-8", "m1-4-copy")      # member 1 now holds member 0's 8-step model
    exploit(2, 1, 4, {"lr": 0.2}, "m1-4-own", "m2-4-copy")  # ...but member 2 had taken member 1's own one
    entries = schedule(store.events("r"), 2)
    assert [(e.step, e.hparams["lr"], e.member_id) for e in entries] == [(0, 0.2, 1)]
    (pivot,) = [e for e in store.events("r", 2) if e.kind == "exploit"]
    assert (pivot.donor_checkpoint, pivot.checkpoint) == ("m1-4-own", "m2-4-copy")

    exploit(0, 1, 4, {"lr": 0.12}, "m1-4-copy", "m0-copy")  # this one did take member 1's copy
    ancestry = schedule(store.events("r"), 0)
    # member 1's copy was member 0's own 8-step model: 8 steps old, not 4
    assert [(e.step, e.hparams["lr"], e.member_id) for e in ancestry] == [(0, 0.1, 0), (8, 0.12, 0)]
