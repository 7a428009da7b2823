"""Guest calls against the lifecycle: deadlines, a stopped VMM, calls racing a pause,
and random interleavings of guest calls with pause, resume and destroy."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest

from wrennd.guest.protocol import CommandSpec
from wrennd.sandbox.errors import GuestUnavailable, LifecycleError, WrongState
from wrennd.sandbox.rwlock import PREEMPT_AFTER
from wrennd_sim.inproc import InProcess

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.uffd]

MEM_MIB = 32


def vmm_pid(manager: InProcess, sid: str) -> int:
    live = manager.service.registry.get(sid).live
    assert live is not None and live.vmm is not None
    return live.vmm.proc.pid


async def test_exec_racing_a_pause_answers(manager: InProcess) -> None:
    sid = (await manager.create("base", memory_mib=MEM_MIB))["id"]
    spec = CommandSpec(shell="sleep 1; echo done", timeout=10)
    running = asyncio.ensure_future(manager.exec(sid, spec))
    await asyncio.sleep(0.3)  # the exec holds the lock shared
    pausing = asyncio.ensure_future(manager.pause(sid))
    await asyncio.sleep(0.1)
    # Arrives while the pause waits: it queues behind it and finds the sandbox paused.
    late = asyncio.ensure_future(manager.exec(sid, CommandSpec(shell="echo late"), within=30))
    async with asyncio.timeout(30):
        result = await running
        assert result.ok and result.stdout == b"done\n"
        assert (await pausing)["state"] == "paused"
        with pytest.raises(WrongState):
            await late
    await manager.resume(sid)
    assert (await manager.exec(sid, CommandSpec(shell="echo again"), within=10)).ok


async def test_pause_ends_a_long_call_after_its_grace(manager: InProcess) -> None:
    sid = (await manager.create("base", memory_mib=MEM_MIB))["id"]
    long_call = asyncio.ensure_future(manager.exec(sid, CommandSpec(shell="sleep 120")))
    await asyncio.sleep(0.3)
    start = time.monotonic()
    async with asyncio.timeout(PREEMPT_AFTER + 30):
        paused = await manager.pause(sid)
        with pytest.raises(GuestUnavailable) as caught:
            await long_call
    assert paused["state"] == "paused"
    assert caught.value.data["reason"] == "preempted"
    assert PREEMPT_AFTER - 0.5 < time.monotonic() - start < PREEMPT_AFTER + 25


async def test_exec_against_a_stopped_vmm_answers_within_its_deadline(
    manager: InProcess,
) -> None:
    sid = (await manager.create("base", memory_mib=MEM_MIB))["id"]
    pid = vmm_pid(manager, sid)
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(GuestUnavailable) as caught:
            await manager.exec(sid, CommandSpec(shell="echo hi"), within=5)
        assert time.monotonic() - start < 5.5
        assert caught.value.data["reason"] == "vmm_stopped"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (await manager.exec(sid, CommandSpec(shell="echo back"), within=10)).ok


async def test_a_call_past_its_deadline_is_guest_unavailable(manager: InProcess) -> None:
    sid = (await manager.create("base", memory_mib=MEM_MIB))["id"]
    start = time.monotonic()
    with pytest.raises(GuestUnavailable) as caught:
        await manager.exec(sid, CommandSpec(shell="sleep 30"), within=1)
    assert caught.value.data["reason"] == "deadline"
    assert time.monotonic() - start < 3
    assert (await manager.exec(sid, CommandSpec(shell="true"), within=10)).ok


async def _guest_op(manager: InProcess, sid: str, kind: str) -> None:
    service = manager.service
    async with service.guest(sid, 20) as guest:
        if kind == "exec":
            assert (await guest.run(CommandSpec(shell="echo x; sleep 0.05"))).ok
        elif kind == "write":
            await guest.write_file("/tmp/w", os.urandom(4096))
        else:
            await guest.start(CommandSpec(shell="sleep 0.2"))


async def _one(manager: InProcess, sid: str, kind: str, delay: float) -> str:
    """Run one operation; its outcome is a result or a clear sandbox-layer error."""
    await asyncio.sleep(delay)
    try:
        async with asyncio.timeout(90):  # no call may hang
            if kind == "pause":
                await manager.pause(sid)
            elif kind == "resume":
                await manager.resume(sid)
            elif kind == "destroy":
                await manager.destroy(sid)
            else:
                await _guest_op(manager, sid, kind)
    except LifecycleError as e:
        return e.code
    return "ok"


@pytest.mark.timeout(1200)
async def test_random_interleavings_never_hang(manager: InProcess) -> None:
    rounds = int(os.environ.get("WRENND_INTERLEAVINGS", "200"))
    rng = random.Random(int(os.environ.get("WRENND_SEED", "13")))
    kinds = ["exec", "write", "process", "pause", "resume", "destroy"]
    weights = [4, 3, 2, 3, 3, 0.3]
    sid = (await manager.create("base", memory_mib=MEM_MIB))["id"]
    outcomes: dict[str, int] = {}
    for _ in range(rounds):
        ops = rng.choices(kinds, weights, k=rng.randint(2, 4))
        results = await asyncio.gather(*(_one(manager, sid, k, rng.uniform(0, 0.05)) for k in ops))
        for op, outcome in zip(ops, results, strict=True):
            key = f"{op}:{outcome}"
            outcomes[key] = outcomes.get(key, 0) + 1
            assert outcome in ("ok", "wrong_state", "guest_unavailable", "sandbox_not_found"), key
        found = manager.service.registry.find(sid)
        if found is None:  # destroyed: go on with a fresh sandbox
            sid = (await manager.create("base", memory_mib=MEM_MIB))["id"]
            continue
        # Always a state it can leave: running or paused (never stuck, never error).
        assert manager.get(sid)["state"] in ("running", "paused"), manager.get(sid)
        assert not found.lock.locked() and found.lock.readers == 0
    print("outcomes", sorted(outcomes.items()))
    assert outcomes.get("pause:ok", 0) > 0 and outcomes.get("exec:ok", 0) > 0
