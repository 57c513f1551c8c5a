"""Run the scenario's steps against a running :class:`DemoStack` and report each result.

A step applies its policy changes, then probes until the expected result shows up or a deadline
passes (agents learn about a policy within a second or two). A step expecting "denied" needs several
timed-out probes in a row, so neither a slow answer on a loaded host nor a deny that does not hold passes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .scenario import STEPS, WEB_PORT, Step
from .stack import DemoStack
from .web import HttpResult

SETTLE_TIMEOUT = 20.0  # how long a policy change may take to reach the agents
PROBE_TIMEOUT = 1.5  # a connection that does not open within this is "timed out"
DENY_CONFIRMATIONS = 3  # timed-out probes in a row that show "denied"


@dataclass(frozen=True)
class StepResult:
    step: Step
    passed: bool
    http: HttpResult
    udp: bool | None  # None: UDP not probed
    seconds: float  # from the policy change (or the step's start) to the expected result
    note: str = ""  # what else the step checked (the would-deny of a staged policy)

    @property
    def reachable(self) -> bool:
        return self.http.ok


async def _probe(stack: DemoStack, step: Step, udp: bool) -> tuple[HttpResult, bool | None]:
    """One HTTP GET (and one UDP datagram when asked), concurrently."""
    if not udp:
        return await stack.http(step.client, step.target, PROBE_TIMEOUT), None
    http, udp_ok = await asyncio.gather(
        stack.http(step.client, step.target, PROBE_TIMEOUT), stack.udp(step.client, step.target, PROBE_TIMEOUT)
    )
    return http, udp_ok


async def probe_until(
    stack: DemoStack, step: Step, *, udp: bool, within: float = SETTLE_TIMEOUT
) -> tuple[bool, HttpResult, bool | None, float]:
    """Probe ``step`` until HTTP (and UDP when asked) show the expected reachability; (passed, http, udp, seconds).

    "Reachable" is shown by one answer. "Denied" needs DENY_CONFIRMATIONS timed-out probes in a row
    (a loaded host can delay one answer past the timeout; a policy not there yet lets one through).
    ``seconds`` counts from the start to the first probe of the result.
    """
    started = time.monotonic()
    deadline = started + within
    streak, first_match = 0, 0.0
    while True:
        probe_started = time.monotonic() - started
        http, udp_ok = await _probe(stack, step, udp)
        matches = http.ok == step.reachable and (udp_ok is None or udp_ok == step.reachable)
        if matches:
            if streak == 0:
                first_match = probe_started
            streak += 1
            if step.reachable or streak >= DENY_CONFIRMATIONS:
                return True, http, udp_ok, first_match
            continue
        streak = 0
        if time.monotonic() > deadline:
            return False, http, udp_ok, time.monotonic() - started
        await asyncio.sleep(0.2)


async def run_step(stack: DemoStack, step: Step, *, udp: bool = False) -> StepResult:
    """Apply the step's policy changes, then probe until the expected result or the deadline."""
    for change in step.changes:
        await stack.apply(change)
    passed, http, udp_ok, seconds = await probe_until(stack, step, udp=udp)
    note = ""
    if step.would_deny is not None:
        seen = await _would_deny(stack, step)
        passed = passed and seen is not None
        note = seen or f"no would-deny line naming {step.would_deny[1]} in {step.would_deny[0]}'s agent log"
    return StepResult(step, passed, http, udp_ok, seconds, note)


async def _would_deny(stack: DemoStack, step: Step, within: float = SETTLE_TIMEOUT) -> str | None:
    """Probe ``step`` again until the agent reports the would-deny of its staged policy (a probe decided
    before the agent had the policy shows none); what the agent said, or None at the deadline."""
    assert step.would_deny is not None
    deadline = time.monotonic() + within
    while True:
        seen = await stack.would_deny(*step.would_deny)
        if seen is not None or time.monotonic() > deadline:
            return seen
        await _probe(stack, step, udp=False)


def describe_step(stack: DemoStack, step: Step) -> list[str]:
    """The lines announcing a step."""
    client = stack.scenario_pod(step.client)
    target = stack.scenario_pod(step.target)
    subnet = stack.settings.subnet
    lines = [f"Step {step.key}: {step.title}"]
    for change in step.changes:
        lines.append(f"  {change.describe()}")
    expected = "answers" if step.reachable else "times out"
    lines.append(
        f"  {client.describe(subnet)} -> http://{target.ip(subnet)}:{WEB_PORT}/ ({target.key}); expected: {expected}"
    )
    return lines


def describe_result(result: StepResult) -> str:
    """One line: PASS/FAIL with what the probe got and how soon a policy change took effect."""
    verdict = "PASS" if result.passed else "FAIL"
    if result.http.ok:
        got = f"answered {result.http.detail}"
    elif result.passed:
        got = f"{result.http.detail} (no answer, {DENY_CONFIRMATIONS} tries in a row)"
    else:
        got = f"{result.http.detail} (no answer)"
    udp = "" if result.udp is None else f"; UDP echo {'answered' if result.udp else 'got no answer'}"
    when = f"; took effect after {result.seconds:.1f}s" if result.step.changes and result.passed else ""
    note = f"\n        {result.note}" if result.note else ""
    return f"  {verdict}: {got}{udp}{when}{note}"


async def run_all(stack: DemoStack, *, udp: bool = False, steps: tuple[Step, ...] = STEPS) -> list[StepResult]:
    """Every step in order, announced and reported through ``stack.say``."""
    results = []
    for step in steps:
        stack.say("")
        for line in describe_step(stack, step):
            stack.say(line)
        result = await run_step(stack, step, udp=udp)
        stack.say(describe_result(result))
        results.append(result)
    return results
